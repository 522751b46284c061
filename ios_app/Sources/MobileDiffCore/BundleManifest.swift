import Foundation

/// `bundle.json`, the contract between the exporter and the apps
/// (mobilediff_export/schemas/bundle.schema.json). Apps read only this and the files it
/// names; nothing is guessed from file names.
///
/// `decode(_:)` parses and validates what can be checked without the files; opening a
/// bundle folder (`MobileDiffBundle`) checks the files too.
public struct BundleManifest: Codable, Equatable, Sendable {
    public static let supportedSchemaVersion = 1

    public var schemaVersion: Int
    public var tool: Tool
    public var model: Model
    public var pipeline: Pipeline
    public var tokenizer: Tokenizer
    /// Per target (`tflite`, `coreml`, `onnx`), the three networks.
    public var components: [String: Target]
    /// Every file except bundle.json, by relative path.
    public var files: [String: FileEntry]
    public var estimates: Estimates?
    public var reports: Reports?

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case tool, model, pipeline, tokenizer, components, files, estimates, reports
    }

    public struct Tool: Codable, Equatable, Sendable {
        public var name: String
        public var version: String
        public var created: String?
    }

    public struct Model: Codable, Equatable, Sendable {
        public var name: String
        public var source: String
        public var sourceSha256: String?

        enum CodingKeys: String, CodingKey {
            case name, source
            case sourceSha256 = "source_sha256"
        }
    }

    public struct Pipeline: Codable, Equatable, Sendable {
        public var imageSize: Int
        /// `[1, C, h, w]`: one latent.
        public var latentShape: [Int]
        public var vaeScalingFactor: Double
        public var predictionType: PredictionType
        public var noiseSchedule: NoiseSchedule
        public var sampler: SamplerSpec
        public var guidance: Guidance

        enum CodingKeys: String, CodingKey {
            case imageSize = "image_size"
            case latentShape = "latent_shape"
            case vaeScalingFactor = "vae_scaling_factor"
            case predictionType = "prediction_type"
            case noiseSchedule = "noise_schedule"
            case sampler, guidance
        }
    }

    public struct Guidance: Codable, Equatable, Sendable {
        public enum Mode: String, Codable, Sendable {
            /// The UNet runs at batch 2, [unconditional, conditional];
            /// `out = uncond + scale * (cond - uncond)`.
            case cfg
            /// Batch 1 (distilled models).
            case none
        }

        public var mode: Mode
        public var scale: Double
        public var negativePrompt: String?

        enum CodingKeys: String, CodingKey {
            case mode, scale
            case negativePrompt = "negative_prompt"
        }
    }

    public struct Tokenizer: Codable, Equatable, Sendable {
        public var kind: String
        public var vocab: String
        public var merges: String
        public var maxLength: Int
        public var bosTokenId: Int
        public var eosTokenId: Int
        public var padTokenId: Int

        enum CodingKeys: String, CodingKey {
            case kind, vocab, merges
            case maxLength = "max_length"
            case bosTokenId = "bos_token_id"
            case eosTokenId = "eos_token_id"
            case padTokenId = "pad_token_id"
        }

        public var config: TokenizerConfig {
            TokenizerConfig(maxLength: maxLength, bosTokenId: bosTokenId, eosTokenId: eosTokenId, padTokenId: padTokenId)
        }
    }

    public struct Target: Codable, Equatable, Sendable {
        public var textEncoder: Component
        public var unet: Component
        public var vaeDecoder: Component

        enum CodingKeys: String, CodingKey {
            case textEncoder = "text_encoder"
            case unet
            case vaeDecoder = "vae_decoder"
        }

        public subscript(_ role: ComponentRole) -> Component {
            switch role {
            case .textEncoder: return textEncoder
            case .unet: return unet
            case .vaeDecoder: return vaeDecoder
            }
        }
    }

    public struct Component: Codable, Equatable, Sendable {
        /// The model file, or the .mlpackage folder.
        public var file: String
        public var sha256: String
        public var sizeBytes: Int
        public var precision: String
        public var recipe: String
        public var rewrites: [String]?
        public var signature: String?
        public var inputs: [TensorSpec]
        public var outputs: [TensorSpec]
        public var parameters: Int?
        public var flops: Int?
        public var estimatedPeakMemoryBytes: Int?

        enum CodingKeys: String, CodingKey {
            case file, sha256, precision, recipe, rewrites, signature, inputs, outputs, parameters, flops
            case sizeBytes = "size_bytes"
            case estimatedPeakMemoryBytes = "estimated_peak_memory_bytes"
        }
    }

    public struct TensorSpec: Codable, Equatable, Sendable {
        public enum DType: String, Codable, Sendable { case float32, float16, int32, int64, int8, uint8 }
        public enum Layout: String, Codable, Sendable {
            case nchw = "NCHW", nhwc = "NHWC", nl = "NL", nlc = "NLC", n = "N"
        }

        /// The runtime's name (Core ML feature name, TFLite signature key, ONNX input name).
        public var name: String
        public var shape: [Int]
        public var dtype: DType
        public var layout: Layout
    }

    public struct FileEntry: Codable, Equatable, Sendable {
        public var sha256: String
        public var sizeBytes: Int

        enum CodingKeys: String, CodingKey {
            case sha256
            case sizeBytes = "size_bytes"
        }
    }

    public struct Estimates: Codable, Equatable, Sendable {
        public var totalSizeBytes: Int?
        public var peakMemoryBytes: [String: Int]?
        public var imageFlops: Int?

        enum CodingKeys: String, CodingKey {
            case totalSizeBytes = "total_size_bytes"
            case peakMemoryBytes = "peak_memory_bytes"
            case imageFlops = "image_flops"
        }
    }

    public struct Reports: Codable, Equatable, Sendable {
        public var parity: String?
    }
}

/// The three networks, named as in the manifest.
public enum ComponentRole: String, CaseIterable, Codable, Sendable {
    case textEncoder = "text_encoder"
    case unet
    case vaeDecoder = "vae_decoder"
}

// MARK: decoding and validation

extension BundleManifest {
    public static let targets = ["tflite", "coreml", "onnx"]

    /// Parses bundle.json and validates everything that does not need the files: the
    /// schema version (first, so a newer manifest gets a version error, not a field
    /// error), required fields, paths, hashes, the sampler and the pipeline's shapes.
    public static func decode(_ data: Data) throws -> BundleManifest {
        struct Version: Decodable {
            let schemaVersion: Int?
            enum CodingKeys: String, CodingKey { case schemaVersion = "schema_version" }
        }
        let version: Version
        do {
            version = try JSONDecoder().decode(Version.self, from: data)
        } catch let error as DecodingError {
            throw MobileDiffError.invalidManifest("bundle.json is not a JSON object with an integer schema_version (\(describe(error)))")
        }
        guard let schemaVersion = version.schemaVersion else {
            throw MobileDiffError.invalidManifest("bundle.json lacks schema_version")
        }
        guard schemaVersion == supportedSchemaVersion else {
            throw MobileDiffError.unsupportedSchemaVersion(schemaVersion)
        }
        let manifest: BundleManifest
        do {
            manifest = try JSONDecoder().decode(BundleManifest.self, from: data)
        } catch let error as DecodingError {
            throw MobileDiffError.invalidManifest(describe(error))
        }
        try manifest.validate()
        return manifest
    }

    /// The checks JSON Schema would do past the types, and the cross-field ones it cannot.
    public func validate() throws {
        func fail(_ message: String) -> MobileDiffError { .invalidManifest(message) }
        guard tool.name == "mobilediff" else { throw fail("tool.name must be \"mobilediff\"; got \(tool.name.debugDescription)") }
        if let hash = model.sourceSha256, !isSHA256(hash) {
            throw fail("model.source_sha256 must be 64 lowercase hex digits or null")
        }

        let p = pipeline
        guard p.imageSize >= 8 else { throw fail("pipeline.image_size must be at least 8; got \(p.imageSize)") }
        guard p.latentShape.count == 4, p.latentShape[0] == 1, p.latentShape.allSatisfy({ $0 >= 1 }) else {
            throw fail("pipeline.latent_shape must be [1, C, h, w] with positive sizes; got \(p.latentShape)")
        }
        guard p.vaeScalingFactor > 0, p.vaeScalingFactor.isFinite else {
            throw fail("pipeline.vae_scaling_factor must be positive; got \(p.vaeScalingFactor)")
        }
        guard p.sampler.predictionType == p.predictionType else {
            throw fail("pipeline.sampler.prediction_type \(p.sampler.predictionType.rawValue) differs from "
                + "pipeline.prediction_type \(p.predictionType.rawValue)")
        }
        guard p.sampler.numTrainTimesteps == p.noiseSchedule.numTrainTimesteps else {
            throw fail("pipeline.sampler.num_train_timesteps \(p.sampler.numTrainTimesteps) differs from "
                + "pipeline.noise_schedule.num_train_timesteps \(p.noiseSchedule.numTrainTimesteps)")
        }
        do {
            _ = try makeSampler(p.sampler)
        } catch let MobileDiffError.config(message) {
            throw fail("pipeline.sampler: \(message)")
        }
        guard p.guidance.scale.isFinite else { throw fail("pipeline.guidance.scale must be a number") }

        guard tokenizer.kind == "clip-bpe" else {
            throw fail("tokenizer.kind must be \"clip-bpe\"; got \(tokenizer.kind.debugDescription)")
        }
        guard tokenizer.maxLength >= 2 else { throw fail("tokenizer.max_length must be at least 2") }
        for (field, id) in [("bos", tokenizer.bosTokenId), ("eos", tokenizer.eosTokenId), ("pad", tokenizer.padTokenId)]
            where id < 0 {
            throw fail("tokenizer.\(field)_token_id must be >= 0; got \(id)")
        }
        try BundleManifest.checkPath(tokenizer.vocab, "tokenizer.vocab")
        try BundleManifest.checkPath(tokenizer.merges, "tokenizer.merges")
        if let parity = reports?.parity { try BundleManifest.checkPath(parity, "reports.parity") }

        guard !components.isEmpty else { throw fail("components must name at least one target") }
        for (target, networks) in components.sorted(by: { $0.key < $1.key }) {
            guard BundleManifest.targets.contains(target) else {
                throw fail("components.\(target) is not a target (\(BundleManifest.targets.joined(separator: ", ")))")
            }
            for role in ComponentRole.allCases {
                let component = networks[role]
                let at = "components.\(target).\(role.rawValue)"
                try BundleManifest.checkPath(component.file, "\(at).file")
                guard isSHA256(component.sha256) else { throw fail("\(at).sha256 must be 64 lowercase hex digits") }
                guard component.sizeBytes >= 0 else { throw fail("\(at).size_bytes must be >= 0") }
                guard !component.inputs.isEmpty, !component.outputs.isEmpty else {
                    throw fail("\(at) must list its inputs and outputs")
                }
                for tensor in component.inputs + component.outputs
                    where tensor.shape.isEmpty || !tensor.shape.allSatisfy({ $0 >= 1 }) {
                    throw fail("\(at): tensor \(tensor.name.debugDescription) has shape \(tensor.shape); sizes must be >= 1")
                }
            }
        }
        for (path, entry) in files {
            try BundleManifest.checkPath(path, "files")
            guard isSHA256(entry.sha256), entry.sizeBytes >= 0 else {
                throw fail("files[\(path.debugDescription)] needs a sha256 of 64 lowercase hex digits and size_bytes >= 0")
            }
        }
    }

    /// A manifest path: relative, '/'-separated, no '..' segment, not absolute, no '\'.
    static func checkPath(_ path: String, _ field: String) throws {
        let segments = path.split(separator: "/", omittingEmptySubsequences: false)
        if path.isEmpty || path.hasPrefix("/") || path.contains("\\") || segments.contains("..") {
            throw MobileDiffError.pathOutsideBundle("\(path) (\(field))")
        }
    }
}

func isSHA256(_ text: String) -> Bool {
    text.utf8.count == 64 && text.utf8.allSatisfy { (0x30 ... 0x39).contains($0) || (0x61 ... 0x66).contains($0) }
}

/// A decoding error as one line: where in bundle.json, and what.
func describe(_ error: DecodingError) -> String {
    func path(_ keys: [CodingKey]) -> String {
        let parts = keys.map { key in key.intValue.map { "[\($0)]" } ?? ".\(key.stringValue)" }
        let joined = parts.joined()
        return joined.hasPrefix(".") ? String(joined.dropFirst()) : joined
    }
    switch error {
    case let .keyNotFound(key, context):
        let at = path(context.codingPath + [key])
        return "missing field \(at)"
    case let .typeMismatch(_, context), let .valueNotFound(_, context):
        return "\(path(context.codingPath)): \(context.debugDescription)"
    case let .dataCorrupted(context):
        let at = path(context.codingPath)
        return at.isEmpty ? "not valid JSON: \(context.debugDescription)" : "\(at): \(context.debugDescription)"
    @unknown default:
        return "\(error)"
    }
}
