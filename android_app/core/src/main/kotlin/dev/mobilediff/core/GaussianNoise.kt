package dev.mobilediff.core

/**
 * Seeded unit Gaussian noise for the initial latents and for one-step re-noising, drawn the way
 * PyTorch's CPU generator draws float32 `torch.randn`, so the same seed gives the same starting
 * latents here as in Python (`mobilediff generate --seed`, which uses
 * `torch.Generator().manual_seed(seed)` for the latents and `seed + 1` for re-noising, as
 * [Pipeline] does) and as in the iOS app (`TorchGaussianNoise` in
 * `ios_app/Sources/MobileDiffCore/Noise.swift`, the same algorithm).
 *
 * The algorithm is torch's `normal_fill` (aten/src/ATen/native/cpu/DistributionTemplates.h):
 * [MT19937] seeded with the low 32 bits of the seed; each value first becomes a uniform
 * `(u32 & 0xFFFFFF) / 2^24`; then every block of 16 turns into normals by Box-Muller,
 * `r = sqrt(-2 log(1 - u[j]))`, `theta = 2 pi u[j + 8]`, `x[j] = r cos(theta)`,
 * `x[j + 8] = r sin(theta)`, all in float32 as torch's vectorized (AVX2/AVX-512) kernel computes
 * them, the last block redrawn when the count is not a multiple of 16. Each float32 log, sin and
 * cos here is the [StrictMath] double result of the float argument rounded to float (so every
 * JVM and Android device agrees bit for bit); they stand in for torch's SLEEF ones, so a value
 * can differ from torch's in its last bits (at most 2.4e-7 on the recorded seed-0 latents; the
 * tests allow 1e-6). Torch builds without those kernels (Apple silicon) take theta in double
 * and differ from this by up to about 1.5e-6. Counts below 16 (never a latent) take the block
 * algorithm on 16 values and keep the first ones, which torch does not.
 */
class GaussianNoise(seed: Long) {
    private val mt = MT19937(seed.toInt())

    /** The next [size] values, as `torch.randn(size, generator=g)` continues them. */
    fun floats(size: Int): FloatArray {
        require(size >= 0) { "negative size $size" }
        if (size < BLOCK) return floats(BLOCK).copyOf(size)
        val data = FloatArray(size) { uniform() }
        var start = 0
        while (start + BLOCK <= size) {
            boxMuller16(data, start)
            start += BLOCK
        }
        if (size % BLOCK != 0) {
            val tail = size - BLOCK
            for (j in 0 until BLOCK) data[tail + j] = uniform()
            boxMuller16(data, tail)
        }
        return data
    }

    /** `uniform_real_distribution<float>(0, 1)`: the low 24 bits of a word, over 2^24. */
    private fun uniform(): Float = ((mt.next() and 0xFFFFFF) * TWO_POW_MINUS_24).toFloat()

    private companion object {
        const val BLOCK = 16
        const val TWO_POW_MINUS_24 = 1.0 / 16_777_216.0
        val TWO_PI = (2.0 * Math.PI).toFloat() // torch: 2.0f * c10::pi<double>

        /** Box-Muller on `data[start until start + 16]`, in place, in float32. */
        fun boxMuller16(data: FloatArray, start: Int) {
            for (j in start until start + BLOCK / 2) {
                val u1 = 1f - data[j] // [0, 1) -> (0, 1] for log
                val u2 = data[j + BLOCK / 2]
                val radius = StrictMath.sqrt((-2f * logf(u1)).toDouble()).toFloat()
                val theta = TWO_PI * u2
                data[j] = radius * cosf(theta)
                data[j + BLOCK / 2] = radius * sinf(theta)
            }
        }

        fun logf(x: Float): Float = StrictMath.log(x.toDouble()).toFloat()

        fun cosf(x: Float): Float = StrictMath.cos(x.toDouble()).toFloat()

        fun sinf(x: Float): Float = StrictMath.sin(x.toDouble()).toFloat()
    }
}

/**
 * The 32-bit Mersenne Twister as torch's `at::mt19937` (and C++'s `std::mt19937`) runs it.
 * [next] returns the unsigned 32-bit word in an [Int] (`toUInt()` for its value).
 */
class MT19937(seed: Int) {
    private val state = IntArray(N)
    private var index = N

    init {
        state[0] = seed
        for (i in 1 until N) {
            state[i] = 1_812_433_253 * (state[i - 1] xor (state[i - 1] ushr 30)) + i
        }
    }

    /** The next word. */
    fun next(): Int {
        if (index == N) twist()
        var y = state[index++]
        y = y xor (y ushr 11)
        y = y xor ((y shl 7) and TEMPER_B)
        y = y xor ((y shl 15) and TEMPER_C)
        y = y xor (y ushr 18)
        return y
    }

    private fun twist() {
        for (i in 0 until N) {
            val y = (state[i] and UPPER) or (state[(i + 1) % N] and LOWER)
            state[i] = state[(i + M) % N] xor (y ushr 1) xor (if (y and 1 == 0) 0 else MATRIX_A)
        }
        index = 0
    }

    private companion object {
        const val N = 624
        const val M = 397
        const val UPPER = Int.MIN_VALUE // 0x80000000
        const val LOWER = Int.MAX_VALUE // 0x7FFFFFFF
        val MATRIX_A = 0x9908B0DFu.toInt()
        val TEMPER_B = 0x9D2C5680u.toInt()
        val TEMPER_C = 0xEFC60000u.toInt()
    }
}
