package dev.mobilediff.core

/** A float tensor: row-major [data] of the given [shape] (NCHW for images and latents). */
class Tensor(val shape: IntArray, val data: FloatArray) {
    init {
        require(shape.all { it >= 1 } && shape.fold(1L) { n, d -> n * d } == data.size.toLong()) {
            "shape ${shape.contentToString()} does not hold ${data.size} values"
        }
    }

    /** The shape as Python prints a list, for messages. */
    val shapeText: String get() = shape.joinToString(", ", "[", "]")

    /** This NCHW tensor in NHWC order (for a runtime that declares NHWC). */
    fun nchwToNhwc(): Tensor {
        val (n, c, h, w) = dims4()
        val out = FloatArray(data.size)
        for (b in 0 until n) for (ch in 0 until c) for (y in 0 until h) for (x in 0 until w) {
            out[((b * h + y) * w + x) * c + ch] = data[((b * c + ch) * h + y) * w + x]
        }
        return Tensor(intArrayOf(n, h, w, c), out)
    }

    /** This NHWC tensor in NCHW order. */
    fun nhwcToNchw(): Tensor {
        val (n, h, w, c) = dims4()
        val out = FloatArray(data.size)
        for (b in 0 until n) for (y in 0 until h) for (x in 0 until w) for (ch in 0 until c) {
            out[((b * c + ch) * h + y) * w + x] = data[((b * h + y) * w + x) * c + ch]
        }
        return Tensor(intArrayOf(n, c, h, w), out)
    }

    private fun dims4(): IntArray {
        require(shape.size == 4) { "a layout change needs a 4-d tensor, not $shapeText" }
        return shape
    }
}

/**
 * The three networks, behind one small interface: LiteRT on Android, a replay of recorded
 * tensors in the tests. Shapes are the manifest's, in NCHW order; a runner converts to the
 * layout its runtime declares.
 */
interface ModelRunner : AutoCloseable {
    /** Padded token ids, one row per prompt -> text embeddings `[B, L, D]`. */
    fun textEncoder(ids: List<IntArray>): Tensor

    /** Noise prediction for [sample] `[B, C, h, w]` at [timestep] -> `[B, C, h, w]`. */
    fun unet(sample: Tensor, timestep: Double, context: Tensor): Tensor

    /** Scaled latents `[1, C, h, w]` -> image `[1, 3, H, W]` in [-1, 1]. */
    fun vaeDecoder(latent: Tensor): Tensor

    override fun close() {}
}
