package dev.mobilediff.app

import android.app.Activity
import android.content.Context
import android.os.Bundle
import android.util.Log
import android.view.WindowManager
import android.widget.TextView
import dev.mobilediff.core.BenchSettings
import dev.mobilediff.core.BundleManifest
import dev.mobilediff.core.PhoneBenchResult
import dev.mobilediff.core.Pipeline
import dev.mobilediff.core.peakRssBytes
import dev.mobilediff.core.runBenchmark
import java.io.File
import kotlin.concurrent.thread

/**
 * The benchmark entry QA starts over adb (see android_app/README.md):
 *
 * ```
 * adb shell am start -n dev.mobilediff.app/.BenchmarkActivity \
 *     --es prompt "'a red circle'" --ei steps 8 --ei seed 0 --ei iterations 10 --ei warmup 2 --es delegate gpu
 * ```
 * Optional: `--es bundle <folder>` (default: the app's bundle folder), `--es out <name>`
 * (default `bench_result.json`). It writes the result to the app's external files folder,
 * after every run with status `incomplete` and at the end `complete` (or `incomplete` with the
 * error), then finishes. A delegate that cannot take a network is an error, not a fallback.
 */
class BenchmarkActivity : Activity() {
    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        window.addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON)
        val label = TextView(this).apply { setPadding(48, 48, 48, 48) }
        setContentView(label)
        if (savedInstanceState != null) return // recreated: the first instance's run goes on
        val request = BenchRequest.from(intent.extras ?: Bundle())
        val context = applicationContext
        thread(name = "benchmark") {
            val result = benchmark(context, request) { line -> runOnUiThread { label.text = line } }
            Log.i(TAG, "${result.status}: ${request.out} ${result.error ?: ""}")
            runOnUiThread { finish() }
        }
    }

    companion object {
        const val TAG = "MobileDiffBench"
    }
}

/** The `am start` extras. Numbers may come as `--ei`, `--el` or `--es`. */
data class BenchRequest(
    val settings: BenchSettings,
    val bundle: String?,
    val out: String,
    /** Extras that could not be read, reported as the result's error. */
    val problem: String?,
) {
    companion object {
        fun from(extras: Bundle): BenchRequest {
            val problems = mutableListOf<String>()
            fun number(name: String): Long? {
                @Suppress("DEPRECATION")
                return when (val value = extras.get(name)) {
                    null -> null
                    is Number -> value.toLong()
                    else -> value.toString().trim().toLongOrNull().also { if (it == null) problems += "$name '$value' is not a number" }
                }
            }
            val settings = BenchSettings(
                prompt = extras.getString("prompt") ?: "a red circle left of a blue square",
                steps = number("steps")?.toInt(),
                seed = number("seed") ?: 0L,
                iterations = number("iterations")?.toInt() ?: 10,
                warmup = number("warmup")?.toInt() ?: 2,
                backend = extras.getString("delegate") ?: "gpu",
            )
            return BenchRequest(
                settings = settings,
                bundle = extras.getString("bundle"),
                out = extras.getString("out") ?: "bench_result.json",
                problem = problems.takeIf { it.isNotEmpty() }?.joinToString("; "),
            )
        }
    }
}

/** Run the benchmark [request] asks for, writing the result file as it goes; [progress] gets one-line updates. */
fun benchmark(context: Context, request: BenchRequest, progress: (String) -> Unit): PhoneBenchResult {
    val file = AppFiles.resultFile(context, request.out)
    file.delete()
    var result = PhoneBenchResult(
        appVersion = BuildConfig.VERSION_NAME,
        device = deviceInfo(),
        settings = request.settings,
    )
    fun save() = result.copy(peakRssBytes = peakRssBytes()).also { it.writeTo(file) }
    try {
        request.problem?.let { throw IllegalArgumentException(it) }
        request.settings.check()
        val backend = Backend.of(request.settings.backend)!!
        progress("loading the bundle")
        val manifest = BundleManifest.load(request.bundle?.let(::File) ?: AppFiles.bundleDir(context), target = "tflite")
        val settings = request.settings.copy(steps = request.settings.steps ?: manifest.pipeline.sampler.numInferenceSteps)
        result = result.copy(modelName = manifest.modelName, manifestSha256 = manifest.sha256, settings = settings)
        LiteRtModelRunner(manifest, backend, allowFallback = false).use { runner ->
            result = result.copy(loadMs = runner.loadTimes)
            save()
            progress("warm-up: ${settings.warmup} runs")
            runBenchmark(Pipeline.fromBundle(manifest, runner), settings) { runs ->
                result = result.copy(runs = runs)
                save()
                progress("run ${runs.size} of ${settings.iterations}: ${"%.0f".format(runs.last().totalMs)} ms")
            }
        }
    } catch (e: Exception) {
        result = result.copy(error = e.message ?: e.toString())
    } catch (e: OutOfMemoryError) {
        result = result.copy(error = "out of memory: ${e.message}")
    }
    return save().also { progress("${it.status}: $file") }
}
