package dev.mobilediff.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Test

class TensorTest {
    @Test
    fun `NCHW to NHWC and back`() {
        val nchw = Tensor(intArrayOf(2, 3, 2, 2), FloatArray(24) { it.toFloat() })
        val nhwc = nchw.nchwToNhwc()
        assertArrayEquals(intArrayOf(2, 2, 2, 3), nhwc.shape)
        // pixel (y=0, x=1) of batch 0 holds channels 0, 1, 2 at NCHW offsets 1, 5, 9
        assertArrayEquals(floatArrayOf(1f, 5f, 9f), nhwc.data.copyOfRange(3, 6))
        assertArrayEquals(nchw.data, nhwc.nhwcToNchw().data)
    }

    @Test
    fun `a shape that does not fit the data is refused`() {
        assertThrows<IllegalArgumentException> { Tensor(intArrayOf(2, 3), FloatArray(5)) }
        assertEquals("[1, 3]", Tensor(intArrayOf(1, 3), FloatArray(3)).shapeText)
    }
}
