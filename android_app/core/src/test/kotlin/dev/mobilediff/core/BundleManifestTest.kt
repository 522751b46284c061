package dev.mobilediff.core

import org.json.JSONArray
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Assumptions.assumeTrue
import org.junit.jupiter.api.Test
import java.io.File
import java.nio.file.Files

class BundleManifestTest {
    private val bundle = TestBundle()

    @AfterEach
    fun cleanUp() = bundle.close()

    /** Rewrite the manifest after [change], then load it and expect [T] with [words] in its message. */
    private inline fun <reified T : MobileDiffException> refused(vararg words: String, change: () -> Unit = {}): T {
        change()
        bundle.write()
        val error = assertThrows<T> { bundle.load(verifySha256 = true) }
        for (word in words) assertTrue(word in error.message!!) { "'$word' not in: ${error.message}" }
        return error
    }

    @Test
    fun `a valid bundle loads with every field the app uses`() {
        val manifest = bundle.load(verifySha256 = true)
        assertEquals("tiny", manifest.modelName)
        assertEquals("0.1.0", manifest.toolVersion)
        assertEquals(BundleManifest.sha256Hex(File(bundle.dir, MANIFEST_FILE)), manifest.sha256)
        with(manifest.pipeline) {
            assertEquals(64, imageSize)
            assertEquals(listOf(1, 4, 16, 16), latentShape)
            assertEquals(0.18215, vaeScalingFactor)
            assertEquals(PredictionType.EPSILON, predictionType)
            assertEquals(GuidanceSpec("cfg", 7.5, ""), guidance)
            assertEquals(NoiseSchedule(1000, 0.00085, 0.012, "scaled_linear"), noiseSchedule)
            assertEquals("ddim", sampler.name)
            assertEquals(4, sampler.numInferenceSteps)
        }
        val unet = manifest.target("tflite").unet
        assertEquals("tflite/unet.tflite", unet.file)
        assertEquals("unet", unet.signature)
        assertFalse(manifest.target("tflite").foldedTimesteps)
        assertEquals("timestep", unet.input(TensorRole.TIMESTEP).name)
        assertEquals(listOf(2, 77, 64), unet.input(TensorRole.TOKEN_STATES).shape)
        assertEquals(TokenizerConfig(), manifest.tokenizer.config)
        assertEquals(7, manifest.loadTokenizer().encode("a photo of a cat").size)
    }

    @Test
    fun `a text encoder at batch 2 and NHWC images are accepted`() {
        bundle.at("components.tflite.text_encoder").apply {
            getJSONArray("inputs").getJSONObject(0).put("shape", JSONArray(listOf(2, 77)))
            getJSONArray("outputs").getJSONObject(0).put("shape", JSONArray(listOf(2, 77, 64)))
        }
        bundle.at("components.tflite.vae_decoder").getJSONArray("outputs").getJSONObject(0)
            .put("shape", JSONArray(listOf(1, 64, 64, 3))).put("layout", "NHWC")
        bundle.write()
        assertEquals("NHWC", bundle.load().target("tflite").vaeDecoder.output(TensorRole.IMAGE).layout)
    }

    @Test
    fun `a UNet with folded timesteps takes step indices and runs only the bundle's steps`() {
        bundle.at("components.tflite.unet").getJSONArray("inputs").getJSONObject(1)
            .put("name", STEP_INDEX_INPUT).put("dtype", "int32")
        bundle.write()
        val manifest = bundle.load()
        val target = manifest.target("tflite")
        assertTrue(target.foldedTimesteps)
        val input = target.unet.input(TensorRole.TIMESTEP)
        val timesteps = manifest.pipeline.sampler.timesteps // 751, 501, 251, 1
        assertEquals(1.0, timestepFeed(input, 501.0, timesteps))
        assertThrows<ConfigException> { timestepFeed(input, 500.0, timesteps) }

        val pipeline = Pipeline.fromBundle(manifest, PipelineReplayTest.ZeroRunner())
        assertTrue(pipeline.fixedSteps)
        assertEquals(4, pipeline.makeSampler(4).size)
        assertThrows<ConfigException> { pipeline.makeSampler(8) }

        val plain = bundle.at("components.tflite.unet").getJSONArray("inputs").getJSONObject(1)
        plain.put("name", "timestep").put("dtype", "float32")
        bundle.write()
        assertEquals(500.0, timestepFeed(bundle.load().target("tflite").unet.input(TensorRole.TIMESTEP), 500.0, timesteps))
    }

    @Test
    fun `a missing field names its path`() {
        refused<ManifestException>("pipeline.image_size", "missing") { bundle.at("pipeline").remove("image_size") }
    }

    @Test
    fun `a wrong type names its path and the value`() {
        refused<ManifestException>("pipeline.image_size", "integer", "\"64\"") { bundle.at("pipeline").put("image_size", "64") }
    }

    @Test
    fun `a wrong type deep inside names the whole path`() {
        refused<ManifestException>("components.tflite.unet.inputs[1].dtype") {
            bundle.at("components.tflite.unet").getJSONArray("inputs").getJSONObject(1).put("dtype", "float64")
        }
    }

    @Test
    fun `an unknown schema version is refused as such`() {
        val error = refused<UnsupportedSchemaVersionException>("schema_version 2") { bundle.manifest.put("schema_version", 2) }
        assertEquals(2, error.found)
    }

    @Test
    fun `a path with a dot-dot segment is refused`() {
        refused<ManifestException>("tokenizer.vocab", "'..'") { bundle.at("tokenizer").put("vocab", "tokenizer/../../vocab.json") }
    }

    @Test
    fun `an absolute path is refused`() {
        refused<ManifestException>("components.tflite.unet.file", "absolute") {
            bundle.at("components.tflite.unet").put("file", "/data/local/tmp/unet.tflite")
        }
    }

    @Test
    fun `a link out of the bundle is refused`() {
        val outside = Files.createTempFile("outside", ".tflite").toFile()
        val unet = File(bundle.dir, "tflite/unet.tflite")
        outside.writeBytes(unet.readBytes())
        unet.delete()
        Files.createSymbolicLink(unet.toPath(), outside.toPath())
        refused<ManifestException>("leaves the bundle")
        outside.delete()
    }

    @Test
    fun `a missing file is a MissingFileException`() {
        val error = refused<MissingFileException>("tflite/unet.tflite") { File(bundle.dir, "tflite/unet.tflite").delete() }
        assertEquals("tflite/unet.tflite", error.path)
    }

    @Test
    fun `a missing bundle json is a MissingFileException`() {
        File(bundle.dir, MANIFEST_FILE).delete()
        assertThrows<MissingFileException> { bundle.load() }
    }

    @Test
    fun `a changed file fails sha256 verification, and only when asked`() {
        val vae = File(bundle.dir, "tflite/vae_decoder.tflite")
        vae.writeText(vae.readText().uppercase()) // same size, other bytes
        bundle.load(verifySha256 = false)
        refused<ChecksumMismatchException>("tflite/vae_decoder.tflite", "sha256")
    }

    @Test
    fun `a truncated file fails the size check even without sha256`() {
        File(bundle.dir, "tokenizer/merges.txt").appendText("x y\n")
        assertThrows<ChecksumMismatchException> { bundle.load(verifySha256 = false) }
    }

    @Test
    fun `a UNet declared at the wrong batch is a ShapeMismatchException`() {
        refused<ShapeMismatchException>("components.tflite.unet.inputs[0] 'sample'", "[2, 4, 16, 16]", "[1, 4, 16, 16]") {
            bundle.at("components.tflite.unet").getJSONArray("inputs").getJSONObject(0).put("shape", JSONArray(listOf(1, 4, 16, 16)))
        }
    }

    @Test
    fun `a decoder that makes the wrong image size is a ShapeMismatchException`() {
        refused<ShapeMismatchException>("vae_decoder") {
            bundle.at("components.tflite.vae_decoder").getJSONArray("outputs").getJSONObject(0)
                .put("shape", JSONArray(listOf(1, 3, 32, 32)))
        }
    }

    @Test
    fun `a UNet without a timestep input is refused`() {
        refused<ManifestException>("timestep (layout N)") {
            bundle.at("components.tflite.unet").getJSONArray("inputs").getJSONObject(1).put("layout", "NL")
        }
    }

    @Test
    fun `a sampler without its tables is refused`() {
        refused<ManifestException>("pipeline.sampler.alphas_cumprod") { bundle.at("pipeline.sampler").remove("alphas_cumprod") }
    }

    @Test
    fun `a target the bundle lacks is named`() {
        val error = assertThrows<ManifestException> { BundleManifest.load(bundle.dir, target = "coreml") }
        assertTrue("--target coreml" in error.message!!, error.message)
    }

    @Test
    fun `text that is not JSON is a ManifestException`() {
        File(bundle.dir, MANIFEST_FILE).writeText("{ not json")
        assertThrows<ManifestException> { bundle.load() }
    }

    @Test
    fun `optional fields may be left out`() {
        bundle.at("pipeline.guidance").remove("negative_prompt")
        bundle.at("components.tflite.unet").remove("signature")
        bundle.write()
        val manifest = bundle.load()
        assertEquals("", manifest.pipeline.guidance.negativePrompt)
        assertNull(manifest.target("tflite").unet.signature)
    }

    /** A bundle written by `mobilediff export`, when the run names one: `-Dmobilediff.bundle=<folder>`. */
    @Test
    fun `an exported bundle loads, verifies and builds its pipeline`() {
        val dir = System.getProperty("mobilediff.bundle")
        assumeTrue(dir != null, "no exported bundle given (-Dmobilediff.bundle)")
        val manifest = BundleManifest.load(File(dir!!), verifySha256 = true)
        val pipeline = Pipeline.fromBundle(manifest, PipelineReplayTest.ZeroRunner())
        assertEquals(manifest.pipeline.sampler.numInferenceSteps, pipeline.makeSampler().size)
        assertEquals(manifest.tokenizer.config.maxLength, pipeline.tokenizer("a photo of a cat").size)
    }
}
