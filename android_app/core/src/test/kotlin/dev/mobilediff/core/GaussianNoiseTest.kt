package dev.mobilediff.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.math.abs

class GaussianNoiseTest {
    @Test
    fun `the Mersenne Twister matches the standard`() {
        // The C++ standard's check of mt19937: the 10000th output for the default seed 5489.
        val mt = MT19937(5489)
        assertEquals(3_499_211_612u, mt.next().toUInt())
        repeat(9998) { mt.next() }
        assertEquals(4_123_659_995u, mt.next().toUInt())
    }

    @Test
    fun `seed 0 gives torch's latents, as the Python pipeline recorded them`() {
        // torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0)); DDIM's
        // init_noise_sigma is 1, so the recorded initial latents are the raw draws.
        val record = Vectors.json("pipeline_tiny.json")
        assertEquals(1.0, record.getJSONObject("sampler").getDouble("init_noise_sigma"))
        assertEquals(0L, record.getLong("seed"))
        val initial = record.getJSONObject("initial_latents")
        assertArrayEquals(intArrayOf(1, 4, 16, 16), initial.getJSONArray("shape").toIntArray())
        val want = initial.getJSONArray("data").toFloatArray()
        val got = GaussianNoise(record.getLong("seed")).floats(want.size)
        val worst = want.indices.maxOf { abs(got[it] - want[it]) }
        println("randn(seed 0) vs the recorded initial latents: max |difference| $worst")
        assertClose(want.toDoubles(), got.toDoubles(), atol = 1e-6, rtol = 0.0, "randn(seed 0)")
        assertClose(TORCH_SEED_0_FIRST_8.toDoubles(), got.copyOf(8).toDoubles(), atol = 1e-6, rtol = 0.0, "first values")
    }

    @Test
    fun `a count that is not a multiple of 16 redraws its last block, and the stream continues, as torch does`() {
        val twenty = GaussianNoise(42).floats(20)
        assertClose(TORCH_SEED_42_RANDN_20.toDoubles(), twenty.toDoubles(), atol = 1e-6, rtol = 0.0, "randn(20, seed 42)")
        val noise = GaussianNoise(1)
        noise.floats(1024)
        val second = noise.floats(1024)
        assertClose(TORCH_SEED_1_SECOND_DRAW.toDoubles(), second.copyOf(4).toDoubles(), atol = 1e-6, rtol = 0.0, "second draw")
    }

    @Test
    fun `the same seed gives the same noise, another seed other noise`() {
        val a = GaussianNoise(42)
        val first = a.floats(64)
        assertArrayEquals(first, GaussianNoise(42).floats(64))
        assertFalse(first.contentEquals(GaussianNoise(43).floats(64)))
        assertFalse(a.floats(64).contentEquals(first), "a second draw continues the stream")
        val odd = GaussianNoise(1)
        assertArrayEquals(odd.floats(20), GaussianNoise(1).floats(20), "counts that are not a multiple of 16")
        assertEquals(5, odd.floats(5).size)
        // Only the low 32 bits of the seed count, as in torch's mt19937.
        assertArrayEquals(GaussianNoise(7).floats(32), GaussianNoise(7L + (1L shl 32)).floats(32))
    }

    @Test
    fun `the values are unit Gaussian`() {
        val values = GaussianNoise(7).floats(200_000).map { it.toDouble() }
        val mean = values.average()
        val variance = values.sumOf { (it - mean) * (it - mean) } / values.size
        assertTrue(abs(mean) < 0.01, "mean $mean")
        assertTrue(abs(variance - 1.0) < 0.01, "variance $variance")
        assertTrue(values.all { it.isFinite() }, "finite")
        assertTrue(values.count { abs(it) > 1.96 } in 9_000..11_000, "tails")
    }

    private fun FloatArray.toDoubles() = DoubleArray(size) { this[it].toDouble() }

    private companion object {
        // Printed by torch 2.13 (CPU, AVX-512) in the repository's .venv.
        val TORCH_SEED_0_FIRST_8 = floatArrayOf(
            -1.1258398f, -1.1523602f, -0.25057858f, -0.4338788f, 0.84871036f, 0.69200915f, -0.31601277f, -2.1152194f,
        )

        // torch.randn(20, generator=torch.Generator().manual_seed(42))
        val TORCH_SEED_42_RANDN_20 = floatArrayOf(
            1.9269153f, 1.4872841f, 0.9007172f, -2.105521f, -0.75813115f, 1.0783176f, 0.80080056f, 1.6806206f,
            0.3558599f, -0.686623f, -0.49335635f, 0.24148779f, -0.23162432f, 0.04175949f, -0.2515753f, 0.8598585f,
            -0.30972677f, -0.3957105f, 0.80340934f, -0.6215954f,
        )

        // The first values of the second torch.randn((1, 4, 16, 16)) from manual_seed(1).
        val TORCH_SEED_1_SECOND_DRAW = floatArrayOf(0.89364374f, -1.0561293f, -0.1776602f, -0.4504192f)
    }
}
