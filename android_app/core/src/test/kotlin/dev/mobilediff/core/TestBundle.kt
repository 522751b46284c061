package dev.mobilediff.core

import org.json.JSONArray
import org.json.JSONObject
import java.io.File
import java.nio.file.Files

/**
 * A small but complete bundle folder for the manifest tests, shaped as `mobilediff export`
 * writes one for the `tiny` model (latents [1, 4, 16, 16], 64x64 images, guidance: UNet at
 * batch 2, text encoder at batch 1, signatures named after the components): the real CLIP
 * tokenizer files and placeholder model files, with a `bundle.json` whose sizes and sha256
 * match them.
 */
class TestBundle(val dir: File = Files.createTempDirectory("bundle").toFile()) : AutoCloseable {
    val models = mapOf(
        "text_encoder" to "tflite/text_encoder.tflite",
        "unet" to "tflite/unet.tflite",
        "vae_decoder" to "tflite/vae_decoder.tflite",
    )
    val manifest: JSONObject

    init {
        Vectors.vocabJson.copyTo(File(dir, "tokenizer/vocab.json"))
        Vectors.mergesTxt.copyTo(File(dir, "tokenizer/merges.txt"))
        for ((name, path) in models) File(dir, path).apply { parentFile.mkdirs() }.writeText("placeholder $name model")
        manifest = build()
        write()
    }

    /** The manifest as JSON text, written to `bundle.json`. */
    fun write(json: JSONObject = manifest) = File(dir, MANIFEST_FILE).writeText(json.toString(2))

    fun load(verifySha256: Boolean = false) = BundleManifest.load(dir, verifySha256 = verifySha256)

    /** The JSON object at a dotted path, e.g. `components.tflite.unet`. */
    fun at(path: String): JSONObject =
        path.split('.').fold(manifest) { obj, key -> obj.getJSONObject(key) }

    override fun close() {
        dir.deleteRecursively()
    }

    private fun fileEntry(path: String): JSONObject {
        val file = File(dir, path)
        return JSONObject().put("sha256", BundleManifest.sha256Hex(file)).put("size_bytes", file.length())
    }

    private fun tensor(name: String, shape: List<Int>, dtype: String, layout: String) = JSONObject()
        .put("name", name).put("shape", JSONArray(shape)).put("dtype", dtype).put("layout", layout)

    private fun component(name: String, inputs: List<JSONObject>, outputs: List<JSONObject>) = fileEntry(models.getValue(name))
        .put("file", models.getValue(name)).put("precision", "fp32").put("recipe", "fp32")
        .put("rewrites", JSONArray(listOf("fuse_qkv"))).put("signature", name)
        .put("inputs", JSONArray(inputs)).put("outputs", JSONArray(outputs))

    private fun build(): JSONObject {
        val files = JSONObject()
        (models.values + listOf("tokenizer/vocab.json", "tokenizer/merges.txt")).forEach { files.put(it, fileEntry(it)) }
        val sampler = Vectors.json("pipeline_tiny.json").getJSONObject("sampler")
        return JSONObject()
            .put("schema_version", 1)
            .put("tool", JSONObject().put("name", "mobilediff").put("version", "0.1.0"))
            .put(
                "model",
                JSONObject().put("name", "tiny").put("source", "config:tiny").put("source_sha256", JSONObject.NULL)
                    .put("config", JSONObject()),
            )
            .put(
                "pipeline",
                JSONObject()
                    .put("image_size", 64)
                    .put("latent_shape", JSONArray(listOf(1, 4, 16, 16)))
                    .put("vae_scaling_factor", 0.18215)
                    .put("prediction_type", "epsilon")
                    .put(
                        "noise_schedule",
                        JSONObject().put("num_train_timesteps", 1000).put("beta_start", 0.00085)
                            .put("beta_end", 0.012).put("beta_schedule", "scaled_linear"),
                    )
                    .put("sampler", sampler)
                    .put("guidance", JSONObject().put("mode", "cfg").put("scale", 7.5).put("negative_prompt", "")),
            )
            .put(
                "tokenizer",
                JSONObject().put("kind", "clip-bpe").put("vocab", "tokenizer/vocab.json")
                    .put("merges", "tokenizer/merges.txt").put("max_length", 77)
                    .put("bos_token_id", 49406).put("eos_token_id", 49407).put("pad_token_id", 49407),
            )
            .put(
                "components",
                JSONObject().put(
                    "tflite",
                    JSONObject()
                        .put(
                            "text_encoder",
                            component(
                                "text_encoder",
                                listOf(tensor("input_ids", listOf(1, 77), "int32", "NL")),
                                listOf(tensor("context", listOf(1, 77, 64), "float32", "NLC")),
                            ),
                        )
                        .put(
                            "unet",
                            component(
                                "unet",
                                listOf(
                                    tensor("sample", listOf(2, 4, 16, 16), "float32", "NCHW"),
                                    tensor("timestep", listOf(2), "float32", "N"),
                                    tensor("context", listOf(2, 77, 64), "float32", "NLC"),
                                ),
                                listOf(tensor("model_output", listOf(2, 4, 16, 16), "float32", "NCHW")),
                            ),
                        )
                        .put(
                            "vae_decoder",
                            component(
                                "vae_decoder",
                                listOf(tensor("latent", listOf(1, 4, 16, 16), "float32", "NCHW")),
                                listOf(tensor("image", listOf(1, 3, 64, 64), "float32", "NCHW")),
                            ),
                        ),
                ),
            )
            .put("files", files)
    }
}
