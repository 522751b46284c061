package dev.mobilediff.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.math.abs

class GaussianNoiseTest {
    @Test
    fun `the same seed gives the same noise, another seed other noise`() {
        assertArrayEquals(GaussianNoise(42).floats(1024), GaussianNoise(42).floats(1024))
        assertFalse(GaussianNoise(42).floats(1024).contentEquals(GaussianNoise(43).floats(1024)))
    }

    @Test
    fun `the first values are fixed, so Swift and later versions can check against them`() {
        // SplitMix64 of seed 0 starts with 0xE220A8397B1DCDAF (the published reference value).
        assertEquals(0xE220A8397B1DCDAFuL.toLong(), GaussianNoise(0).nextLong())
        val first = GaussianNoise(0).floats(4)
        assertArrayEquals(FIRST_FOUR_SEED_0, first, 0f) { first.joinToString { "${it}f" } }
    }

    @Test
    fun `the values are unit Gaussian`() {
        val values = GaussianNoise(7).floats(200_000).map { it.toDouble() }
        val mean = values.average()
        val variance = values.sumOf { (it - mean) * (it - mean) } / values.size
        assertTrue(abs(mean) < 0.01, "mean $mean")
        assertTrue(abs(variance - 1.0) < 0.01, "variance $variance")
        assertTrue(values.count { abs(it) > 1.96 } in 9_000..11_000, "tails")
    }

    private companion object {
        // Checked against an independent Python implementation of the documented algorithm.
        val FIRST_FOUR_SEED_0 = floatArrayOf(-1.8839084f, 0.86450684f, 0.22760794f, -0.042112686f)
    }
}
