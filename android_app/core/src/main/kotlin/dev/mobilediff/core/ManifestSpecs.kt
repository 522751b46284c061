package dev.mobilediff.core

import org.json.JSONObject

// The parts of `bundle.json` the apps use, each read and checked from its JSON object. The
// contract itself is mobilediff_export/schemas/bundle.schema.json; BundleManifest reads the whole.

/** One file of the bundle as `files` records it. */
data class FileEntry(val sha256: String, val sizeBytes: Long)

/** `tokenizer` in `bundle.json`: the BPE files and the settings. */
data class TokenizerSpec(val vocab: String, val merges: String, val config: TokenizerConfig) {
    companion object {
        internal fun fromJson(json: JsonFields): TokenizerSpec {
            json.oneOf("kind", listOf("clip-bpe"))
            val config = TokenizerConfig(
                maxLength = json.int("max_length"),
                bosTokenId = json.int("bos_token_id"),
                eosTokenId = json.int("eos_token_id"),
                padTokenId = json.int("pad_token_id"),
            )
            if (config.maxLength < 2) json.fail("tokenizer.max_length must be at least 2; got ${config.maxLength}")
            return TokenizerSpec(
                vocab = BundleManifest.checkPath(json.string("vocab"), "tokenizer.vocab"),
                merges = BundleManifest.checkPath(json.string("merges"), "tokenizer.merges"),
                config = config,
            )
        }
    }
}

/** `pipeline.noise_schedule`: what the sampler tables were computed from. */
data class NoiseSchedule(
    val numTrainTimesteps: Int,
    val betaStart: Double,
    val betaEnd: Double,
    val betaSchedule: String,
)

/** `pipeline.guidance`: classifier-free guidance runs the UNet at batch 2, [uncond, cond]. */
data class GuidanceSpec(val mode: String, val scale: Double, val negativePrompt: String) {
    val enabled: Boolean get() = mode == "cfg"

    /** The UNet's batch: 2 with guidance, else 1. */
    val batch: Int get() = if (enabled) 2 else 1
}

/** `pipeline` in `bundle.json`. */
class PipelineSpec(
    val imageSize: Int,
    /** `[1, C, h, w]` of one latent. */
    val latentShape: List<Int>,
    val vaeScalingFactor: Double,
    val predictionType: PredictionType,
    val noiseSchedule: NoiseSchedule,
    val sampler: SamplerSpec,
    val guidance: GuidanceSpec,
) {
    companion object {
        internal fun fromJson(json: JsonFields): PipelineSpec {
            val imageSize = json.int("image_size")
            if (imageSize < 8) json.fail("pipeline.image_size must be at least 8; got $imageSize")
            val latentShape = json.ints("latent_shape").toList()
            if (latentShape.size != 4 || latentShape[0] != 1 || latentShape.any { it < 1 }) {
                throw ShapeMismatchException("bundle.json: pipeline.latent_shape", "[1, C, h, w]", "$latentShape")
            }
            val vaeScalingFactor = json.double("vae_scaling_factor")
            if (vaeScalingFactor <= 0.0) json.fail("pipeline.vae_scaling_factor must be > 0; got $vaeScalingFactor")
            val predictionName = json.oneOf("prediction_type", PredictionType.entries.map { it.jsonName })
            val schedule = json.obj("noise_schedule").let {
                NoiseSchedule(
                    numTrainTimesteps = it.int("num_train_timesteps"),
                    betaStart = it.double("beta_start"),
                    betaEnd = it.double("beta_end"),
                    betaSchedule = it.oneOf("beta_schedule", listOf("scaled_linear", "linear")),
                )
            }
            val sampler = SamplerSpec.fromJson(json.obj("sampler"))
            if (sampler.predictionType.jsonName != predictionName) {
                json.fail("pipeline.sampler.prediction_type differs from pipeline.prediction_type")
            }
            if (sampler.numTrainTimesteps != schedule.numTrainTimesteps) {
                json.fail("pipeline.sampler.num_train_timesteps differs from pipeline.noise_schedule's")
            }
            val guidance = json.obj("guidance").let {
                GuidanceSpec(
                    mode = it.oneOf("mode", listOf("cfg", "none")),
                    scale = it.double("scale"),
                    negativePrompt = it.optString("negative_prompt") ?: "",
                )
            }
            return PipelineSpec(
                imageSize, latentShape, vaeScalingFactor, sampler.predictionType, schedule, sampler, guidance,
            )
        }
    }
}

/**
 * `pipeline.sampler`: everything a sampler needs, with an explicit timestep list; see
 * [makeSampler]. The per-sampler arrays are `null` when the manifest leaves them out.
 */
class SamplerSpec(
    val name: String,
    val predictionType: PredictionType,
    val numTrainTimesteps: Int,
    /** `null` when the timestep list was given explicitly rather than spaced. */
    val timestepSpacing: String?,
    val stepsOffset: Int,
    val timesteps: DoubleArray,
    val initNoiseSigma: Double,
    val setAlphaToOne: Boolean = false,
    val prevTimesteps: IntArray? = null,
    val alphasCumprod: DoubleArray? = null,
    val alphasCumprodPrev: DoubleArray? = null,
    val sigmas: DoubleArray? = null,
) {
    val numInferenceSteps: Int get() = timesteps.size

    companion object {
        val NAMES = listOf("ddim", "euler", "onestep")
        val SPACINGS = listOf("leading", "trailing", "linspace")

        /** Read and check a sampler object (the manifest's, or a golden vector's). */
        fun fromJson(json: JSONObject, where: String = "pipeline.sampler"): SamplerSpec =
            fromJson(JsonFields(json, where))

        internal fun fromJson(json: JsonFields): SamplerSpec {
            val numTrain = json.int("num_train_timesteps")
            val timesteps = json.doubles("timesteps")
            val steps = json.int("num_inference_steps")
            if (timesteps.isEmpty() || steps != timesteps.size) {
                json.fail("${json.path("timesteps")} must hold num_inference_steps ($steps) values; got ${timesteps.size}")
            }
            val ordered = timesteps.all { it.isFinite() && it >= 0 && it <= numTrain - 1 } &&
                (1 until timesteps.size).all { timesteps[it] < timesteps[it - 1] }
            if (!ordered) {
                json.fail("${json.path("timesteps")} must be strictly descending within [0, ${numTrain - 1}]")
            }
            val spec = SamplerSpec(
                name = json.oneOf("name", NAMES),
                predictionType = PredictionType.of(json.oneOf("prediction_type", PredictionType.entries.map { it.jsonName }))!!,
                numTrainTimesteps = numTrain,
                timestepSpacing = if (json.has("timestep_spacing")) json.oneOf("timestep_spacing", SPACINGS) else null,
                stepsOffset = json.optInt("steps_offset") ?: 0,
                timesteps = timesteps,
                initNoiseSigma = json.double("init_noise_sigma"),
                setAlphaToOne = json.optBoolean("set_alpha_to_one") ?: false,
                prevTimesteps = json.optInts("prev_timesteps"),
                alphasCumprod = json.optDoubles("alphas_cumprod"),
                alphasCumprodPrev = json.optDoubles("alphas_cumprod_prev"),
                sigmas = json.optDoubles("sigmas"),
            )
            makeSampler(spec) // checks that the arrays its update rule needs are there
            return spec
        }
    }
}

/** The three networks of one target. */
data class TargetSpec(val textEncoder: ComponentSpec, val unet: ComponentSpec, val vaeDecoder: ComponentSpec) {
    val all: List<ComponentSpec> get() = listOf(textEncoder, unet, vaeDecoder)

    /**
     * True for a UNet exported with the `fold_timesteps` rewrite: its timestep input is
     * `step_index`, the position in the manifest's timestep list, so it runs that list only.
     */
    val foldedTimesteps: Boolean get() = unet.input(TensorRole.TIMESTEP).name == STEP_INDEX_INPUT

    /**
     * The declared shapes against the pipeline: token ids `[b, L]` (b = 1 or the guidance
     * batch B), context `[b, L, D]`; UNet sample and output `[B, C, h, w]`, timestep `[B]`,
     * context `[B, L, D]`; decoder `[1, C, h, w]` to `[1, 3, H, W]`. NHWC tensors in NHWC order.
     */
    internal fun checkShapes(pipeline: PipelineSpec, tokenizer: TokenizerConfig) {
        val batch = pipeline.guidance.batch
        val (_, channels, height, width) = pipeline.latentShape
        val length = tokenizer.maxLength

        val ids = textEncoder.input(TensorRole.TOKEN_IDS)
        val encoderBatch = ids.shape.firstOrNull()
        if (encoderBatch != 1 && encoderBatch != batch) {
            throw ShapeMismatchException(ids.where, "[1, $length] or [$batch, $length]", "${ids.shape}")
        }
        ids.expect(listOf(encoderBatch, length))
        val context = textEncoder.output(TensorRole.TOKEN_STATES)
        val dim = context.shape.getOrNull(2) ?: 0
        context.expect(listOf(encoderBatch, length, dim))

        unet.input(TensorRole.IMAGE).expectImage(batch, channels, height, width)
        unet.input(TensorRole.TIMESTEP).expect(listOf(batch))
        unet.input(TensorRole.TOKEN_STATES).expect(listOf(batch, length, dim))
        unet.output(TensorRole.IMAGE).expectImage(batch, channels, height, width)

        vaeDecoder.input(TensorRole.IMAGE).expectImage(1, channels, height, width)
        vaeDecoder.output(TensorRole.IMAGE).expectImage(1, 3, pipeline.imageSize, pipeline.imageSize)
    }

    companion object {
        internal fun fromJson(target: String, json: JsonFields) = TargetSpec(
            textEncoder = ComponentSpec.fromJson(json.obj("text_encoder"), "components.$target.text_encoder"),
            unet = ComponentSpec.fromJson(json.obj("unet"), "components.$target.unet"),
            vaeDecoder = ComponentSpec.fromJson(json.obj("vae_decoder"), "components.$target.vae_decoder"),
        )
    }
}

/** The name of a folded UNet's timestep input (see [TargetSpec.foldedTimesteps]). */
const val STEP_INDEX_INPUT = "step_index"

/**
 * The value a UNet's timestep input gets at [timestep]: the timestep itself, or for a folded
 * UNet ([TargetSpec.foldedTimesteps]) its index in the manifest's [timesteps].
 */
fun timestepFeed(input: TensorSpec, timestep: Double, timesteps: DoubleArray): Double {
    if (input.name != STEP_INDEX_INPUT) return timestep
    val index = timesteps.indexOfFirst { it == timestep }
    if (index < 0) {
        throw ConfigException(
            "this bundle's UNet has its ${timesteps.size} timesteps folded in (input $STEP_INDEX_INPUT) and " +
                "cannot run timestep $timestep; use the bundle's ${timesteps.size} steps",
        )
    }
    return index.toDouble()
}

/** What a tensor is to the pipeline, told by its layout (the schema's `layout` enum). */
enum class TensorRole(val layouts: Set<String>, val description: String) {
    TOKEN_IDS(setOf("NL"), "token ids (layout NL)"),
    TOKEN_STATES(setOf("NLC"), "text embeddings (layout NLC)"),
    IMAGE(setOf("NCHW", "NHWC"), "latent or image (layout NCHW or NHWC)"),
    TIMESTEP(setOf("N"), "timestep (layout N)"),
}

/** One network of a target: its file and its inputs and outputs. */
data class ComponentSpec(
    /** Where it sits in the manifest, e.g. `components.tflite.unet`. */
    val where: String,
    val file: String,
    val sha256: String,
    val sizeBytes: Long,
    val precision: String,
    val recipe: String,
    /** The TFLite signature key to run; `null` when the model has none named. */
    val signature: String?,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>,
) {
    /** The one input with [role]'s layout. */
    fun input(role: TensorRole): TensorSpec = single(inputs, role, "inputs")

    /** The one output with [role]'s layout. */
    fun output(role: TensorRole): TensorSpec = single(outputs, role, "outputs")

    private fun single(tensors: List<TensorSpec>, role: TensorRole, list: String): TensorSpec {
        val found = tensors.filter { it.layout in role.layouts }
        if (found.size != 1) {
            throw ManifestException(
                "bundle.json: $where.$list must have exactly one ${role.description}; found ${found.size}",
            )
        }
        return found[0]
    }

    companion object {
        internal fun fromJson(json: JsonFields, where: String): ComponentSpec {
            fun tensors(name: String) = json.objects(name).mapIndexed { index, t ->
                TensorSpec(
                    where = "$where.$name[$index] '${t.string("name")}'",
                    name = t.string("name"),
                    shape = t.ints("shape").toList().also { shape ->
                        if (shape.isEmpty() || shape.any { it < 1 }) {
                            throw ShapeMismatchException("bundle.json: $where.$name[$index]", "positive dimensions", "$shape")
                        }
                    },
                    dtype = t.oneOf("dtype", TensorSpec.DTYPES),
                    layout = t.oneOf("layout", TensorSpec.LAYOUTS),
                )
            }.also { if (it.isEmpty()) json.fail("$where.$name must list at least one tensor") }
            return ComponentSpec(
                where = where,
                file = BundleManifest.checkPath(json.string("file"), "$where.file"),
                sha256 = BundleManifest.sha256(json, "sha256"),
                sizeBytes = json.long("size_bytes"),
                precision = json.string("precision"),
                recipe = json.string("recipe"),
                signature = json.optString("signature"),
                inputs = tensors("inputs"),
                outputs = tensors("outputs"),
            )
        }
    }
}

/** One input or output of a network, as the runtime names and shapes it. */
data class TensorSpec(
    val where: String,
    val name: String,
    val shape: List<Int>,
    val dtype: String,
    val layout: String,
) {
    internal fun expect(expected: List<Int?>) {
        if (shape != expected) throw ShapeMismatchException("bundle.json: $where", "$expected", "$shape")
    }

    internal fun expectImage(batch: Int, channels: Int, height: Int, width: Int) = expect(
        if (layout == "NHWC") listOf(batch, height, width, channels) else listOf(batch, channels, height, width),
    )

    companion object {
        val DTYPES = listOf("float32", "float16", "int32", "int64", "int8", "uint8")
        val LAYOUTS = listOf("NCHW", "NHWC", "NL", "NLC", "N")
    }
}
