package dev.mobilediff.core

import kotlin.math.floor
import kotlin.math.sqrt

/**
 * Sampler tables for a step count other than the one the bundle was exported with.
 *
 * The manifest's `pipeline.sampler` is the source of truth and is used as is for its own step
 * count. For another count the app rebuilds the same numbers Python's `DDIMSampler`,
 * `EulerSampler` and `OneStepSampler` compute (diffusers' spacing, the float32 noise schedule),
 * from `pipeline.noise_schedule` and the sampler's spacing. A bundle whose sampler lists its
 * timesteps explicitly (`timestep_spacing` null) runs only with that list.
 */
fun samplerSpecForSteps(base: SamplerSpec, schedule: NoiseSchedule, steps: Int): SamplerSpec {
    if (steps == base.numInferenceSteps) return base
    val spacing = base.timestepSpacing ?: throw ConfigException(
        "this bundle's ${base.name} sampler has a fixed list of ${base.numInferenceSteps} timesteps; " +
            "run it with ${base.numInferenceSteps} steps or export it with --steps $steps",
    )
    return scheduleSamplerSpec(
        base.name, base.predictionType, schedule, spacing, base.stepsOffset, base.setAlphaToOne, steps,
    )
}

/** A sampler's tables computed from the noise schedule, as Python's sampler constructors do. */
fun scheduleSamplerSpec(
    name: String,
    predictionType: PredictionType,
    schedule: NoiseSchedule,
    spacing: String,
    stepsOffset: Int,
    setAlphaToOne: Boolean,
    steps: Int,
): SamplerSpec {
    val numTrain = schedule.numTrainTimesteps
    val spaced = spacedTimesteps(numTrain, steps, spacing, stepsOffset)
    val ac = alphasCumprod(schedule)
    fun spec(
        timesteps: DoubleArray,
        initNoiseSigma: Double = 1.0,
        prev: IntArray? = null,
        alphas: DoubleArray? = null,
        alphasPrev: DoubleArray? = null,
        sigmas: DoubleArray? = null,
    ) = SamplerSpec(
        name, predictionType, numTrain, spacing, stepsOffset, timesteps, initNoiseSigma,
        setAlphaToOne, prev, alphas, alphasPrev, sigmas,
    )
    return when (name) {
        "ddim" -> {
            val ts = DoubleArray(steps) { Math.rint(spaced[it]) }
            val finalAlpha = if (setAlphaToOne) 1.0 else ac[0]
            val prev = IntArray(steps) { (ts[it].toInt() - numTrain / steps).coerceAtLeast(-1) }
            spec(
                ts,
                prev = prev,
                alphas = DoubleArray(steps) { ac[ts[it].toInt()] },
                alphasPrev = DoubleArray(steps) { if (prev[it] >= 0) ac[prev[it]] else finalAlpha },
            )
        }
        "euler" -> {
            val ts = DoubleArray(steps) { spaced[it].toFloat().toDouble() }
            val table = FloatArray(ac.size) { sqrt((1f - ac[it].toFloat()) / ac[it].toFloat()) }
            val sigmas = DoubleArray(steps + 1) { if (it < steps) interp(ts[it], table).toFloat().toDouble() else 0.0 }
            val sigmaMax = sigmas.max().toFloat()
            val init = if (spacing == "leading") sqrt(sigmaMax * sigmaMax + 1f).toDouble() else sigmaMax.toDouble()
            spec(ts, initNoiseSigma = init, sigmas = sigmas)
        }
        "onestep" -> {
            val ts = DoubleArray(steps) { Math.rint(spaced[it]) }
            if (ts[0] != (numTrain - 1).toDouble()) {
                throw ConfigException(
                    "one-step sampling starts from pure noise at t=${numTrain - 1}, but $spacing spacing with " +
                        "$steps steps starts at t=${ts[0].toInt()}; choose another step count",
                )
            }
            spec(ts, alphas = DoubleArray(steps) { ac[ts[it].toInt()] })
        }
        else -> throw ConfigException("unknown sampler $name")
    }
}

/**
 * Descending timesteps for [steps] steps, as diffusers spaces them; `leading` and `trailing`
 * give whole numbers, `linspace` may not. [stepsOffset] applies to `leading` only.
 */
fun spacedTimesteps(numTrainTimesteps: Int, steps: Int, spacing: String, stepsOffset: Int): DoubleArray {
    if (steps < 1 || steps > numTrainTimesteps) {
        throw ConfigException("steps must be between 1 and $numTrainTimesteps; got $steps")
    }
    return when (spacing) {
        "leading" -> DoubleArray(steps) { ((steps - 1 - it) * (numTrainTimesteps / steps) + stepsOffset).toDouble() }
        "trailing" -> DoubleArray(steps) { Math.rint(numTrainTimesteps - it * (numTrainTimesteps.toDouble() / steps)) - 1.0 }
        "linspace" -> {
            // numpy.linspace(0, T - 1, n), reversed: start + k * step, the last value exact.
            val stop = (numTrainTimesteps - 1).toDouble()
            val step = if (steps > 1) stop / (steps - 1) else 0.0
            DoubleArray(steps) { val k = steps - 1 - it; if (k == steps - 1 && steps > 1) stop else k * step }
        }
        else -> throw ConfigException("timestep_spacing must be leading, trailing or linspace; got $spacing")
    }
}

/**
 * The cumulative product of `1 - beta` as float32 values, bit for bit as diffusers (and Python's
 * `alphas_cumprod`) compute it: a float32 torch linspace, float32 `1 - beta`, a float64 product.
 */
fun alphasCumprod(schedule: NoiseSchedule): DoubleArray {
    val n = schedule.numTrainTimesteps
    val betas = when (schedule.betaSchedule) {
        "linear" -> linspaceFloat32(schedule.betaStart, schedule.betaEnd, n)
        "scaled_linear" -> linspaceFloat32(sqrt(schedule.betaStart), sqrt(schedule.betaEnd), n).map { it * it }
        else -> throw ConfigException("beta_schedule must be scaled_linear or linear; got ${schedule.betaSchedule}")
    }
    var product = 1.0
    return DoubleArray(n) {
        product *= (1f - betas[it]).toDouble()
        product.toFloat().toDouble()
    }
}

/** `torch.linspace(start, end, n, dtype=float32)`: each value from the nearer end, rounded once. */
private fun linspaceFloat32(start: Double, end: Double, n: Int): List<Float> {
    val lo = start.toFloat()
    val hi = end.toFloat()
    if (n == 1) return listOf(lo)
    val step = ((hi - lo) / (n - 1).toFloat()).toDouble()
    return List(n) { k ->
        if (k < n / 2) (lo + step * k).toFloat() else (hi - step * (n - 1 - k)).toFloat()
    }
}

/** `numpy.interp(x, arange(table.size), table)` for x in range. */
private fun interp(x: Double, table: FloatArray): Double {
    val j = floor(x).toInt().coerceIn(0, table.size - 1)
    if (j == table.size - 1 || x == j.toDouble()) return table[j].toDouble()
    val slope = table[j + 1].toDouble() - table[j].toDouble()
    return slope * (x - j) + table[j].toDouble()
}
