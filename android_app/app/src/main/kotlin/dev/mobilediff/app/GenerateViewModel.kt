package dev.mobilediff.app

import android.app.Application
import android.graphics.Bitmap
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.setValue
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.mobilediff.core.BundleManifest
import dev.mobilediff.core.MobileDiffException
import dev.mobilediff.core.Pipeline
import dev.mobilediff.core.StageTimings
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.launch
import kotlinx.coroutines.withContext
import java.util.concurrent.Executors

/**
 * The screen's state and its one action, [generate]. The bundle is loaded on first use and
 * kept (with its interpreters) until the backend changes or the screen goes away. All LiteRT
 * work runs on one worker thread, as the GPU delegate requires.
 */
class GenerateViewModel(application: Application) : AndroidViewModel(application) {
    var prompt by mutableStateOf("a red circle left of a blue square")
    var steps by mutableStateOf("") // empty: the bundle's own step count
    var seed by mutableStateOf("0")
    var backend by mutableStateOf(Backend.GPU)
    var busy by mutableStateOf(false)
        private set
    var status by mutableStateOf("")
        private set
    var image by mutableStateOf<Bitmap?>(null)
        private set
    var timings by mutableStateOf<StageTimings?>(null)
        private set
    var loadInfo by mutableStateOf("")
        private set

    val bundleDir = AppFiles.bundleDir(application)
    private val worker = Executors.newSingleThreadExecutor().asCoroutineDispatcher()
    private var session: Session? = null

    /** A loaded bundle: its manifest, its LiteRT runner and the pipeline over them. */
    private class Session(val manifest: BundleManifest, val runner: LiteRtModelRunner) {
        val pipeline = Pipeline.fromBundle(manifest, runner)
    }

    fun generate() {
        if (busy) return
        val stepCount = steps.trim().takeIf { it.isNotEmpty() }?.let { it.toIntOrNull() ?: return fail("steps must be a number") }
        val seedValue = seed.trim().toLongOrNull() ?: return fail("seed must be a number")
        busy = true
        viewModelScope.launch {
            try {
                val result = withContext(worker) {
                    val loaded = session(backend)
                    loaded.pipeline.generate(prompt, stepCount, seedValue) { done, total ->
                        viewModelScope.launch(Dispatchers.Main) { status = "step $done of $total" }
                    }
                }
                image = Bitmap.createBitmap(result.pixels, result.width, result.height, Bitmap.Config.ARGB_8888)
                timings = result.timings
                status = ""
            } catch (e: MobileDiffException) {
                status = e.message ?: e.toString()
            } catch (e: Exception) {
                status = "${e.javaClass.simpleName}: ${e.message}"
            } finally {
                busy = false
            }
        }
    }

    /** The loaded bundle for [backend], loading (or reloading for another backend) as needed. */
    private fun session(backend: Backend): Session {
        session?.let { if (it.runner.backend == backend) return it }
        session?.runner?.close()
        session = null
        viewModelScope.launch(Dispatchers.Main) { status = "loading the bundle from $bundleDir" }
        val manifest = BundleManifest.load(bundleDir, target = "tflite")
        val runner = LiteRtModelRunner(manifest, backend, allowFallback = true)
        val load = runner.loadTimes
        val info = "${manifest.modelName}: loaded in " +
            "${ms(load.textEncoderMs)} + ${ms(load.unetMs)} + ${ms(load.vaeDecoderMs)} ms; " +
            runner.placements.entries.joinToString { (name, where) -> "$name on $where" }
        viewModelScope.launch(Dispatchers.Main) { loadInfo = info }
        return Session(manifest, runner).also { session = it }
    }

    private fun fail(message: String) {
        status = message
    }

    override fun onCleared() {
        val closing = session
        session = null
        worker.executor.execute { closing?.runner?.close() }
        worker.close()
    }

    private fun ms(value: Double?) = value?.let { "%.0f".format(it) } ?: "?"
}
