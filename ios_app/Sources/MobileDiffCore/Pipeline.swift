import Foundation

/// Prompt -> tokens -> context -> sampler loop -> decoder -> RGBA pixels, over any
/// `ModelRunner`; the same loop as mobilediff_export/pipeline.py, step for step:
///
/// ```
/// prompt ──tokenizer──> ids (B, 77) ──text_encoder──> context (B, 77, D)
///    [guidance "cfg": B = 2, negative prompt first, then the prompt]
/// latents = randn(seed) * init_noise_sigma                              (1, 4, h, w)
/// for i, t in enumerate(sampler.timesteps):
///     x   = sampler.scale_model_input(latents, i)
///     out = unet(x, t, context)                [cfg: uncond + g * (cond - uncond)]
///                            [a UNet with input `step_index` (fold_timesteps) gets i, not t]
///     latents = sampler.step(out, i, latents)
/// image = vae_decoder(latents / vae_scaling_factor) -> round(clamp(x / 2 + 0.5) * 255)
/// ```
/// Float32 where Python uses float32 (latents, guidance, decoder scaling, pixels), the
/// sampler in Double, so a replay of Python's tensors gives Python's pixels. The same loop
/// as mobilediff_export/runtime/pipeline.py runs on a bundle: a text encoder exported at
/// batch 1 is called once per prompt, and the starting noise is torch's for the seed.
public final class Pipeline {
    public let manifest: BundleManifest
    public let tokenizer: CLIPTokenizer
    public let runner: ModelRunner
    public let io: NetworkIO

    public init(manifest: BundleManifest, target: String = "coreml", tokenizer: CLIPTokenizer, runner: ModelRunner) throws {
        guard let networks = manifest.components[target] else {
            throw MobileDiffError.invalidManifest("the bundle has no \(target) models")
        }
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.runner = runner
        io = try NetworkIO(networks, pipeline: manifest.pipeline, tokenizer: manifest.tokenizer)
    }

    public convenience init(bundle: MobileDiffBundle, runner: ModelRunner) throws {
        try self.init(manifest: bundle.manifest, target: bundle.target, tokenizer: bundle.makeTokenizer(), runner: runner)
    }

    public var usesGuidance: Bool { manifest.pipeline.guidance.mode == .cfg }

    /// Loads the three networks one after the other; milliseconds per network.
    public func load() throws -> [ComponentRole: Double] {
        var times: [ComponentRole: Double] = [:]
        for component in ComponentRole.allCases {
            times[component] = try measureMs { try runner.load(component) }.ms
        }
        return times
    }

    /// The manifest's sampler, or the same sampler recomputed for `steps` steps.
    public func makeSampler(steps: Int? = nil) throws -> any Sampler {
        let spec = manifest.pipeline.sampler
        if io.unetTakesStepIndex, let steps, steps != spec.numInferenceSteps {
            throw MobileDiffError.config(
                "this bundle's UNet has its \(spec.numInferenceSteps) timesteps built in (the fold_timesteps "
                    + "rewrite); it runs \(spec.numInferenceSteps) steps, not \(steps)")
        }
        return try MobileDiffCore.makeSampler(steps.map { try spec.withSteps($0, schedule: manifest.pipeline.noiseSchedule) } ?? spec)
    }

    /// Makes one image.
    ///
    /// - Parameters:
    ///   - guidanceScale: overrides the manifest's scale; above 1 for a cfg bundle (its UNet
    ///     batch is fixed at export), at most 1 for one without guidance.
    ///   - latents: unit Gaussian starting latents (`[1, C, h, w]` flattened) instead of
    ///     `TorchGaussianNoise(seed:)`'s; scaled by the sampler's `initNoiseSigma`.
    ///   - onStep: called after each sampler step with (steps done, steps).
    public func generate(
        prompt: String, negativePrompt: String? = nil, steps: Int? = nil, seed: UInt64 = 0,
        guidanceScale: Double? = nil, latents: [Float]? = nil, onStep: ((Int, Int) -> Void)? = nil
    ) throws -> GenerationResult {
        let clock = ContinuousClock.now
        var timings = StageTimings()
        let guidance = manifest.pipeline.guidance
        let scale = guidanceScale ?? guidance.scale
        if usesGuidance, scale <= 1 {
            throw MobileDiffError.config(
                "this bundle's UNet runs at batch 2 for classifier-free guidance; give a scale above 1, "
                    + "or export again with --guidance 1")
        }
        if !usesGuidance, scale > 1 {
            throw MobileDiffError.config(
                "this bundle was exported without classifier-free guidance (UNet batch 1); "
                    + "export it again with --guidance to use a scale above 1")
        }
        let sampler = try makeSampler(steps: steps)

        let latentShape = manifest.pipeline.latentShape
        let noise = latents ?? initialNoise(seed: seed)
        guard noise.count == Tensor.count(latentShape) else {
            throw MobileDiffError.shapeMismatch(what: "latents", expected: latentShape, actual: [noise.count])
        }
        let sigma = Float(sampler.initNoiseSigma)
        let start = Tensor(unchecked: latentShape, noise.map { $0 * sigma })

        let prompts = usesGuidance ? [negativePrompt ?? guidance.negativePrompt ?? "", prompt] : [prompt]
        let (ids, tokenizeMs) = measureMs { prompts.map { tokenizer($0) } }
        timings.tokenizeMs = tokenizeMs
        let (context, textEncoderMs) = try measureMs { try encodePrompt(ids) }
        timings.textEncoderMs = textEncoderMs

        let final = try denoise(
            context: context, latents: start, sampler: sampler,
            guidanceScale: scale, seed: seed, timings: &timings, onStep: onStep)

        let (decoded, decoderMs) = try measureMs { try decode(final) }
        timings.vaeDecoderMs = decoderMs
        let image = try RGBAImage(decoded: decoded)
        timings.totalMs = measureSince(clock)
        return GenerationResult(image: image, timings: timings)
    }

    /// Unit Gaussian latents for `seed`, as `torch.randn` draws them from a seeded CPU
    /// generator (Python's `Pipeline.initial_noise`).
    public func initialNoise(seed: UInt64) -> [Float] {
        var generator = TorchGaussianNoise(seed: seed)
        return generator.randn(Tensor.count(manifest.pipeline.latentShape))
    }

    /// Token ids (one row per prompt) -> context `[prompts, L, D]`, in one call when the
    /// text encoder takes the whole batch, else one call per prompt.
    public func encodePrompt(_ ids: [[Int]]) throws -> Tensor {
        let input = io.textEncoderInput.shape
        let rows = input[0]
        guard rows == ids.count || rows == 1 else {
            throw MobileDiffError.shapeMismatch(what: "text encoder input", expected: [ids.count] + input.dropFirst(), actual: input)
        }
        var parts: [Tensor] = []
        for chunk in stride(from: 0, to: ids.count, by: rows).map({ Array(ids[$0 ..< $0 + rows]) }) {
            let flat = chunk.flatMap { $0.map { Int32($0) } }
            let context = try runner.textEncoder(inputIds: flat, shape: input)
            try context.checkShape(io.textEncoderOutput.shape, "text encoder output")
            parts.append(context)
        }
        return try Tensor.concatenate(parts)
    }

    /// The sampler loop; `context` is `[2, L, D]` (negative, then prompt) under guidance.
    public func denoise(
        context: Tensor, latents: Tensor, sampler: any Sampler, guidanceScale: Double, seed: UInt64,
        timings: inout StageTimings, onStep: ((Int, Int) -> Void)? = nil
    ) throws -> Tensor {
        let batch = usesGuidance ? 2 : 1
        try context.checkShape(io.unetContext.shape, "context")
        try latents.checkShape(manifest.pipeline.latentShape, "latents")
        var renoise = TorchGaussianNoise(seed: seed &+ 1)
        var x = latents.data
        let scale = Float(guidanceScale)
        timings.unetMs = []
        timings.samplerMs = 0
        for (i, t) in sampler.timesteps.enumerated() {
            try Task.checkCancellation()
            var clock = ContinuousClock.now
            let scaled = try sampler.scaleModelInput(x, i: i)
            let sample = Tensor(unchecked: io.unetSample.shape, [[Float]](repeating: scaled, count: batch).flatMap { $0 })
            let fed = Float(io.unetTakesStepIndex ? Double(i) : t)
            let timestep = Tensor(unchecked: [batch], [Float](repeating: fed, count: batch))
            timings.samplerMs += measureSince(clock)

            let (out, unetMs) = try measureMs { try runner.unet(sample: sample, timestep: timestep, context: context) }
            timings.unetMs.append(unetMs)
            try out.checkShape(io.unetOutput.shape, "UNet output")

            clock = ContinuousClock.now
            var guided = out.data
            if usesGuidance {
                let half = x.count
                guided = (0 ..< half).map { k in
                    let (uncond, cond) = (out.data[k], out.data[half + k])
                    return uncond + scale * (cond - uncond)
                }
            }
            let noise = sampler.needsNoise && i + 1 < sampler.timesteps.count ? renoise.randn(x.count) : nil
            x = try sampler.step(modelOutput: guided, i: i, sample: x, noise: noise)
            timings.samplerMs += measureSince(clock)
            onStep?(i + 1, sampler.timesteps.count)
        }
        return Tensor(unchecked: latents.shape, x)
    }

    /// Latents -> decoder output `[1, 3, H, W]` in [-1, 1] (unclamped).
    public func decode(_ latents: Tensor) throws -> Tensor {
        let factor = Float(manifest.pipeline.vaeScalingFactor)
        let input = Tensor(unchecked: io.decoderInput.shape, latents.data.map { $0 / factor })
        let decoded = try runner.vaeDecoder(latents: input)
        try decoded.checkShape(io.decoderOutput.shape, "VAE decoder output")
        return decoded
    }
}

public struct GenerationResult: Sendable {
    public var image: RGBAImage
    public var timings: StageTimings
}

/// Milliseconds per stage of one image; a benchmark run's `runs[]` entry.
public struct StageTimings: Codable, Equatable, Sendable {
    public var tokenizeMs = 0.0
    public var textEncoderMs = 0.0
    /// One per UNet call (step).
    public var unetMs: [Double] = []
    /// Everything around the UNet in the loop: input scaling, guidance, update rule, noise.
    public var samplerMs = 0.0
    public var vaeDecoderMs = 0.0
    /// Prompt to pixels, including the pixel conversion.
    public var totalMs = 0.0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case tokenizeMs = "tokenize_ms"
        case textEncoderMs = "text_encoder_ms"
        case unetMs = "unet_ms"
        case samplerMs = "sampler_ms"
        case vaeDecoderMs = "vae_decoder_ms"
        case totalMs = "total_ms"
    }
}

/// The tensors of one target's three networks, each bound to its role by its layout
/// (NL ids, NLC context, NCHW latents and images, N timestep) and checked against the
/// pipeline: batch 2 under classifier-free guidance, the latent shape, 77 tokens, the
/// image size.
public struct NetworkIO: Sendable {
    public typealias Spec = BundleManifest.TensorSpec
    public let textEncoderInput: Spec, textEncoderOutput: Spec
    public let unetSample: Spec, unetTimestep: Spec, unetContext: Spec, unetOutput: Spec
    public let decoderInput: Spec, decoderOutput: Spec

    public init(_ networks: BundleManifest.Target, pipeline: BundleManifest.Pipeline, tokenizer: BundleManifest.Tokenizer) throws {
        func find(_ tensors: [Spec], _ layout: Spec.Layout, _ what: String) throws -> Spec {
            guard let spec = tensors.first(where: { $0.layout == layout }) else {
                throw MobileDiffError.invalidManifest("\(what) needs a tensor with layout \(layout.rawValue)")
            }
            return spec
        }
        func expect(_ spec: Spec, _ shape: [Int], _ what: String) throws {
            if spec.shape != shape {
                throw MobileDiffError.shapeMismatch(what: "\(what) \(spec.name.debugDescription) in the manifest", expected: shape, actual: spec.shape)
            }
        }
        let te = networks.textEncoder, unet = networks.unet, dec = networks.vaeDecoder
        textEncoderInput = try find(te.inputs, .nl, "the text encoder's input")
        textEncoderOutput = try find(te.outputs, .nlc, "the text encoder's output")
        unetSample = try find(unet.inputs, .nchw, "the UNet's sample input")
        unetTimestep = try find(unet.inputs, .n, "the UNet's timestep input")
        unetContext = try find(unet.inputs, .nlc, "the UNet's context input")
        unetOutput = try find(unet.outputs, .nchw, "the UNet's output")
        decoderInput = try find(dec.inputs, .nchw, "the VAE decoder's input")
        decoderOutput = try find(dec.outputs, .nchw, "the VAE decoder's output")

        let batch = pipeline.guidance.mode == .cfg ? 2 : 1
        let latent = pipeline.latentShape
        let tokens = tokenizer.maxLength
        let textBatch = textEncoderInput.shape.first ?? 0
        guard textBatch == 1 || textBatch == batch else {
            throw MobileDiffError.shapeMismatch(
                what: "text encoder input \(textEncoderInput.name.debugDescription) in the manifest",
                expected: [batch, tokens], actual: textEncoderInput.shape)
        }
        try expect(textEncoderInput, [textBatch, tokens], "text encoder input")
        let width = textEncoderOutput.shape.last ?? 0
        try expect(textEncoderOutput, [textBatch, tokens, width], "text encoder output")
        try expect(unetSample, [batch] + latent.dropFirst(), "UNet sample")
        try expect(unetTimestep, [batch], "UNet timestep")
        try expect(unetContext, [batch, tokens, width], "UNet context")
        try expect(unetOutput, unetSample.shape, "UNet output")
        try expect(decoderInput, latent, "VAE decoder input")
        try expect(decoderOutput, [1, 3, pipeline.imageSize, pipeline.imageSize], "VAE decoder output")
    }

    /// A UNet exported with the fold_timesteps rewrite takes `step_index`, the position of
    /// the step in the manifest's timestep list, instead of the timestep.
    public var unetTakesStepIndex: Bool { unetTimestep.name == "step_index" }
}

// MARK: timing

/// Runs `body` and returns its result and its duration in milliseconds.
func measureMs<T>(_ body: () throws -> T) rethrows -> (value: T, ms: Double) {
    let start = ContinuousClock.now
    let value = try body()
    return (value, measureSince(start))
}

func measureSince(_ start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) * 1e-15
}
