package dev.mobilediff.core

/**
 * Prompt -> tokens -> context -> sampler loop -> decoder -> pixels, over a [ModelRunner]; the
 * Kotlin twin of `mobilediff_export/pipeline.py`, step for step:
 *
 * ```
 * prompt ──tokenizer──> ids ──textEncoder──> context (B, L, D)
 *    [guidance "cfg": negative prompt as well, batch 2: uncond first, then cond]
 * latents = noise(seed) * initNoiseSigma                               (1, C, h, w)
 * for i, t in sampler.timesteps:
 *     x   = sampler.scaleModelInput(latents, i)
 *     out = unet(x, t, context)                [cfg: uncond + scale * (cond - uncond)]
 *     latents = sampler.step(out, i, latents)
 * image = vaeDecoder(latents / vaeScalingFactor) -> ARGB pixels
 * ```
 * The arithmetic between the networks is float32 where Python's is (guidance, scaling), and
 * the sampler update runs in double precision as Python's runs in float64.
 */
class Pipeline(
    val spec: PipelineSpec,
    val tokenizer: ClipTokenizer,
    val runner: ModelRunner,
    /** True when the UNet runs only the manifest's timesteps ([TargetSpec.foldedTimesteps]). */
    val fixedSteps: Boolean = false,
    /** Nanosecond clock for the stage timings; injectable for tests. */
    private val clock: () -> Long = System::nanoTime,
) {
    private val latentShape = spec.latentShape.toIntArray()
    private val latentSize = latentShape.fold(1) { n, d -> n * d }

    /** The manifest's sampler, or the same sampler rebuilt for [steps] (see [samplerSpecForSteps]). */
    fun makeSampler(steps: Int? = null): Sampler {
        val own = spec.sampler.numInferenceSteps
        if (steps == null || steps == own) return makeSampler(spec.sampler)
        if (fixedSteps) {
            throw ConfigException(
                "this bundle's UNet was exported with its $own timesteps folded in; run it with $own steps " +
                    "or export it with --steps $steps",
            )
        }
        return makeSampler(samplerSpecForSteps(spec.sampler, spec.noiseSchedule, steps))
    }

    /** Unit Gaussian starting latents for [seed]: torch's numbers, as Python and iOS draw them (see [GaussianNoise]). */
    fun initialNoise(seed: Long): FloatArray = GaussianNoise(seed).floats(latentSize)

    /**
     * Make one image. [latents] replaces the seeded starting noise (unit variance, before
     * `initNoiseSigma`); [onStep] is told after each sampler step.
     */
    fun generate(
        prompt: String,
        steps: Int? = null,
        seed: Long = 0,
        latents: FloatArray? = null,
        onStep: (done: Int, total: Int) -> Unit = { _, _ -> },
    ): Generation {
        val start = clock()
        val sampler = makeSampler(steps)
        val guidance = spec.guidance
        val prompts = if (guidance.enabled) listOf(guidance.negativePrompt, prompt) else listOf(prompt)

        var mark = clock()
        val ids = tokenizer.tokenize(prompts)
        val tokenizeMs = msSince(mark)

        mark = clock()
        val context = runner.textEncoder(ids)
        val textEncoderMs = msSince(mark)
        val length = tokenizer.config.maxLength
        if (context.shape.size != 3 || context.shape[0] != prompts.size || context.shape[1] != length) {
            throw ShapeMismatchException("text encoder output", "[${prompts.size}, $length, D]", context.shapeText)
        }

        val noise = latents ?: initialNoise(seed)
        if (noise.size != latentSize) {
            throw ShapeMismatchException("initial latents", latentShape.contentToString(), "${noise.size} values")
        }
        val sigma = sampler.initNoiseSigma.toFloat()
        var x = FloatArray(latentSize) { noise[it] * sigma }
        val renoise = GaussianNoise(seed + 1)
        val batchShape = latentShape.copyOf().also { it[0] = guidance.batch }
        val unetMs = ArrayList<Double>(sampler.size)
        var samplerNs = 0L
        for (i in 0 until sampler.size) {
            mark = clock()
            val scaled = sampler.scaleModelInput(x, i)
            val input = if (guidance.enabled) scaled + scaled else scaled
            samplerNs += clock() - mark

            mark = clock()
            val out = runner.unet(Tensor(batchShape, input), sampler.timesteps[i], context)
            unetMs += msSince(mark)
            if (!out.shape.contentEquals(batchShape)) {
                throw ShapeMismatchException("UNet output", batchShape.contentToString(), out.shapeText)
            }

            mark = clock()
            val guided = if (guidance.enabled) guide(out.data, guidance.scale.toFloat()) else out.data
            val fresh = if (sampler.needsNoise && i + 1 < sampler.size) renoise.floats(latentSize) else null
            x = sampler.step(guided, i, x, fresh)
            samplerNs += clock() - mark
            onStep(i + 1, sampler.size)
        }

        mark = clock()
        val scale = spec.vaeScalingFactor.toFloat()
        val image = runner.vaeDecoder(Tensor(latentShape, FloatArray(latentSize) { x[it] / scale }))
        val vaeDecoderMs = msSince(mark)
        val size = spec.imageSize
        if (!image.shape.contentEquals(intArrayOf(1, 3, size, size))) {
            throw ShapeMismatchException("VAE decoder output", "[1, 3, $size, $size]", image.shapeText)
        }
        val pixels = toArgbPixels(image)
        val timings = StageTimings(
            tokenizeMs = tokenizeMs,
            textEncoderMs = textEncoderMs,
            unetMs = unetMs,
            samplerMs = samplerNs / 1e6,
            vaeDecoderMs = vaeDecoderMs,
            totalMs = msSince(start),
        )
        return Generation(pixels, size, size, timings, x)
    }

    private fun msSince(mark: Long): Double = (clock() - mark) / 1e6

    companion object {
        /** A pipeline over a loaded bundle's [target], with the bundle's tokenizer. */
        fun fromBundle(manifest: BundleManifest, runner: ModelRunner, target: String = "tflite") = Pipeline(
            manifest.pipeline, manifest.loadTokenizer(), runner, fixedSteps = manifest.target(target).foldedTimesteps,
        )

        /** Classifier-free guidance on a batch-2 output [uncond, cond]: `uncond + scale * (cond - uncond)`. */
        fun guide(output: FloatArray, scale: Float): FloatArray {
            val half = output.size / 2
            return FloatArray(half) { output[it] + scale * (output[half + it] - output[it]) }
        }
    }
}

/** One image and how long each stage took. [latents] are the final latents, before decoding. */
class Generation(
    /** ARGB_8888, row-major, `width * height` values (what `Bitmap.createBitmap` takes). */
    val pixels: IntArray,
    val width: Int,
    val height: Int,
    val timings: StageTimings,
    val latents: FloatArray,
)

/** Wall-clock milliseconds of each stage of one generation. */
data class StageTimings(
    val tokenizeMs: Double,
    val textEncoderMs: Double,
    /** One entry per UNet call (per sampler step). */
    val unetMs: List<Double>,
    /** Sampler work between UNet calls: input scaling, guidance, the update rule. */
    val samplerMs: Double,
    val vaeDecoderMs: Double,
    val totalMs: Double,
)

/**
 * Decoder output `[1, 3, H, W]` in [-1, 1] -> ARGB pixels, as the manifest's `output.to_uint8`
 * says: `round(clamp(x / 2 + 0.5, 0, 1) * 255)`, in float32 with round-half-even like numpy.
 */
fun toArgbPixels(image: Tensor): IntArray {
    require(image.shape.size == 4 && image.shape[0] == 1 && image.shape[1] == 3) {
        "decoder output must be [1, 3, H, W], not ${image.shapeText}"
    }
    val plane = image.shape[2] * image.shape[3]
    val data = image.data
    // NaN (a broken model) becomes 0 rather than an exception.
    fun channel(value: Float): Int = Math.rint(((value / 2f + 0.5f).coerceIn(0f, 1f) * 255f).toDouble()).toInt()
    return IntArray(plane) {
        val r = channel(data[it])
        val g = channel(data[plane + it])
        val b = channel(data[2 * plane + it])
        (0xFF shl 24) or (r shl 16) or (g shl 8) or b
    }
}
