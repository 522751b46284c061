package dev.mobilediff.core

import kotlin.math.sqrt

/**
 * The samplers' update rules: DDIM, Euler and one-step (distilled) sampling; the Kotlin twin
 * of `mobilediff_export/schedulers.py`, with the same names and the same arithmetic.
 *
 * A sampler is built from the manifest's `pipeline.sampler` object ([SamplerSpec]), which
 * carries the explicit timestep list and every per-step number the rule needs
 * (`alphas_cumprod`, `alphas_cumprod_prev`, `sigmas`): nothing here recomputes the noise
 * schedule. Steps are indexed, there is no hidden counter. The update rules run in double
 * precision, as Python's do in float64, and return the precision of the sample:
 *
 * ```
 * val sampler = makeSampler(spec)
 * var x = noise * sampler.initNoiseSigma
 * for (i in sampler.timesteps.indices) {
 *     val eps = unet(sampler.scaleModelInput(x, i), sampler.timesteps[i], context)
 *     x = sampler.step(eps, i, x, noise = freshNoise())  // noise: one-step sampling only
 * }
 * ```
 */
enum class PredictionType(val jsonName: String) {
    EPSILON("epsilon"),
    V_PREDICTION("v_prediction"),
    ;

    companion object {
        fun of(name: String): PredictionType? = entries.firstOrNull { it.jsonName == name }
    }
}

// ------------------------------------------------------------------------- update rules

/** The clean sample x0 implied by the model output at a timestep with `alphaCumprod`. */
fun predictX0(modelOutput: Double, sample: Double, alphaCumprod: Double, predictionType: PredictionType): Double {
    val sqrtA = sqrt(alphaCumprod)
    val sqrtB = sqrt(1.0 - alphaCumprod)
    return when (predictionType) {
        PredictionType.EPSILON -> (sample - sqrtB * modelOutput) / sqrtA
        PredictionType.V_PREDICTION -> sqrtA * sample - sqrtB * modelOutput
    }
}

/** One deterministic DDIM step (eta = 0, no clipping) from `alphaCumprod` to `alphaCumprodPrev`. */
fun ddimStep(
    modelOutput: Double,
    sample: Double,
    alphaCumprod: Double,
    alphaCumprodPrev: Double,
    predictionType: PredictionType,
): Double {
    val sqrtA = sqrt(alphaCumprod)
    val sqrtB = sqrt(1.0 - alphaCumprod)
    val (x0, eps) = when (predictionType) {
        PredictionType.EPSILON -> (sample - sqrtB * modelOutput) / sqrtA to modelOutput
        PredictionType.V_PREDICTION -> (sqrtA * sample - sqrtB * modelOutput) to (sqrtA * modelOutput + sqrtB * sample)
    }
    return sqrt(alphaCumprodPrev) * x0 + sqrt(1.0 - alphaCumprodPrev) * eps
}

/** One Euler step of the probability-flow ODE in sigma space, from `sigma` to `sigmaNext`. */
fun eulerStep(
    modelOutput: Double,
    sample: Double,
    sigma: Double,
    sigmaNext: Double,
    predictionType: PredictionType,
): Double {
    val x0 = when (predictionType) {
        PredictionType.EPSILON -> sample - sigma * modelOutput
        PredictionType.V_PREDICTION ->
            modelOutput * (-sigma / sqrt(sigma * sigma + 1.0)) + sample / (sigma * sigma + 1.0)
    }
    val derivative = (sample - x0) / sigma
    return sample + derivative * (sigmaNext - sigma)
}

// ------------------------------------------------------------------------- samplers

/**
 * Base class: an explicit timestep list and an update rule indexed by step.
 *
 * [timesteps] is what the UNet is fed, one per step; scale the unit Gaussian starting noise by
 * [initNoiseSigma]; when [needsNoise], [step] takes fresh noise before the last step.
 */
sealed class Sampler(val spec: SamplerSpec) {
    abstract val name: String
    open val needsNoise: Boolean = false
    val predictionType: PredictionType = spec.predictionType
    val timesteps: DoubleArray = spec.timesteps
    val initNoiseSigma: Double = spec.initNoiseSigma
    val size: Int get() = timesteps.size

    /** The factor the sample is multiplied by before the UNet sees it at step [i]. */
    fun modelInputScale(i: Int): Double = 1.0 / inputDivisor(index(i))

    /** What the UNet is fed at step [i]. */
    fun scaleModelInput(sample: FloatArray, i: Int): FloatArray {
        val divisor = inputDivisor(index(i))
        if (divisor == 1.0) return sample
        return FloatArray(sample.size) { (sample[it] / divisor).toFloat() }
    }

    /** [scaleModelInput] in double precision. */
    fun scaleModelInput(sample: DoubleArray, i: Int): DoubleArray {
        val divisor = inputDivisor(index(i))
        return DoubleArray(sample.size) { sample[it] / divisor }
    }

    /** The sample after step [i], rounded to float as Python casts back to the sample's dtype. */
    fun step(modelOutput: FloatArray, i: Int, sample: FloatArray, noise: FloatArray? = null): FloatArray {
        checkStep(modelOutput.size, index(i), sample.size, noise?.size)
        return FloatArray(sample.size) { k ->
            val z = if (noise == null) 0.0 else noise[k].toDouble()
            update(i, modelOutput[k].toDouble(), sample[k].toDouble(), z).toFloat()
        }
    }

    /** The sample after step [i], in double precision. */
    fun step(modelOutput: DoubleArray, i: Int, sample: DoubleArray, noise: DoubleArray? = null): DoubleArray {
        checkStep(modelOutput.size, index(i), sample.size, noise?.size)
        return DoubleArray(sample.size) { k -> update(i, modelOutput[k], sample[k], noise?.get(k) ?: 0.0) }
    }

    /** The rule for one element; [noise] is 0 when the sampler takes none. */
    protected abstract fun update(i: Int, modelOutput: Double, sample: Double, noise: Double): Double

    /** The sample is divided by this before the UNet sees it. */
    protected open fun inputDivisor(i: Int): Double = 1.0

    protected fun index(i: Int): Int {
        if (i !in timesteps.indices) throw IndexOutOfBoundsException("step index $i is outside 0..${size - 1}")
        return i
    }

    private fun checkStep(outputSize: Int, i: Int, sampleSize: Int, noiseSize: Int?) {
        require(outputSize == sampleSize) { "model output has $outputSize values, the sample $sampleSize" }
        if (needsNoise && i < size - 1) {
            requireNotNull(noiseSize) {
                "$name step $i re-noises to timestep ${timesteps[i + 1]} and needs noise shaped like the sample"
            }
            require(noiseSize == sampleSize) { "noise has $noiseSize values, the sample $sampleSize" }
        }
    }

    /** Values per step from the spec, or a [ManifestException] naming the field. */
    protected fun perStep(field: String, values: DoubleArray?, count: Int = size): DoubleArray {
        if (values == null || values.size != count) {
            throw ManifestException(
                "pipeline.sampler.$field: the $name sampler needs $count values (one per step" +
                    (if (count > size) " plus the final one" else "") + "), got ${values?.size ?: "none"}",
            )
        }
        return values
    }
}

/**
 * Deterministic DDIM (eta = 0), as diffusers' `DDIMScheduler` with `clip_sample=False`: step i
 * goes from `alphas_cumprod[i]` to `alphas_cumprod_prev[i]`, both read from the manifest.
 */
class DDIMSampler(spec: SamplerSpec) : Sampler(spec) {
    override val name = "ddim"
    val alphasCumprod = perStep("alphas_cumprod", spec.alphasCumprod)
    val alphasCumprodPrev = perStep("alphas_cumprod_prev", spec.alphasCumprodPrev)

    override fun update(i: Int, modelOutput: Double, sample: Double, noise: Double): Double =
        ddimStep(modelOutput, sample, alphasCumprod[i], alphasCumprodPrev[i], predictionType)
}

/**
 * Deterministic Euler, as diffusers' `EulerDiscreteScheduler` (s_churn = 0): `sigmas` has one
 * entry per step plus the final 0; the UNet is fed `x / sqrt(sigma^2 + 1)`.
 */
class EulerSampler(spec: SamplerSpec) : Sampler(spec) {
    override val name = "euler"
    val sigmas = perStep("sigmas", spec.sigmas, size + 1)

    override fun inputDivisor(i: Int): Double = sqrt(sigmas[i] * sigmas[i] + 1.0)

    override fun update(i: Int, modelOutput: Double, sample: Double, noise: Double): Double =
        eulerStep(modelOutput, sample, sigmas[i], sigmas[i + 1], predictionType)
}

/**
 * Sampling for distilled / DiffusionGAN models: x0 from the model output; after the last step
 * x0 is the result, before it x0 is re-noised to the next timestep with the caller's noise,
 * `x_next = sqrt(a_next) x0 + sqrt(1 - a_next) noise`.
 */
class OneStepSampler(spec: SamplerSpec) : Sampler(spec) {
    override val name = "onestep"
    override val needsNoise = true
    val alphasCumprod = perStep("alphas_cumprod", spec.alphasCumprod)

    override fun update(i: Int, modelOutput: Double, sample: Double, noise: Double): Double {
        val x0 = predictX0(modelOutput, sample, alphasCumprod[i], predictionType)
        if (i == size - 1) return x0
        val aNext = alphasCumprod[i + 1]
        return sqrt(aNext) * x0 + sqrt(1.0 - aNext) * noise
    }
}

/** The sampler the manifest's `pipeline.sampler` object names. */
fun makeSampler(spec: SamplerSpec): Sampler = when (spec.name) {
    "ddim" -> DDIMSampler(spec)
    "euler" -> EulerSampler(spec)
    "onestep" -> OneStepSampler(spec)
    else -> throw ManifestException("pipeline.sampler.name must be ddim, euler or onestep; got ${spec.name}")
}
