package dev.mobilediff.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.nio.file.Files

class BenchmarkTest {
    private val device = DeviceInfo("Google", "Pixel 9 Pro", "Tensor G4", "15", "arm64-v8a")
    private val settings = BenchSettings("a red circle", steps = 4, seed = 0, iterations = 3, warmup = 2, backend = "gpu")

    @Test
    fun `statistics are numpy's median and linear percentile`() {
        val stats = Stats.of((1..10).map { it.toDouble() })!!
        assertEquals(Stats(median = 5.5, p90 = 9.1, min = 1.0, max = 10.0), stats.copy(p90 = Math.round(stats.p90 * 1e9) / 1e9))
        assertEquals(Stats(7.0, 7.0, 7.0, 7.0), Stats.of(listOf(7.0)))
        assertNull(Stats.of(emptyList()))
    }

    /** A pipeline over [PipelineReplayTest.ZeroRunner] whose clock advances 1 ms per reading. */
    private fun fakePipeline(runner: PipelineReplayTest.ZeroRunner): Pipeline {
        val bundle = TestBundle()
        val manifest = bundle.use { it.load() }
        var now = 0L
        return Pipeline(manifest.pipeline, Vectors.tokenizer, runner) { 1_000_000L * now++ }
    }

    @Test
    fun `warm-up runs are not recorded, each measured run is reported`() {
        val runner = PipelineReplayTest.ZeroRunner()
        val reported = mutableListOf<Int>()
        val runs = runBenchmark(fakePipeline(runner), settings) { reported += it.size }
        assertEquals(3, runs.size)
        assertEquals(listOf(1, 2, 3), reported)
        assertEquals((2 + 3) * 4, runner.unetBatches.size)
        assertTrue(runs.all { run -> run.unetMs == listOf(1.0, 1.0, 1.0, 1.0) }, "$runs")
    }

    @Test
    fun `bad settings are refused before anything runs`() {
        val runner = PipelineReplayTest.ZeroRunner()
        assertThrows<ConfigException> { runBenchmark(fakePipeline(runner), settings.copy(backend = "cpuOnly")) }
        assertThrows<ConfigException> { runBenchmark(fakePipeline(runner), settings.copy(iterations = 0)) }
        assertTrue(runner.unetBatches.isEmpty())
    }

    @Test
    fun `a complete result has the shared format`() {
        val runs = runBenchmark(fakePipeline(PipelineReplayTest.ZeroRunner()), settings)
        val result = PhoneBenchResult(
            appVersion = "0.1.0", device = device, settings = settings, modelName = "tiny",
            manifestSha256 = "0".repeat(64), loadMs = LoadTimes(12.5, 250.0, 30.25), runs = runs, peakRssBytes = 1L shl 30,
        )
        val json = result.toJson()
        val schema = JSONObject(File(Vectors.repo, "mobilediff_export/schemas/phone_bench_result.schema.json").readText())
        assertFollows(schema, json, "result")
        assertEquals("complete", json.getString("status"))
        assertTrue(json.isNull("error"))
        assertEquals("android", json.getString("platform"))
        assertEquals("gpu", json.getJSONObject("settings").getString("backend"))
        assertEquals(4, json.getJSONArray("runs").getJSONObject(0).getJSONArray("unet_ms").length())
        assertEquals(1.0, json.getJSONObject("summary").getJSONObject("unet_step_ms").getDouble("p90"))
        assertEquals(250.0, json.getJSONObject("load_ms").getDouble("unet"))
        assertEquals(1L shl 30, json.getJSONObject("memory").getLong("peak_rss_bytes"))

        val dir = Files.createTempDirectory("bench").toFile()
        val file = File(dir, "out/bench_result.json")
        result.writeTo(file)
        result.copy(error = "lost the GPU").writeTo(file)
        assertEquals("incomplete", JSONObject(file.readText()).getString("status"))
        assertFalse(File(file.path + ".partial").exists())
        dir.deleteRecursively()
    }

    @Test
    fun `a result without runs is incomplete with null summaries`() {
        val json = PhoneBenchResult("0.1.0", device, settings.copy(steps = null), error = "bundle.json is missing").toJson()
        assertTrue(json.getJSONObject("settings").isNull("steps"))
        assertEquals("incomplete", json.getString("status"))
        assertEquals("bundle.json is missing", json.getString("error"))
        assertTrue(json.getJSONObject("summary").isNull("total_ms"))
        assertTrue(json.getJSONObject("bundle").isNull("manifest_sha256"))
        assertTrue(json.getJSONObject("load_ms").isNull("unet"))
        assertEquals(0, json.getJSONArray("runs").length())
    }

    @Test
    fun `peak RSS is read from proc status`() {
        val status = Files.createTempFile("status", "").toFile()
        status.writeText("Name:\tjava\nVmPeak:\t 100 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 1024 kB\n")
        assertEquals(2048L * 1024, peakRssBytes(status))
        status.writeText("Name:\tjava\n")
        assertNull(peakRssBytes(status))
        status.delete()
    }

    /**
     * Every object of [json] has exactly the keys the schema's matching object requires (the
     * schema forbids others), recursively through nested objects and arrays of objects.
     */
    private fun assertFollows(schema: JSONObject, json: JSONObject, path: String) {
        val required = schema.getJSONArray("required").let { a -> List(a.length()) { a.getString(it) } }
        assertEquals(required.sorted(), json.keys().asSequence().toList().sorted(), path)
        val properties = schema.getJSONObject("properties")
        for (key in required) {
            val sub = properties.getJSONObject(key)
            when (val value = json.get(key)) {
                is JSONObject -> if (sub.has("properties")) assertFollows(sub, value, "$path.$key")
                is JSONArray -> sub.optJSONObject("items")?.takeIf { it.has("properties") }?.let { items ->
                    for (i in 0 until value.length()) assertFollows(items, value.getJSONObject(i), "$path.$key[$i]")
                }
            }
        }
    }
}
