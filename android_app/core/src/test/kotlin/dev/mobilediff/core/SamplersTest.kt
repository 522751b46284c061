package dev.mobilediff.core

import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertSame
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory

class SamplersTest {
    private val vectors = Vectors.json("samplers.json")
    private val atol = vectors.getJSONObject("tolerance").getDouble("atol")
    private val rtol = vectors.getJSONObject("tolerance").getDouble("rtol")
    private val cases = vectors.getJSONArray("cases").let { a -> (0 until a.length()).map { a.getJSONObject(it) } }

    /** The manifest's `pipeline.sampler` object for a vector case, as Python's `to_dict` writes it. */
    private fun samplerJson(case: JSONObject): JSONObject {
        val config = case.getJSONObject("config")
        val json = JSONObject()
            .put("name", case.getString("sampler"))
            .put("prediction_type", config.getString("prediction_type"))
            .put("num_train_timesteps", config.getInt("num_train_timesteps"))
            .put("timestep_spacing", if (case.getBoolean("explicit_timesteps")) JSONObject.NULL else config.get("timestep_spacing"))
            .put("steps_offset", config.getInt("steps_offset"))
            .put("num_inference_steps", case.getInt("num_inference_steps"))
            .put("timesteps", case.getJSONArray("timesteps"))
            .put("init_noise_sigma", case.getDouble("init_noise_sigma"))
        for (key in listOf("set_alpha_to_one", "prev_timesteps", "alphas_cumprod", "alphas_cumprod_prev", "sigmas")) {
            if (case.has(key)) json.put(key, case.get(key))
        }
        return json
    }

    @TestFactory
    fun `every case of samplers json, every step`(): List<DynamicTest> = cases.map { case ->
        DynamicTest.dynamicTest(case.getString("name")) {
            val sampler = makeSampler(SamplerSpec.fromJson(samplerJson(case)))
            assertEquals(case.getString("sampler"), sampler.name)
            assertEquals(case.getDouble("init_noise_sigma"), sampler.initNoiseSigma)
            val steps = case.getJSONArray("steps")
            assertEquals(steps.length(), sampler.size)
            for (i in 0 until steps.length()) {
                val step = steps.getJSONObject(i)
                val what = "${case.getString("name")} step $i"
                assertEquals(step.getDouble("timestep"), sampler.timesteps[i], "$what timestep")
                val sample = step.getJSONArray("sample").toDoubleArray()
                val noise = if (step.isNull("noise")) null else step.getJSONArray("noise").toDoubleArray()
                assertClose(
                    doubleArrayOf(step.getDouble("model_input_scale")),
                    doubleArrayOf(sampler.modelInputScale(i)), atol, rtol, "$what model_input_scale",
                )
                assertClose(
                    step.getJSONArray("model_input").toDoubleArray(),
                    sampler.scaleModelInput(sample, i), atol, rtol, "$what model_input",
                )
                val got = sampler.step(step.getJSONArray("model_output").toDoubleArray(), i, sample, noise)
                assertClose(step.getJSONArray("prev_sample").toDoubleArray(), got, atol, rtol, "$what prev_sample")
            }
        }
    }

    @TestFactory
    fun `tables rebuilt from the noise schedule match every case`(): List<DynamicTest> = cases.map { case ->
        DynamicTest.dynamicTest(case.getString("name")) {
            val config = case.getJSONObject("config")
            val want = SamplerSpec.fromJson(samplerJson(case))
            val got = scheduleSamplerSpec(
                name = case.getString("sampler"),
                predictionType = want.predictionType,
                schedule = NoiseSchedule(
                    config.getInt("num_train_timesteps"),
                    config.getDouble("beta_start"),
                    config.getDouble("beta_end"),
                    config.getString("beta_schedule"),
                ),
                spacing = config.getString("timestep_spacing"),
                stepsOffset = config.getInt("steps_offset"),
                setAlphaToOne = config.getBoolean("set_alpha_to_one"),
                steps = case.getInt("num_inference_steps"),
            )
            assertArrayEquals(want.timesteps, got.timesteps, "timesteps")
            assertClose(doubleArrayOf(want.initNoiseSigma), doubleArrayOf(got.initNoiseSigma), atol, rtol, "init_noise_sigma")
            want.prevTimesteps?.let { assertArrayEquals(it, got.prevTimesteps, "prev_timesteps") }
            want.alphasCumprod?.let { assertClose(it, got.alphasCumprod!!, atol, rtol, "alphas_cumprod") }
            want.alphasCumprodPrev?.let { assertClose(it, got.alphasCumprodPrev!!, atol, rtol, "alphas_cumprod_prev") }
            want.sigmas?.let { assertClose(it, got.sigmas!!, atol, rtol, "sigmas") }
        }
    }

    private fun case(name: String) = cases.first { it.getString("name") == name }

    @Test
    fun `the float path is the double path rounded to float`() {
        val case = case("euler-v_prediction-leading-4")
        val sampler = makeSampler(SamplerSpec.fromJson(samplerJson(case)))
        val step = case.getJSONArray("steps").getJSONObject(1)
        val sample = step.getJSONArray("sample").toDoubleArray()
        val output = step.getJSONArray("model_output").toDoubleArray()
        val want = sampler.step(output, 1, sample).map { it.toFloat() }.toFloatArray()
        val got = sampler.step(output.map { it.toFloat() }.toFloatArray(), 1, sample.map { it.toFloat() }.toFloatArray())
        assertArrayEquals(want, got)
        val scaled = sampler.scaleModelInput(sample, 1).map { it.toFloat() }.toFloatArray()
        assertArrayEquals(scaled, sampler.scaleModelInput(sample.map { it.toFloat() }.toFloatArray(), 1))
    }

    @Test
    fun `one-step sampling needs noise before its last step`() {
        val sampler = makeSampler(SamplerSpec.fromJson(samplerJson(case("onestep-epsilon-4"))))
        assertThrows<IllegalArgumentException> { sampler.step(DoubleArray(8), 0, DoubleArray(8)) }
        sampler.step(DoubleArray(8), 3, DoubleArray(8)) // the last step takes none
        assertThrows<IndexOutOfBoundsException> { sampler.step(DoubleArray(8), 4, DoubleArray(8)) }
    }

    @Test
    fun `a sampler object without its tables is a ManifestException`() {
        val json = samplerJson(case("ddim-epsilon-leading-4")).apply { remove("alphas_cumprod_prev") }
        val error = assertThrows<ManifestException> { SamplerSpec.fromJson(json) }
        assertEquals(true, "alphas_cumprod_prev" in error.message!!, error.message)
        val ascending = samplerJson(case("ddim-epsilon-leading-4")).put("timesteps", org.json.JSONArray(listOf(1, 251, 501, 751)))
        assertThrows<ManifestException> { SamplerSpec.fromJson(ascending) }
    }

    @Test
    fun `other step counts rebuild the tables, a fixed list refuses them`() {
        val schedule = NoiseSchedule(1000, 0.00085, 0.012, "scaled_linear")
        val spaced = SamplerSpec.fromJson(samplerJson(case("ddim-epsilon-leading-4")))
        assertSame(spaced, samplerSpecForSteps(spaced, schedule, 4))
        val eight = samplerSpecForSteps(spaced, schedule, 8)
        assertArrayEquals(case("ddim-epsilon-leading-8").getJSONArray("timesteps").toDoubleArray(), eight.timesteps)
        val fixed = SamplerSpec.fromJson(samplerJson(case("onestep-epsilon-4")))
        assertThrows<ConfigException> { samplerSpecForSteps(fixed, schedule, 2) }
        assertThrows<ConfigException> { samplerSpecForSteps(spaced, schedule, 0) }
    }
}
