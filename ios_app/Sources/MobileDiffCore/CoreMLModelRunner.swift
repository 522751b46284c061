#if canImport(CoreML)
import CoreML
import Foundation

extension ComputeUnits {
    public var mlComputeUnits: MLComputeUnits {
        switch self {
        case .cpuOnly: return .cpuOnly
        case .cpuAndGPU: return .cpuAndGPU
        case .cpuAndNeuralEngine: return .cpuAndNeuralEngine
        case .all: return .all
        }
    }
}

/// Runs a bundle's `coreml` networks with Core ML. Input and output names, shapes and
/// dtypes come from the manifest (never from the model files' names); each .mlpackage is
/// compiled once and the compiled model cached under Caches/ by its sha256, so only the
/// first load pays for compilation.
///
/// Not built or run on Linux (no Core ML there): see ios_app/README.md.
public final class CoreMLModelRunner: ModelRunner {
    public let bundle: MobileDiffBundle
    public let computeUnits: ComputeUnits
    private let io: NetworkIO
    private var models: [ComponentRole: MLModel] = [:]

    public init(bundle: MobileDiffBundle, computeUnits: ComputeUnits = .all) throws {
        guard bundle.target == "coreml" else {
            throw MobileDiffError.config("CoreMLModelRunner runs a bundle opened for target coreml, not \(bundle.target)")
        }
        self.bundle = bundle
        self.computeUnits = computeUnits
        io = try NetworkIO(bundle.components, pipeline: bundle.manifest.pipeline, tokenizer: bundle.manifest.tokenizer)
    }

    public func load(_ component: ComponentRole) throws {
        if models[component] != nil { return }
        let spec = bundle.components[component]
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits.mlComputeUnits
        do {
            let compiled = try compiledModel(bundle.resolve(spec.file), sha256: spec.sha256)
            models[component] = try MLModel(contentsOf: compiled, configuration: configuration)
        } catch let error as MobileDiffError {
            throw error
        } catch {
            throw MobileDiffError.runner("cannot load \(spec.file): \(error.localizedDescription)")
        }
    }

    public func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor {
        let input = io.textEncoderInput
        let ids: MLMultiArray
        switch input.dtype {
        case .int32, .int64: ids = MLMultiArray(MLShapedArray<Int32>(scalars: inputIds, shape: shape))
        default: ids = try multiArray(inputIds.map(Float.init), shape: shape, dtype: input.dtype)
        }
        return try predict(.textEncoder, [input.name: ids], output: io.textEncoderOutput)
    }

    public func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor {
        try predict(.unet, [
            io.unetSample.name: multiArray(sample.data, shape: sample.shape, dtype: io.unetSample.dtype),
            io.unetTimestep.name: multiArray(timestep.data, shape: timestep.shape, dtype: io.unetTimestep.dtype),
            io.unetContext.name: multiArray(context.data, shape: context.shape, dtype: io.unetContext.dtype),
        ], output: io.unetOutput)
    }

    public func vaeDecoder(latents: Tensor) throws -> Tensor {
        try predict(.vaeDecoder, [io.decoderInput.name: multiArray(latents.data, shape: latents.shape, dtype: io.decoderInput.dtype)],
                    output: io.decoderOutput)
    }

    // MARK: helpers

    private func predict(_ component: ComponentRole, _ inputs: [String: MLMultiArray], output: NetworkIO.Spec) throws -> Tensor {
        try load(component)
        let features = try MLDictionaryFeatureProvider(dictionary: inputs.mapValues { MLFeatureValue(multiArray: $0) })
        let result: MLFeatureProvider
        do {
            result = try models[component]!.prediction(from: features)
        } catch {
            throw MobileDiffError.runner("\(component.rawValue) prediction failed: \(error.localizedDescription)")
        }
        guard let array = result.featureValue(for: output.name)?.multiArrayValue else {
            throw MobileDiffError.runner(
                "\(component.rawValue) has no output \(output.name.debugDescription) (the manifest names it); "
                    + "it has \(result.featureNames.sorted())")
        }
        let values = MLShapedArray<Float>(converting: array)
        return try Tensor(shape: values.shape, data: values.scalars)
    }

    /// A float array in the manifest's dtype (float32, or float16 converted by Core ML).
    private func multiArray(_ data: [Float], shape: [Int], dtype: NetworkIO.Spec.DType) throws -> MLMultiArray {
        let float32 = MLMultiArray(MLShapedArray<Float>(scalars: data, shape: shape))
        switch dtype {
        case .float32: return float32
        case .float16: return MLMultiArray(concatenating: [float32], axis: 0, dataType: .float16)
        case .int32, .int64: return MLMultiArray(MLShapedArray<Int32>(scalars: data.map { Int32($0) }, shape: shape))
        case .int8, .uint8:
            throw MobileDiffError.runner("Core ML takes no \(dtype.rawValue) inputs; re-export the bundle")
        }
    }

    /// A compiled .mlmodelc for `source`: itself if already compiled, else from the cache,
    /// compiling into it the first time.
    private func compiledModel(_ source: URL, sha256: String) throws -> URL {
        if source.pathExtension == "mlmodelc" { return source }
        let fm = FileManager.default
        let cache = fm.urls(for: .cachesDirectory, in: .userDomainMask)[0].appendingPathComponent("mobilediff-compiled")
        let cached = cache.appendingPathComponent("\(sha256).mlmodelc")
        if fm.fileExists(atPath: cached.path) { return cached }
        let compiled = try MLModel.compileModel(at: source)
        try fm.createDirectory(at: cache, withIntermediateDirectories: true)
        try? fm.removeItem(at: cached)
        try fm.moveItem(at: compiled, to: cached)
        return cached
    }
}
#endif
