package dev.mobilediff.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import kotlin.math.floor

/**
 * The platform-free half of the app's benchmark entry: the warm-up and measured loop, the
 * statistics, and the result file the benchmark harness pulls. Its format is
 * `mobilediff_export/schemas/phone_bench_result.schema.json`, shared with the iOS app.
 */

/** What QA asked for, from the `am start` extras. */
data class BenchSettings(
    val prompt: String,
    /** `null`: the bundle's own step count (the app fills it in once the manifest is read). */
    val steps: Int?,
    val seed: Long,
    val iterations: Int,
    val warmup: Int,
    /** `cpu`, `gpu` or `npu` on Android. */
    val backend: String,
) {
    /** Refuse settings that cannot give a result, with a message for the result's `error`. */
    fun check() {
        val problem = when {
            steps != null && steps < 1 -> "steps must be at least 1; got $steps"
            iterations < 1 -> "iterations must be at least 1; got $iterations"
            warmup < 0 -> "warmup must be 0 or more; got $warmup"
            backend !in ANDROID_BACKENDS -> "backend must be one of ${ANDROID_BACKENDS.joinToString()}; got '$backend'"
            else -> null
        }
        if (problem != null) throw ConfigException(problem)
    }

    companion object {
        val ANDROID_BACKENDS = listOf("cpu", "gpu", "npu")
    }
}

/** The phone, as the result file describes it. */
data class DeviceInfo(
    val manufacturer: String,
    val model: String,
    val soc: String,
    val osVersion: String,
    val abi: String,
)

/** Milliseconds to load (and compile for the chosen backend) each network. */
data class LoadTimes(val textEncoderMs: Double?, val unetMs: Double?, val vaeDecoderMs: Double?)

/** Median, 90th percentile, min and max of some milliseconds. */
data class Stats(val median: Double, val p90: Double, val min: Double, val max: Double) {
    companion object {
        /** `null` for no values. Percentiles interpolate linearly, as numpy's default does. */
        fun of(values: List<Double>): Stats? {
            if (values.isEmpty()) return null
            val sorted = values.sorted()
            return Stats(percentile(sorted, 50.0), percentile(sorted, 90.0), sorted.first(), sorted.last())
        }

        /** `numpy.percentile(values, q)` on already sorted values. */
        fun percentile(sorted: List<Double>, q: Double): Double {
            val position = (sorted.size - 1) * q / 100.0
            val lower = floor(position).toInt()
            val upper = minOf(lower + 1, sorted.size - 1)
            return sorted[lower] + (sorted[upper] - sorted[lower]) * (position - lower)
        }
    }
}

/** Warm-up runs (not recorded), then [BenchSettings.iterations] measured runs; [onRun] sees each. */
fun runBenchmark(
    pipeline: Pipeline,
    settings: BenchSettings,
    onRun: (runs: List<StageTimings>) -> Unit = {},
): List<StageTimings> {
    settings.check()
    repeat(settings.warmup) { pipeline.generate(settings.prompt, settings.steps, settings.seed) }
    val runs = ArrayList<StageTimings>(settings.iterations)
    repeat(settings.iterations) {
        runs += pipeline.generate(settings.prompt, settings.steps, settings.seed).timings
        onRun(runs.toList())
    }
    return runs
}

/**
 * One benchmark result file. It is written after every measured run with status `incomplete`,
 * and once more at the end, so a harness that loses the phone still pulls what was measured.
 */
data class PhoneBenchResult(
    val appVersion: String,
    val device: DeviceInfo,
    val settings: BenchSettings,
    /** `null` until the bundle's manifest was read. */
    val modelName: String? = null,
    val manifestSha256: String? = null,
    val loadMs: LoadTimes = LoadTimes(null, null, null),
    val runs: List<StageTimings> = emptyList(),
    val peakRssBytes: Long? = null,
    val error: String? = null,
    val platform: String = "android",
) {
    /** `complete` only when every requested run finished without an error. */
    val status: String get() = if (error == null && runs.size == settings.iterations) "complete" else "incomplete"

    fun toJson(): JSONObject = obj(
        "schema_version" to 1,
        "platform" to platform,
        "app_version" to appVersion,
        "device" to obj(
            "manufacturer" to device.manufacturer,
            "model" to device.model,
            "soc" to device.soc,
            "os_version" to device.osVersion,
            "abi" to device.abi,
        ),
        "bundle" to obj("model_name" to modelName, "manifest_sha256" to manifestSha256),
        "settings" to obj(
            "prompt" to settings.prompt,
            "steps" to settings.steps,
            "seed" to settings.seed,
            "iterations" to settings.iterations,
            "warmup" to settings.warmup,
            "backend" to settings.backend,
        ),
        "load_ms" to obj(
            "text_encoder" to loadMs.textEncoderMs?.let(::ms),
            "unet" to loadMs.unetMs?.let(::ms),
            "vae_decoder" to loadMs.vaeDecoderMs?.let(::ms),
        ),
        "runs" to JSONArray(
            runs.map { run ->
                obj(
                    "tokenize_ms" to ms(run.tokenizeMs),
                    "text_encoder_ms" to ms(run.textEncoderMs),
                    "unet_ms" to JSONArray(run.unetMs.map(::ms)),
                    "sampler_ms" to ms(run.samplerMs),
                    "vae_decoder_ms" to ms(run.vaeDecoderMs),
                    "total_ms" to ms(run.totalMs),
                )
            },
        ),
        "summary" to obj(
            "text_encoder_ms" to stats(runs.map { it.textEncoderMs }),
            "unet_step_ms" to stats(runs.flatMap { it.unetMs }),
            "vae_decoder_ms" to stats(runs.map { it.vaeDecoderMs }),
            "total_ms" to stats(runs.map { it.totalMs }),
        ),
        "memory" to obj("peak_rss_bytes" to peakRssBytes),
        "status" to status,
        "error" to error,
    )

    /** Write the JSON to [file] atomically (a temporary file renamed over it). */
    fun writeTo(file: File) {
        file.parentFile?.mkdirs()
        val partial = File(file.path + ".partial")
        partial.writeText(toJson().toString(2) + "\n")
        if (!partial.renameTo(file)) {
            file.delete()
            check(partial.renameTo(file)) { "could not move $partial to $file" }
        }
    }

    private fun stats(values: List<Double>): Any? = Stats.of(values)?.let {
        obj("median" to ms(it.median), "p90" to ms(it.p90), "min" to ms(it.min), "max" to ms(it.max))
    }

    private companion object {
        /** Milliseconds to the microsecond: enough for latency, and readable. */
        fun ms(value: Double): Double = Math.round(value * 1000.0) / 1000.0

        /** A JSON object in the given key order, `null` written as JSON null. */
        fun obj(vararg entries: Pair<String, Any?>): JSONObject = JSONObject().apply {
            for ((key, value) in entries) put(key, value ?: JSONObject.NULL)
        }
    }
}

/** Peak resident memory of this process (Linux `VmHWM`), or `null` where it cannot be read. */
fun peakRssBytes(status: File = File("/proc/self/status")): Long? = runCatching {
    status.readLines().firstOrNull { it.startsWith("VmHWM:") }
        ?.removePrefix("VmHWM:")?.trim()?.removeSuffix("kB")?.trim()?.toLong()?.times(1024)
}.getOrNull()
