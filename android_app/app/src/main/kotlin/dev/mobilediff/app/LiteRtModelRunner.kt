package dev.mobilediff.app

import android.os.SystemClock
import dev.mobilediff.core.BundleManifest
import dev.mobilediff.core.ComponentSpec
import dev.mobilediff.core.LoadTimes
import dev.mobilediff.core.ManifestException
import dev.mobilediff.core.ModelRunner
import dev.mobilediff.core.Tensor
import dev.mobilediff.core.TensorRole
import dev.mobilediff.core.TensorSpec
import dev.mobilediff.core.timestepFeed
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Delegate
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate
import org.tensorflow.lite.nnapi.NnApiDelegate
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** Where the networks run: XNNPACK on the CPU, LiteRT's GPU delegate, or the NPU through NNAPI. */
enum class Backend(val id: String) {
    CPU("cpu"),
    GPU("gpu"),
    NPU("npu"),
    ;

    companion object {
        fun of(id: String): Backend? = entries.firstOrNull { it.id == id }
    }
}

/**
 * [ModelRunner] on LiteRT: one [Interpreter] per network of the manifest's `tflite` target,
 * fed and read through the signature, tensor names, shapes and dtypes the manifest declares.
 * It converts NCHW to NHWC for networks that declare NHWC, and runs a batch-1 text encoder
 * once per prompt.
 *
 * With [allowFallback], a network the chosen delegate refuses runs on XNNPACK instead, and
 * [placements] says so; without it (the benchmark) the refusal is an error, so a number never
 * claims a backend it did not use. Create, run and close it on one thread: the GPU delegate
 * binds to the thread that created it.
 */
class LiteRtModelRunner(
    manifest: BundleManifest,
    val backend: Backend,
    allowFallback: Boolean,
    numThreads: Int = minOf(4, Runtime.getRuntime().availableProcessors()),
) : ModelRunner {
    private val networks = ArrayList<Network>(3)
    private val manifestTimesteps = manifest.pipeline.sampler.timesteps
    private val textEncoderNet: Network
    private val unetNet: Network
    private val vaeDecoderNet: Network

    init {
        val target = manifest.target("tflite")
        fun load(spec: ComponentSpec) = Network(spec, manifest, backend, allowFallback, numThreads).also { networks += it }
        try {
            textEncoderNet = load(target.textEncoder)
            unetNet = load(target.unet)
            vaeDecoderNet = load(target.vaeDecoder)
        } catch (e: Exception) {
            close() // the networks loaded so far
            throw e
        }
    }

    /** Milliseconds each network took to load and prepare for [backend]. */
    val loadTimes = LoadTimes(textEncoderNet.loadMs, unetNet.loadMs, vaeDecoderNet.loadMs)

    /** The backend each network runs on, e.g. `unet -> gpu`, or `cpu (gpu refused: ...)`. */
    val placements: Map<String, String> = mapOf(
        "text_encoder" to textEncoderNet.placement,
        "unet" to unetNet.placement,
        "vae_decoder" to vaeDecoderNet.placement,
    )

    override fun textEncoder(ids: List<IntArray>): Tensor {
        val input = textEncoderNet.spec.input(TensorRole.TOKEN_IDS)
        val output = textEncoderNet.spec.output(TensorRole.TOKEN_STATES)
        val rows = if (input.shape[0] == ids.size) listOf(ids) else ids.map { listOf(it) }
        val parts = rows.map { batch ->
            val flat = batch.flatMap { it.asList() }.toIntArray()
            textEncoderNet.run(mapOf(input.name to integers(input, flat)))[output.name]!!.let { readFloats(output, it) }
        }
        val shape = output.shape.toIntArray().also { it[0] = ids.size }
        return Tensor(shape, parts.map { it.data }.reduce { a, b -> a + b })
    }

    override fun unet(sample: Tensor, timestep: Double, context: Tensor): Tensor {
        val spec = unetNet.spec
        val sampleSpec = spec.input(TensorRole.IMAGE)
        val timestepSpec = spec.input(TensorRole.TIMESTEP)
        val contextSpec = spec.input(TensorRole.TOKEN_STATES)
        val output = spec.output(TensorRole.IMAGE)
        val outputs = unetNet.run(
            mapOf(
                sampleSpec.name to floats(sampleSpec, image(sampleSpec, sample).data),
                timestepSpec.name to timesteps(timestepSpec, timestepFeed(timestepSpec, timestep, manifestTimesteps)),
                contextSpec.name to floats(contextSpec, context.data),
            ),
        )
        return fromImage(output, readFloats(output, outputs[output.name]!!))
    }

    override fun vaeDecoder(latent: Tensor): Tensor {
        val input = vaeDecoderNet.spec.input(TensorRole.IMAGE)
        val output = vaeDecoderNet.spec.output(TensorRole.IMAGE)
        val outputs = vaeDecoderNet.run(mapOf(input.name to floats(input, image(input, latent).data)))
        return fromImage(output, readFloats(output, outputs[output.name]!!))
    }

    override fun close() {
        networks.forEach { it.close() }
        networks.clear()
    }

    // --- tensors in and out ------------------------------------------------------------

    private fun image(spec: TensorSpec, nchw: Tensor): Tensor = if (spec.layout == "NHWC") nchw.nchwToNhwc() else nchw

    private fun fromImage(spec: TensorSpec, tensor: Tensor): Tensor = if (spec.layout == "NHWC") tensor.nhwcToNchw() else tensor

    private fun buffer(values: Int, bytesPerValue: Int): ByteBuffer =
        ByteBuffer.allocateDirect(values * bytesPerValue).order(ByteOrder.nativeOrder())

    private fun floats(spec: TensorSpec, data: FloatArray): ByteBuffer {
        requireDtype(spec, "float32")
        return buffer(data.size, 4).apply { asFloatBuffer().put(data) }
    }

    private fun integers(spec: TensorSpec, data: IntArray): ByteBuffer = when (spec.dtype) {
        "int32" -> buffer(data.size, 4).apply { asIntBuffer().put(data) }
        "int64" -> buffer(data.size, 8).apply { asLongBuffer().put(LongArray(data.size) { data[it].toLong() }) }
        else -> throw unsupported(spec)
    }

    /** The timestep input, one value per batch item: a timestep, or a folded UNet's step index. */
    private fun timesteps(spec: TensorSpec, value: Double): ByteBuffer {
        val n = spec.shape.fold(1) { a, b -> a * b }
        return when (spec.dtype) {
            "float32" -> floats(spec, FloatArray(n) { value.toFloat() })
            else -> integers(spec, IntArray(n) { Math.rint(value).toInt() })
        }
    }

    private fun readFloats(spec: TensorSpec, buffer: ByteBuffer): Tensor {
        requireDtype(spec, "float32")
        val data = FloatArray(spec.shape.fold(1) { a, b -> a * b })
        buffer.rewind()
        buffer.asFloatBuffer().get(data)
        return Tensor(spec.shape.toIntArray(), data)
    }

    private fun requireDtype(spec: TensorSpec, dtype: String) {
        if (spec.dtype != dtype) throw unsupported(spec)
    }

    private fun unsupported(spec: TensorSpec) = ManifestException(
        "bundle.json: ${spec.where} has dtype ${spec.dtype}, which this app does not feed; " +
            "export with float32 inputs and outputs (int32 or int64 token ids)",
    )
}

/** One network: its interpreter on the chosen backend, and where it actually runs. */
private class Network(
    val spec: ComponentSpec,
    manifest: BundleManifest,
    backend: Backend,
    allowFallback: Boolean,
    numThreads: Int,
) : AutoCloseable {
    private val interpreter: Interpreter
    private var delegate: Delegate? = null
    val placement: String
    val loadMs: Double

    init {
        val file = manifest.file(spec.file)
        val start = SystemClock.elapsedRealtimeNanos()
        var fellBack: String? = null
        interpreter = try {
            delegate = createDelegate(backend)
            Interpreter(file, options(numThreads).apply { delegate?.let { addDelegate(it) } })
        } catch (e: Exception) {
            (delegate as? AutoCloseable)?.close()
            delegate = null
            val reason = "${backend.id} refused ${spec.where.substringAfterLast('.')}: ${e.message}"
            if (!allowFallback || backend == Backend.CPU) throw IllegalStateException(reason, e)
            fellBack = reason
            Interpreter(file, options(numThreads))
        }
        interpreter.allocateTensors()
        loadMs = (SystemClock.elapsedRealtimeNanos() - start) / 1e6
        placement = if (fellBack == null) backend.id else "cpu ($fellBack)"
        checkTensors()
    }

    /** Run with named input buffers; returns the named output buffers. */
    fun run(inputs: Map<String, ByteBuffer>): Map<String, ByteBuffer> {
        val outputs = spec.outputs.associate { out ->
            val bytes = out.shape.fold(1) { a, b -> a * b } * if (out.dtype == "int64") 8 else 4
            out.name to ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())
        }
        val signature = spec.signature
        if (signature != null) {
            interpreter.runSignature(inputs, outputs, signature)
        } else {
            val ordered = arrayOfNulls<Any>(interpreter.inputTensorCount)
            inputs.forEach { (name, buffer) -> ordered[interpreter.getInputIndex(name)] = buffer }
            interpreter.runForMultipleInputsOutputs(
                ordered,
                outputs.entries.associate { (name, buffer) -> interpreter.getOutputIndex(name) to buffer },
            )
        }
        return outputs
    }

    /** The model's own tensors must be the ones the manifest declares. */
    private fun checkTensors() {
        val signature = spec.signature
        for ((tensors, isInput) in listOf(spec.inputs to true, spec.outputs to false)) {
            for (declared in tensors) {
                val actual = try {
                    when {
                        signature != null && isInput -> interpreter.getInputTensorFromSignature(declared.name, signature)
                        signature != null -> interpreter.getOutputTensorFromSignature(declared.name, signature)
                        isInput -> interpreter.getInputTensor(interpreter.getInputIndex(declared.name))
                        else -> interpreter.getOutputTensor(interpreter.getOutputIndex(declared.name))
                    }
                } catch (e: IllegalArgumentException) {
                    throw ManifestException("bundle.json: ${declared.where} is not in ${spec.file}: ${e.message}", e)
                }
                val shape = actual.shape().toList()
                if (shape != declared.shape || actual.dataType() != DTYPES[declared.dtype]) {
                    throw ManifestException(
                        "bundle.json: ${declared.where} is declared ${declared.dtype} ${declared.shape} but " +
                            "${spec.file} has ${actual.dataType()} $shape; export the bundle again",
                    )
                }
            }
        }
    }

    override fun close() {
        interpreter.close()
        (delegate as? AutoCloseable)?.close()
    }

    private companion object {
        val DTYPES = mapOf(
            "float32" to DataType.FLOAT32, "float16" to DataType.FLOAT16, "int32" to DataType.INT32,
            "int64" to DataType.INT64, "int8" to DataType.INT8, "uint8" to DataType.UINT8,
        )

        fun options(numThreads: Int) = Interpreter.Options().setNumThreads(numThreads).setUseXNNPACK(true)

        /** The delegate for [backend]; `null` for the CPU, where XNNPACK is built in. */
        fun createDelegate(backend: Backend): Delegate? = when (backend) {
            Backend.CPU -> null
            Backend.GPU -> CompatibilityList().use { compatibility ->
                check(compatibility.isDelegateSupportedOnThisDevice) { "the GPU delegate does not support this GPU" }
                GpuDelegate(compatibility.bestOptionsForThisDevice)
            }
            // NNAPI is the NPU path of the Interpreter API (deprecated from Android 15, still shipped);
            // its own CPU fallback is disabled so an NPU number is an NPU number.
            Backend.NPU -> NnApiDelegate(NnApiDelegate.Options().setAllowFp16(true).setUseNnapiCpu(false))
        }
    }
}
