package dev.mobilediff.core

import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import kotlin.math.abs

/**
 * Replays `tests/vectors/pipeline_tiny.json`, one recorded run of the PyTorch pipeline: the
 * runner returns the recorded network outputs and checks that each network is fed what Python
 * fed it; the final pixels must be Python's within 1. The run replays both with the recorded
 * starting latents injected and from the seed alone ([GaussianNoise] draws torch's numbers).
 */
class PipelineReplayTest {
    private val record = Vectors.json("pipeline_tiny.json")

    private fun tensor(json: JSONObject) =
        Tensor(json.getJSONArray("shape").toIntArray(), json.getJSONArray("data").toFloatArray())

    /** The networks of the recorded run, replayed. */
    inner class ReplayRunner : ModelRunner {
        val steps = record.getJSONArray("steps")
        val context = tensor(record.getJSONObject("context"))
        var unetCalls = 0

        /** The largest scaled deviation `|fed - recorded| / max(1, |recorded|)` of any input so far. */
        var worstInputError = 0f

        /**
         * Float32 arithmetic in two languages: every value within [TOLERANCE] `* max(1, |recorded|)`
         * of what Python fed (the iOS replay test's tolerance).
         */
        fun assertFed(want: Tensor, got: Tensor, what: String) {
            assertArrayEquals(want.shape, got.shape, "$what shape")
            for (i in want.data.indices) {
                val error = abs(want.data[i] - got.data[i]) / maxOf(1f, abs(want.data[i]))
                worstInputError = maxOf(worstInputError, error)
                assertTrue(error <= TOLERANCE) { "$what[$i]: fed ${got.data[i]}, Python fed ${want.data[i]}" }
            }
        }

        override fun textEncoder(ids: List<IntArray>): Tensor {
            val want = record.getJSONArray("token_ids")
            assertEquals(want.length(), ids.size, "prompts")
            ids.forEachIndexed { row, got -> assertArrayEquals(want.getJSONArray(row).toIntArray(), got, "token ids $row") }
            return context
        }

        override fun unet(sample: Tensor, timestep: Double, context: Tensor): Tensor {
            val step = steps.getJSONObject(unetCalls++)
            assertEquals(step.getDouble("timestep"), timestep, "timestep of step ${step.getInt("index")}")
            assertTrue(context === this.context, "the UNet gets the text encoder's context")
            assertFed(tensor(step.getJSONObject("model_input")), sample, "UNet input, step ${step.getInt("index")}")
            return tensor(step.getJSONObject("model_output"))
        }

        override fun vaeDecoder(latent: Tensor): Tensor {
            assertFed(tensor(record.getJSONObject("decoder_input")), latent, "decoder input")
            return tensor(record.getJSONObject("decoder_output"))
        }
    }

    private fun pipelineSpec(): PipelineSpec {
        val tiny = JSONObject(File(Vectors.repo, "models/tiny.json").readText()).getJSONObject("pipeline")
        val sampler = SamplerSpec.fromJson(record.getJSONObject("sampler"))
        val guidance = record.getJSONObject("guidance")
        return PipelineSpec(
            imageSize = tiny.getInt("image_size"),
            latentShape = record.getJSONObject("initial_latents").getJSONArray("shape").toIntArray().toList(),
            vaeScalingFactor = record.getDouble("vae_scaling_factor"),
            predictionType = sampler.predictionType,
            noiseSchedule = NoiseSchedule(
                tiny.getInt("num_train_timesteps"), tiny.getDouble("beta_start"), tiny.getDouble("beta_end"),
                tiny.getString("beta_schedule"),
            ),
            sampler = sampler,
            guidance = GuidanceSpec(guidance.getString("mode"), guidance.getDouble("scale"), record.getString("negative_prompt")),
        )
    }

    /** Runs the recorded prompt and seed, [latents] injected or (null) drawn from the seed, and checks everything. */
    private fun replay(latents: FloatArray?): ReplayRunner {
        val runner = ReplayRunner()
        val pipeline = Pipeline(pipelineSpec(), Vectors.tokenizer, runner)
        val progress = mutableListOf<Int>()
        val result = pipeline.generate(
            record.getString("prompt"),
            seed = record.getLong("seed"),
            latents = latents,
            onStep = { done, _ -> progress += done },
        )
        assertEquals(runner.steps.length(), runner.unetCalls)
        assertEquals(listOf(1, 2, 3, 4), progress)

        val last = runner.steps.getJSONObject(runner.steps.length() - 1)
        val finalLatents = tensor(last.getJSONObject("latents_after")).data
        assertClose(finalLatents.toDoubles(), result.latents.toDoubles(), atol = 1e-5, rtol = 1e-5, "final latents")

        val pixels = record.getJSONObject("pixels")
        val (height, width, _) = pixels.getJSONArray("shape").toIntArray().toList()
        assertEquals(width, result.width)
        assertEquals(height, result.height)
        val rgb = pixels.getJSONArray("data").toIntArray()
        var differing = 0
        for (p in 0 until width * height) {
            val argb = result.pixels[p]
            assertEquals(0xFF, argb ushr 24, "alpha")
            val got = intArrayOf((argb shr 16) and 0xFF, (argb shr 8) and 0xFF, argb and 0xFF)
            for (c in 0 until 3) {
                val off = abs(got[c] - rgb[p * 3 + c])
                assertTrue(off <= 1) { "pixel $p channel $c: ${got[c]}, Python ${rgb[p * 3 + c]}" }
                if (off > 0) differing++
            }
        }
        assertTrue(differing <= rgb.size / 100) { "$differing of ${rgb.size} channel values differ by 1" }

        val timings = result.timings
        assertEquals(4, timings.unetMs.size)
        val stages = timings.tokenizeMs + timings.textEncoderMs + timings.unetMs.sum() + timings.samplerMs + timings.vaeDecoderMs
        assertTrue(timings.totalMs >= stages && stages > 0.0, "$timings")
        return runner
    }

    @Test
    fun `the recorded Python run replays to the same pixels`() {
        val initial = tensor(record.getJSONObject("initial_latents")).data
        val sigma = record.getJSONObject("sampler").getDouble("init_noise_sigma").toFloat()
        val runner = replay(FloatArray(initial.size) { initial[it] / sigma })
        println("replay with the recorded latents: worst scaled input error ${runner.worstInputError}")
    }

    @Test
    fun `the seed alone replays the recorded run, torch's starting noise included`() {
        val runner = replay(latents = null)
        println("replay from the seed alone: worst scaled input error ${runner.worstInputError}")
    }

    /** A runner that answers every call with zeros of the declared shapes. */
    class ZeroRunner(private val batchOut: Int? = null, private val imageSize: Int = 64) : ModelRunner {
        val unetBatches = mutableListOf<Int>()

        override fun textEncoder(ids: List<IntArray>) = Tensor(intArrayOf(ids.size, ids[0].size, 8), FloatArray(ids.size * ids[0].size * 8))

        override fun unet(sample: Tensor, timestep: Double, context: Tensor): Tensor {
            unetBatches += sample.shape[0]
            val shape = sample.shape.copyOf().also { if (batchOut != null) it[0] = batchOut }
            return Tensor(shape, FloatArray(shape.fold(1) { n, d -> n * d }))
        }

        override fun vaeDecoder(latent: Tensor) = Tensor(intArrayOf(1, 3, imageSize, imageSize), FloatArray(3 * imageSize * imageSize))
    }

    @Test
    fun `without guidance the UNet runs at batch 1, and one-step sampling re-noises`() {
        val base = pipelineSpec()
        val onestep = scheduleSamplerSpec(
            "onestep", PredictionType.EPSILON, base.noiseSchedule, "trailing", 1, false, 2,
        )
        val spec = PipelineSpec(
            base.imageSize, base.latentShape, base.vaeScalingFactor, base.predictionType, base.noiseSchedule,
            onestep, GuidanceSpec("none", 1.0, ""),
        )
        val runner = ZeroRunner()
        val a = Pipeline(spec, Vectors.tokenizer, runner).generate("a cat", seed = 3)
        val b = Pipeline(spec, Vectors.tokenizer, runner).generate("a cat", seed = 3)
        assertEquals(listOf(1, 1, 1, 1), runner.unetBatches)
        assertArrayEquals(a.latents, b.latents)
        assertArrayEquals(a.pixels, b.pixels)
    }

    @Test
    fun `a network that returns the wrong shape is a ShapeMismatchException`() {
        val spec = pipelineSpec()
        val initial = FloatArray(4 * 16 * 16)
        assertThrows<ShapeMismatchException> {
            Pipeline(spec, Vectors.tokenizer, ZeroRunner(batchOut = 1)).generate("x", latents = initial)
        }
        assertThrows<ShapeMismatchException> {
            Pipeline(spec, Vectors.tokenizer, ZeroRunner(imageSize = 32)).generate("x", latents = initial)
        }
        assertThrows<ShapeMismatchException> {
            Pipeline(spec, Vectors.tokenizer, ZeroRunner()).generate("x", latents = FloatArray(3))
        }
    }

    @Test
    fun `decoder output becomes ARGB as round(clamp(x 2 + 0 5, 0, 1) 255)`() {
        val image = Tensor(intArrayOf(1, 3, 1, 4), floatArrayOf(-1f, 1f, 0f, Float.NaN, -2f, 2f, 0.5f, 0f, 0f, 0f, 0f, 0f))
        val pixels = toArgbPixels(image).map { it.toLong() and 0xFFFFFFFFL }
        assertEquals(listOf(0xFF000080L, 0xFFFFFF80L, 0xFF80BF80L, 0xFF008080L), pixels)
    }

    private fun FloatArray.toDoubles() = DoubleArray(size) { this[it].toDouble() }

    private companion object {
        /** The iOS replay test's tolerance on every network input, scaled by max(1, |recorded|). */
        const val TOLERANCE = 1e-5f
    }
}
