package dev.mobilediff.core

/**
 * Seeded unit Gaussian noise for the initial latents (and one-step re-noising).
 *
 * This is *not* torch's generator: the same seed gives a different picture here than in
 * Python's `Pipeline`, by design (torch's CPU Mersenne Twister + Box-Muller layout is not worth
 * reproducing). It is reproducible across devices and runs, and simple enough to write again in
 * Swift: SplitMix64 gives 64-bit words; a uniform is `(word ushr 11) * 2^-53`; each pair of
 * uniforms (u1, u2) gives two normals by Box-Muller, `r = sqrt(-2 ln(1 - u1))`,
 * `r cos(2 pi u2)` then `r sin(2 pi u2)`, computed with [StrictMath] so every JVM and Android
 * device agrees bit for bit. To compare an app's image with Python's, feed the recorded
 * initial latents instead (as the replay test does).
 */
class GaussianNoise(seed: Long) {
    private var state = seed
    private var spare = Double.NaN

    /** The next SplitMix64 word. */
    fun nextLong(): Long {
        state += GOLDEN_GAMMA
        var z = state
        z = (z xor (z ushr 30)) * MIX_1
        z = (z xor (z ushr 27)) * MIX_2
        return z xor (z ushr 31)
    }

    /** A uniform double in [0, 1). */
    fun nextUniform(): Double = (nextLong() ushr 11) * TWO_POW_MINUS_53

    /** The next standard normal value. */
    fun nextGaussian(): Double {
        if (!spare.isNaN()) return spare.also { spare = Double.NaN }
        val u1 = nextUniform()
        val u2 = nextUniform()
        val r = StrictMath.sqrt(-2.0 * StrictMath.log(1.0 - u1))
        val angle = 2.0 * StrictMath.PI * u2
        spare = r * StrictMath.sin(angle)
        return r * StrictMath.cos(angle)
    }

    /** [size] standard normal values as floats. */
    fun floats(size: Int): FloatArray = FloatArray(size) { nextGaussian().toFloat() }

    private companion object {
        val GOLDEN_GAMMA = 0x9E3779B97F4A7C15uL.toLong()
        val MIX_1 = 0xBF58476D1CE4E5B9uL.toLong()
        val MIX_2 = 0x94D049BB133111EBuL.toLong()
        const val TWO_POW_MINUS_53 = 1.0 / (1L shl 53)
    }
}
