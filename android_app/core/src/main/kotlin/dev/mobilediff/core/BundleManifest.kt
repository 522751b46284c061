package dev.mobilediff.core

import org.json.JSONException
import org.json.JSONObject
import java.io.File
import java.security.MessageDigest

/** The `schema_version` of `bundle.json` this reader understands. */
const val SCHEMA_VERSION = 1

/** The manifest's file name inside a bundle folder. */
const val MANIFEST_FILE = "bundle.json"

/**
 * A bundle's `bundle.json`, read and checked: the contract written down in
 * `mobilediff_export/schemas/bundle.schema.json`. An app reads only this and the files it
 * names, never guessing from file names.
 *
 * [load] checks what the app relies on: the schema version, every field this reader uses
 * (presence, type, allowed values), that no path leaves the bundle, that the tensor shapes of
 * the chosen target fit the pipeline, and that the tokenizer and target files are present with
 * the recorded sizes (and sha256, on request). Fields it does not use are not checked; the
 * exporter validates the whole manifest against the JSON Schema.
 */
class BundleManifest(
    val dir: File,
    val toolVersion: String,
    val modelName: String,
    val pipeline: PipelineSpec,
    val tokenizer: TokenizerSpec,
    val components: Map<String, TargetSpec>,
    val files: Map<String, FileEntry>,
    /** sha256 of the `bundle.json` bytes: identifies the bundle in benchmark results. */
    val sha256: String,
) {
    /** The three networks exported for [name] (`tflite`, `coreml`, `onnx`). */
    fun target(name: String): TargetSpec = components[name] ?: throw ManifestException(
        "bundle.json: this bundle has no '$name' components (it has ${components.keys.joinToString()}); " +
            "export it with --target $name",
    )

    /** A bundle path as a file inside [dir]. */
    fun file(path: String): File = File(dir, path)

    /** The bundle's tokenizer, from the files and settings the manifest names. */
    fun loadTokenizer(): ClipTokenizer =
        ClipTokenizer.fromFiles(file(tokenizer.vocab), file(tokenizer.merges), tokenizer.config)

    companion object {
        /**
         * Read `dir/bundle.json` and check it, the tokenizer files and the files of [target]
         * (`null`: no target's files). With [verifySha256] every checked file is hashed too,
         * which reads the whole model files: seconds for a large bundle.
         */
        fun load(dir: File, target: String? = "tflite", verifySha256: Boolean = false): BundleManifest {
            val manifestFile = File(dir, MANIFEST_FILE)
            if (!manifestFile.isFile) {
                throw MissingFileException(MANIFEST_FILE, "bundle folder ${dir.path}")
            }
            val bytes = manifestFile.readBytes()
            val manifest = parse(String(bytes, Charsets.UTF_8), dir, sha256Hex(bytes))
            manifest.checkFiles(target, verifySha256)
            return manifest
        }

        /** Parse and validate the manifest's content alone (no file is opened). */
        fun parse(text: String, dir: File, sha256: String = sha256Hex(text.toByteArray(Charsets.UTF_8))): BundleManifest {
            val json = try {
                JSONObject(text)
            } catch (e: JSONException) {
                throw ManifestException("bundle.json is not a valid JSON object: ${e.message}", e)
            }
            val root = JsonFields(json, "")
            val version = root.int("schema_version")
            if (version != SCHEMA_VERSION) throw UnsupportedSchemaVersionException(version)

            val tool = root.obj("tool")
            if (tool.string("name") != "mobilediff") tool.fail("tool.name must be 'mobilediff'")
            val tokenizer = TokenizerSpec.fromJson(root.obj("tokenizer"))
            val pipeline = PipelineSpec.fromJson(root.obj("pipeline"))
            val components = root.obj("components").entries().associate { (name, fields) ->
                if (name !in TARGETS) fields.fail("components.$name is not a target (${TARGETS.joinToString()})")
                name to TargetSpec.fromJson(name, fields)
            }
            if (components.isEmpty()) root.fail("components must name at least one target")
            val files = root.obj("files").entries().associate { (path, fields) ->
                checkPath(path, "files")
                path to FileEntry(sha256(fields, "sha256"), fields.long("size_bytes"))
            }
            for (target in components.values) target.checkShapes(pipeline, tokenizer.config)
            return BundleManifest(
                dir = dir,
                toolVersion = tool.string("version"),
                modelName = root.obj("model").string("name"),
                pipeline = pipeline,
                tokenizer = tokenizer,
                components = components,
                files = files,
                sha256 = sha256,
            )
        }

        val TARGETS = listOf("tflite", "coreml", "onnx")

        /** Lower-case hex sha256 of [bytes]. */
        fun sha256Hex(bytes: ByteArray): String =
            MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

        /** Lower-case hex sha256 of a file, streamed. */
        fun sha256Hex(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            file.inputStream().use { input ->
                val buffer = ByteArray(1 shl 20)
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                }
            }
            return digest.digest().joinToString("") { "%02x".format(it) }
        }

        /**
         * A manifest path: relative, '/'-separated, no '..' segment, no backslash (the schema's
         * `path` pattern). [load] also refuses one that leaves the bundle through a link.
         */
        internal fun checkPath(path: String, where: String): String {
            val bad = when {
                path.isEmpty() -> "is empty"
                path.startsWith("/") -> "is absolute"
                '\\' in path -> "contains a backslash"
                path.split('/').any { it == ".." } -> "has a '..' segment"
                else -> null
            }
            if (bad != null) {
                throw ManifestException("bundle.json: $where path '$path' $bad; paths must stay inside the bundle")
            }
            return path
        }

        internal fun sha256(fields: JsonFields, name: String): String {
            val value = fields.string(name)
            if (!SHA256.matches(value)) fields.fail("${fields.path(name)} must be 64 lower-case hex digits; got '$value'")
            return value
        }

        private val SHA256 = Regex("[0-9a-f]{64}")
    }

    private fun checkFiles(target: String?, verifySha256: Boolean) {
        val checked = mutableListOf(tokenizer.vocab to "tokenizer.vocab", tokenizer.merges to "tokenizer.merges")
        if (target != null) {
            for (component in target(target).all) {
                checked += component.file to component.where
                val entry = files[component.file]
                if (entry != null && entry.sha256 != component.sha256) {
                    throw ManifestException(
                        "bundle.json: ${component.where}.sha256 differs from files[\"${component.file}\"].sha256",
                    )
                }
            }
        }
        val root = dir.canonicalFile
        for ((path, where) in checked) {
            val file = file(path)
            if (!file.canonicalFile.startsWith(root)) {
                throw ManifestException("bundle.json: $where path '$path' leaves the bundle through a link")
            }
            if (!file.isFile) throw MissingFileException(path, where)
            val entry = files[path] ?: throw ManifestException("bundle.json: files has no entry for '$path' ($where)")
            if (file.length() != entry.sizeBytes) {
                throw ChecksumMismatchException(path, "size", "${entry.sizeBytes} bytes", "${file.length()} bytes")
            }
            if (verifySha256) {
                val actual = sha256Hex(file)
                if (actual != entry.sha256) throw ChecksumMismatchException(path, "sha256", entry.sha256, actual)
            }
        }
    }
}
