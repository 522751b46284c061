import Foundation

// The samplers' update rules: DDIM, Euler and one-step (distilled) sampling, mirroring
// mobilediff_export/schedulers.py name for name.
//
// - A sampler is built from the manifest's `sampler` object (`SamplerSpec`), which holds
//   the explicit timestep list and the per-step numbers the update rule needs
//   (`alphas_cumprod` for DDIM and one-step, `sigmas` for Euler). The app never
//   recomputes the schedule for the bundle's own step count.
// - `SamplerSpec.withSteps` recomputes those numbers for another step count from the
//   manifest's noise schedule, exactly as the Python constructors do (float32 schedule,
//   diffusers' spacings), for the app's "steps" setting.
// - There is no hidden step counter: `scaleModelInput(_:i:)` and
//   `step(modelOutput:i:sample:noise:)` take `i`, the index into `timesteps`.
// - The update rules run in Double, element by element, in the same order of operations
//   as numpy's float64 code, and return the sample's own float type.
//
// A typical loop:
//
//     let sampler = try makeSampler(spec)
//     var x = noise.map { $0 * Float(sampler.initNoiseSigma) }
//     for (i, t) in sampler.timesteps.enumerated() {
//         let eps = unet(try sampler.scaleModelInput(x, i: i), t, context)
//         x = try sampler.step(modelOutput: eps, i: i, sample: x, noise: freshNoise())
//     }

public enum PredictionType: String, Codable, Sendable {
    case epsilon
    case vPrediction = "v_prediction"
}

// MARK: update rules (one element; Double like numpy's float64)

/// The clean sample x0 implied by the model output at a timestep with `alphaCumprod`:
/// `x_t = sqrt(a) x0 + sqrt(1 - a) eps`; a v-prediction model predicts
/// `v = sqrt(a) eps - sqrt(1 - a) x0`.
public func predictX0(modelOutput out: Double, sample x: Double, alphaCumprod: Double, predictionType: PredictionType) -> Double {
    let sqrtA = alphaCumprod.squareRoot()
    let sqrtB = (1.0 - alphaCumprod).squareRoot()
    switch predictionType {
    case .epsilon: return (x - sqrtB * out) / sqrtA
    case .vPrediction: return sqrtA * x - sqrtB * out
    }
}

/// One deterministic DDIM step (eta = 0, no clipping) from `alphaCumprod` to `alphaCumprodPrev`.
public func ddimStep(
    modelOutput out: Double, sample x: Double, alphaCumprod: Double, alphaCumprodPrev: Double,
    predictionType: PredictionType
) -> Double {
    let sqrtA = alphaCumprod.squareRoot()
    let sqrtB = (1.0 - alphaCumprod).squareRoot()
    let x0: Double
    let eps: Double
    switch predictionType {
    case .epsilon:
        x0 = (x - sqrtB * out) / sqrtA
        eps = out
    case .vPrediction:
        x0 = sqrtA * x - sqrtB * out
        eps = sqrtA * out + sqrtB * x
    }
    return alphaCumprodPrev.squareRoot() * x0 + (1.0 - alphaCumprodPrev).squareRoot() * eps
}

/// One Euler step of the probability-flow ODE in sigma space, from `sigma` to `sigmaNext`
/// (the sample lives in the frame `x = x0 + sigma eps`).
public func eulerStep(
    modelOutput out: Double, sample x: Double, sigma: Double, sigmaNext: Double, predictionType: PredictionType
) -> Double {
    let x0: Double
    switch predictionType {
    case .epsilon: x0 = x - sigma * out
    case .vPrediction: x0 = out * (-sigma / (sigma * sigma + 1.0).squareRoot()) + x / (sigma * sigma + 1.0)
    }
    let derivative = (x - x0) / sigma
    return x + derivative * (sigmaNext - sigma)
}

// MARK: samplers

/// An explicit timestep list and an update rule indexed by step.
public protocol Sampler: Sendable {
    var name: String { get }
    var predictionType: PredictionType { get }
    /// What the UNet is fed, one per step.
    var timesteps: [Double] { get }
    /// Scale the unit Gaussian starting noise by this.
    var initNoiseSigma: Double { get }
    /// `step` takes fresh unit Gaussian noise before the last step.
    var needsNoise: Bool { get }
    /// The factor the sample is multiplied by before the UNet sees it at step `i`.
    func modelInputScale(_ i: Int) throws -> Double
    /// What the UNet is fed at step `i`.
    func scaleModelInput<T: BinaryFloatingPoint>(_ sample: [T], i: Int) throws -> [T]
    /// The sample after step `i`.
    func step<T: BinaryFloatingPoint>(modelOutput: [T], i: Int, sample: [T], noise: [T]?) throws -> [T]
}

extension Sampler {
    public var needsNoise: Bool { false }

    public func modelInputScale(_ i: Int) throws -> Double {
        try checkIndex(i)
        return 1.0
    }

    public func scaleModelInput<T: BinaryFloatingPoint>(_ sample: [T], i: Int) throws -> [T] {
        try checkIndex(i)
        return sample
    }

    public func step<T: BinaryFloatingPoint>(modelOutput: [T], i: Int, sample: [T]) throws -> [T] {
        try step(modelOutput: modelOutput, i: i, sample: sample, noise: nil)
    }

    func checkIndex(_ i: Int) throws {
        guard timesteps.indices.contains(i) else {
            throw MobileDiffError.config("step index \(i) is outside 0..\(timesteps.count - 1)")
        }
    }

    func checkPair<T>(_ modelOutput: [T], _ sample: [T]) throws {
        guard modelOutput.count == sample.count else {
            throw MobileDiffError.shapeMismatch(what: "model_output", expected: [sample.count], actual: [modelOutput.count])
        }
    }
}

/// Deterministic DDIM (eta = 0), as diffusers' `DDIMScheduler` with `clip_sample=False`.
/// Step `i` goes from `alphasCumprod[i]` to `alphasCumprodPrev[i]`.
public struct DDIMSampler: Sampler {
    public let name = "ddim"
    public let predictionType: PredictionType
    public let timesteps: [Double]
    public let initNoiseSigma: Double
    public let alphasCumprod: [Double]
    public let alphasCumprodPrev: [Double]

    public init(_ spec: SamplerSpec) throws {
        try spec.check(name: "ddim")
        predictionType = spec.predictionType
        timesteps = spec.timesteps
        initNoiseSigma = spec.initNoiseSigma
        alphasCumprod = try spec.perStep(spec.alphasCumprod, "alphas_cumprod")
        alphasCumprodPrev = try spec.perStep(spec.alphasCumprodPrev, "alphas_cumprod_prev")
        try checkAlphas(alphasCumprod + alphasCumprodPrev)
    }

    /// The sample at the previous timestep; `noise` is ignored (eta = 0).
    public func step<T: BinaryFloatingPoint>(modelOutput: [T], i: Int, sample: [T], noise: [T]?) throws -> [T] {
        try checkIndex(i)
        try checkPair(modelOutput, sample)
        let (a, aPrev) = (alphasCumprod[i], alphasCumprodPrev[i])
        return zip(modelOutput, sample).map { out, x in
            T(ddimStep(modelOutput: Double(out), sample: Double(x), alphaCumprod: a, alphaCumprodPrev: aPrev,
                       predictionType: predictionType))
        }
    }
}

/// Deterministic Euler, as diffusers' `EulerDiscreteScheduler` with its defaults
/// (`s_churn = 0`). `sigmas` has one entry per step plus the final 0.
public struct EulerSampler: Sampler {
    public let name = "euler"
    public let predictionType: PredictionType
    public let timesteps: [Double]
    public let initNoiseSigma: Double
    public let sigmas: [Double]

    public init(_ spec: SamplerSpec) throws {
        try spec.check(name: "euler")
        predictionType = spec.predictionType
        timesteps = spec.timesteps
        initNoiseSigma = spec.initNoiseSigma
        guard let sigmas = spec.sigmas, sigmas.count == spec.timesteps.count + 1 else {
            throw MobileDiffError.invalidManifest(
                "sampler.sigmas must have one entry per timestep plus the final 0 "
                    + "(\(spec.timesteps.count + 1)); got \(spec.sigmas?.count ?? 0)")
        }
        guard sigmas.dropLast().allSatisfy({ $0 > 0 && $0.isFinite }), sigmas.last! >= 0 else {
            throw MobileDiffError.invalidManifest("sampler.sigmas must be positive; got \(sigmas)")
        }
        self.sigmas = sigmas
    }

    /// `1 / sqrt(sigma_i^2 + 1)`: back from the sigma frame to unit variance.
    public func modelInputScale(_ i: Int) throws -> Double {
        try checkIndex(i)
        return 1.0 / (sigmas[i] * sigmas[i] + 1.0).squareRoot()
    }

    public func scaleModelInput<T: BinaryFloatingPoint>(_ sample: [T], i: Int) throws -> [T] {
        try checkIndex(i)
        let divisor = (sigmas[i] * sigmas[i] + 1.0).squareRoot()
        return sample.map { T(Double($0) / divisor) }
    }

    /// The sample at `sigmas[i + 1]`; `noise` is ignored (s_churn = 0).
    public func step<T: BinaryFloatingPoint>(modelOutput: [T], i: Int, sample: [T], noise: [T]?) throws -> [T] {
        try checkIndex(i)
        try checkPair(modelOutput, sample)
        let (sigma, sigmaNext) = (sigmas[i], sigmas[i + 1])
        return zip(modelOutput, sample).map { out, x in
            T(eulerStep(modelOutput: Double(out), sample: Double(x), sigma: sigma, sigmaNext: sigmaNext,
                        predictionType: predictionType))
        }
    }
}

/// Sampling for distilled / DiffusionGAN models: at each timestep the model output becomes
/// a clean prediction x0; after the last one x0 is the result, before it x0 is noised again
/// to the next timestep with the caller's fresh noise,
/// `x_next = sqrt(a_next) x0 + sqrt(1 - a_next) noise`.
public struct OneStepSampler: Sampler {
    public let name = "onestep"
    public let predictionType: PredictionType
    public let timesteps: [Double]
    public let initNoiseSigma: Double
    public let alphasCumprod: [Double]
    public var needsNoise: Bool { true }

    public init(_ spec: SamplerSpec) throws {
        try spec.check(name: "onestep")
        predictionType = spec.predictionType
        timesteps = spec.timesteps
        initNoiseSigma = spec.initNoiseSigma
        alphasCumprod = try spec.perStep(spec.alphasCumprod, "alphas_cumprod")
        try checkAlphas(alphasCumprod)
    }

    /// x0 after the last step; before it, x0 re-noised to the next timestep with `noise`.
    public func step<T: BinaryFloatingPoint>(modelOutput: [T], i: Int, sample: [T], noise: [T]?) throws -> [T] {
        try checkIndex(i)
        try checkPair(modelOutput, sample)
        let a = alphasCumprod[i]
        let x0 = zip(modelOutput, sample).map { out, x in
            predictX0(modelOutput: Double(out), sample: Double(x), alphaCumprod: a, predictionType: predictionType)
        }
        if i == timesteps.count - 1 { return x0.map { T($0) } }
        guard let noise else {
            throw MobileDiffError.config(
                "OneStepSampler.step(\(i)) re-noises to timestep \(timesteps[i + 1]) and needs `noise` "
                    + "(unit Gaussian values shaped like the sample)")
        }
        guard noise.count == sample.count else {
            throw MobileDiffError.shapeMismatch(what: "noise", expected: [sample.count], actual: [noise.count])
        }
        let aNext = alphasCumprod[i + 1]
        return zip(x0, noise).map { x0, z in T(aNext.squareRoot() * x0 + (1.0 - aNext).squareRoot() * Double(z)) }
    }
}

private func checkAlphas(_ alphas: [Double]) throws {
    guard alphas.allSatisfy({ $0 > 0 && $0 <= 1 }) else {
        throw MobileDiffError.invalidManifest("sampler alphas_cumprod values must lie in (0, 1]")
    }
}

/// The sampler the spec names (`make_sampler` in Python, for an already resolved spec).
public func makeSampler(_ spec: SamplerSpec) throws -> any Sampler {
    switch spec.name {
    case "ddim": return try DDIMSampler(spec)
    case "euler": return try EulerSampler(spec)
    case "onestep": return try OneStepSampler(spec)
    default:
        throw MobileDiffError.invalidManifest("sampler.name must be one of ddim, euler, onestep; got \(spec.name.debugDescription)")
    }
}

// MARK: the manifest's sampler object

/// The manifest's `pipeline.sampler`: everything an app needs to run the update rule
/// (Python's `Sampler.to_dict()`).
public struct SamplerSpec: Codable, Equatable, Sendable {
    public var name: String
    public var predictionType: PredictionType
    public var numTrainTimesteps: Int
    /// nil when the timestep list was given explicitly.
    public var timestepSpacing: String?
    public var stepsOffset: Int?
    public var numInferenceSteps: Int
    public var timesteps: [Double]
    public var initNoiseSigma: Double
    public var setAlphaToOne: Bool?
    public var prevTimesteps: [Int]?
    public var alphasCumprod: [Double]?
    public var alphasCumprodPrev: [Double]?
    public var sigmas: [Double]?

    enum CodingKeys: String, CodingKey {
        case name
        case predictionType = "prediction_type"
        case numTrainTimesteps = "num_train_timesteps"
        case timestepSpacing = "timestep_spacing"
        case stepsOffset = "steps_offset"
        case numInferenceSteps = "num_inference_steps"
        case timesteps
        case initNoiseSigma = "init_noise_sigma"
        case setAlphaToOne = "set_alpha_to_one"
        case prevTimesteps = "prev_timesteps"
        case alphasCumprod = "alphas_cumprod"
        case alphasCumprodPrev = "alphas_cumprod_prev"
        case sigmas
    }

    public init(
        name: String, predictionType: PredictionType, numTrainTimesteps: Int, timestepSpacing: String?,
        stepsOffset: Int?, timesteps: [Double], initNoiseSigma: Double, setAlphaToOne: Bool? = nil,
        prevTimesteps: [Int]? = nil, alphasCumprod: [Double]? = nil, alphasCumprodPrev: [Double]? = nil,
        sigmas: [Double]? = nil
    ) {
        self.name = name
        self.predictionType = predictionType
        self.numTrainTimesteps = numTrainTimesteps
        self.timestepSpacing = timestepSpacing
        self.stepsOffset = stepsOffset
        self.numInferenceSteps = timesteps.count
        self.timesteps = timesteps
        self.initNoiseSigma = initNoiseSigma
        self.setAlphaToOne = setAlphaToOne
        self.prevTimesteps = prevTimesteps
        self.alphasCumprod = alphasCumprod
        self.alphasCumprodPrev = alphasCumprodPrev
        self.sigmas = sigmas
    }

    /// The common checks: the name, the step count, a strictly descending list in [0, T - 1].
    func check(name expected: String) throws {
        guard name == expected else {
            throw MobileDiffError.invalidManifest("a \(expected) sampler was built from a \(name) spec")
        }
        guard !timesteps.isEmpty, timesteps.count == numInferenceSteps else {
            throw MobileDiffError.invalidManifest(
                "sampler.timesteps has \(timesteps.count) entries but num_inference_steps is \(numInferenceSteps)")
        }
        try checkTimesteps(timesteps, numTrainTimesteps: numTrainTimesteps, integer: name != "euler", where: "sampler.timesteps")
        guard initNoiseSigma > 0, initNoiseSigma.isFinite else {
            throw MobileDiffError.invalidManifest("sampler.init_noise_sigma must be positive; got \(initNoiseSigma)")
        }
    }

    /// A per-step array of this spec, present and one entry per timestep.
    func perStep(_ values: [Double]?, _ field: String) throws -> [Double] {
        guard let values else { throw MobileDiffError.invalidManifest("sampler.\(field) is missing for \(name)") }
        guard values.count == timesteps.count else {
            throw MobileDiffError.invalidManifest(
                "sampler.\(field) has \(values.count) entries; the sampler has \(timesteps.count) timesteps")
        }
        return values
    }
}

func checkTimesteps(_ ts: [Double], numTrainTimesteps: Int, integer: Bool, where label: String) throws {
    guard !ts.isEmpty else { throw MobileDiffError.config("\(label) must be a non-empty list of numbers") }
    guard ts.count <= numTrainTimesteps else {
        throw MobileDiffError.config(
            "\(label) has \(ts.count) steps, more than the \(numTrainTimesteps) timesteps the model was trained with")
    }
    guard ts.allSatisfy(\.isFinite) else { throw MobileDiffError.config("\(label) must be finite numbers; got \(ts)") }
    if integer, !ts.allSatisfy({ $0 == $0.rounded() }) {
        throw MobileDiffError.config("\(label) must be whole numbers for this sampler; got \(ts)")
    }
    guard ts.allSatisfy({ $0 >= 0 && $0 <= Double(numTrainTimesteps - 1) }) else {
        throw MobileDiffError.config("\(label) must lie in [0, \(numTrainTimesteps - 1)]; got \(ts)")
    }
    guard zip(ts, ts.dropFirst()).allSatisfy({ $0 > $1 }) else {
        throw MobileDiffError.config("\(label) must be strictly descending; got \(ts)")
    }
}

// MARK: recomputing a spec for another step count

/// The manifest's `pipeline.noise_schedule`.
public struct NoiseSchedule: Codable, Equatable, Sendable {
    public var numTrainTimesteps: Int
    public var betaStart: Double
    public var betaEnd: Double
    public var betaSchedule: String

    enum CodingKeys: String, CodingKey {
        case numTrainTimesteps = "num_train_timesteps"
        case betaStart = "beta_start"
        case betaEnd = "beta_end"
        case betaSchedule = "beta_schedule"
    }

    public init(numTrainTimesteps: Int = 1000, betaStart: Double = 0.00085, betaEnd: Double = 0.012,
                betaSchedule: String = "scaled_linear") {
        self.numTrainTimesteps = numTrainTimesteps
        self.betaStart = betaStart
        self.betaEnd = betaEnd
        self.betaSchedule = betaSchedule
    }

    /// The cumulative product of `1 - beta`, as float32, bit for bit as diffusers: betas
    /// a float32 linspace (of sqrt(beta) for scaled_linear, squared in float32), the
    /// product accumulated in Double and rounded to Float.
    public func alphasCumprod() throws -> [Float] {
        let n = numTrainTimesteps
        guard n >= 1 else { throw MobileDiffError.config("num_train_timesteps must be at least 1; got \(n)") }
        let betas: [Float]
        switch betaSchedule {
        case "linear":
            betas = linspaceFloat32(betaStart, betaEnd, n)
        case "scaled_linear":
            betas = linspaceFloat32(betaStart.squareRoot(), betaEnd.squareRoot(), n).map { $0 * $0 }
        default:
            throw MobileDiffError.config("beta_schedule must be scaled_linear or linear; got \(betaSchedule.debugDescription)")
        }
        var product = 1.0
        return betas.map { beta in
            product *= Double(Float(1) - beta)
            return Float(product)
        }
    }
}

/// `torch.linspace(start, end, n, dtype=float32)`: the step in float32, each value from the
/// nearer end (first half from `start`), computed in Double and rounded once.
func linspaceFloat32(_ start: Double, _ end: Double, _ n: Int) -> [Float] {
    let (lo, hi) = (Float(start), Float(end))
    if n == 1 { return [lo] }
    let step = Double((hi - lo) / Float(n - 1))
    return (0 ..< n).map { (k: Int) -> Float in
        let value: Double = k < n / 2 ? Double(lo) + step * Double(k) : Double(hi) - step * Double(n - 1 - k)
        return Float(value)
    }
}

/// Descending timesteps for `n` steps as diffusers spaces them (Double; `linspace` may
/// give fractions). `stepsOffset` only applies to `leading`.
public func spacedTimesteps(numTrainTimesteps t: Int, numInferenceSteps n: Int, spacing: String, stepsOffset: Int) throws -> [Double] {
    guard n >= 1 else { throw MobileDiffError.config("num_inference_steps must be at least 1; got \(n)") }
    guard n <= t else {
        throw MobileDiffError.config("num_inference_steps \(n) is more than the \(t) timesteps the model was trained with")
    }
    switch spacing {
    case "leading":
        return (0 ..< n).reversed().map { Double($0 * (t / n) + stepsOffset) }
    case "trailing":
        let ratio = Double(t) / Double(n)
        return (0 ..< n).map { (Double(t) - Double($0) * ratio).rounded(.toNearestOrEven) - 1.0 }
    case "linspace":
        // numpy.linspace(0, t - 1, n): k * step, the last one exactly t - 1.
        let stop = Double(t - 1)
        let step = n > 1 ? stop / Double(n - 1) : 0
        var values = (0 ..< n).map { Double($0) * step }
        if n > 1 { values[n - 1] = stop }
        return values.reversed()
    default:
        throw MobileDiffError.config("timestep_spacing must be one of leading, trailing, linspace; got \(spacing.debugDescription)")
    }
}

extension SamplerSpec {
    /// This sampler for `steps` steps: itself when the count is the bundle's, else the
    /// numbers recomputed from `schedule` and this spec's spacing, as Python's
    /// `make_sampler(config, steps)` would write them.
    public func withSteps(_ steps: Int, schedule: NoiseSchedule) throws -> SamplerSpec {
        if steps == numInferenceSteps { return self }
        guard let spacing = timestepSpacing else {
            throw MobileDiffError.config(
                "this bundle's \(name) sampler has an explicit list of \(numInferenceSteps) timesteps; "
                    + "it cannot run \(steps) steps (re-export with --steps \(steps))")
        }
        return try SamplerSpec.make(
            name: name, predictionType: predictionType, schedule: schedule, steps: steps, spacing: spacing,
            stepsOffset: stepsOffset ?? 0, setAlphaToOne: setAlphaToOne ?? false)
    }

    /// The spec Python's `DDIMSampler` / `EulerSampler` / `OneStepSampler` constructors
    /// compute: for `steps` spaced steps, or for an explicit `timesteps` list.
    public static func make(
        name: String, predictionType: PredictionType, schedule: NoiseSchedule, steps: Int? = nil,
        timesteps explicit: [Double]? = nil, spacing: String = "leading", stepsOffset: Int = 1,
        setAlphaToOne: Bool = false
    ) throws -> SamplerSpec {
        let t = schedule.numTrainTimesteps
        let integer = name != "euler"
        var ts: [Double]
        if let explicit {
            guard steps == nil else { throw MobileDiffError.config("pass either steps or timesteps, not both") }
            ts = explicit
            try checkTimesteps(ts, numTrainTimesteps: t, integer: integer, where: "timesteps")
        } else {
            let n = steps ?? (name == "onestep" ? 1 : 0)
            ts = try spacedTimesteps(numTrainTimesteps: t, numInferenceSteps: n, spacing: spacing, stepsOffset: stepsOffset)
            if integer { ts = ts.map { $0.rounded(.toNearestOrEven) } }
            try checkTimesteps(ts, numTrainTimesteps: t, integer: integer,
                               where: "the \(n) \(spacing)-spaced timesteps (steps_offset \(stepsOffset))")
        }
        let table = try schedule.alphasCumprod()
        let spacingField = explicit == nil ? spacing : nil
        switch name {
        case "ddim":
            let idx = ts.map { Int($0) }
            let stepBack = t / idx.count
            let prev = (explicit != nil ? Array(idx.dropFirst()) + [-1] : idx.map { $0 - stepBack }).map { max($0, -1) }
            let final = setAlphaToOne ? 1.0 : Double(table[0])
            return SamplerSpec(
                name: name, predictionType: predictionType, numTrainTimesteps: t, timestepSpacing: spacingField,
                stepsOffset: stepsOffset, timesteps: ts, initNoiseSigma: 1.0, setAlphaToOne: setAlphaToOne,
                prevTimesteps: prev, alphasCumprod: idx.map { Double(table[$0]) },
                alphasCumprodPrev: prev.map { $0 >= 0 ? Double(table[$0]) : final })
        case "euler":
            ts = ts.map { Double(Float($0)) }
            let sigmaTable = table.map { ((Float(1) - $0) / $0).squareRoot() }
            let sigmas = ts.map { Double(Float(interpolate(sigmaTable, at: $0))) } + [0.0]
            let sigmaMax = Float(sigmas.max()!)
            let initSigma = spacing == "leading" ? Double((sigmaMax * sigmaMax + 1).squareRoot()) : Double(sigmaMax)
            return SamplerSpec(
                name: name, predictionType: predictionType, numTrainTimesteps: t, timestepSpacing: spacingField,
                stepsOffset: stepsOffset, timesteps: ts, initNoiseSigma: initSigma, sigmas: sigmas)
        case "onestep":
            if explicit == nil, ts[0] != Double(t - 1) {
                throw MobileDiffError.config(
                    "one-step sampling starts from pure noise at t=\(t - 1), but \(spacing) spacing with "
                        + "\(ts.count) steps starts at t=\(Int(ts[0])); use trailing spacing or explicit timesteps")
            }
            return SamplerSpec(
                name: name, predictionType: predictionType, numTrainTimesteps: t, timestepSpacing: spacingField,
                stepsOffset: stepsOffset, timesteps: ts, initNoiseSigma: 1.0, alphasCumprod: ts.map { Double(table[Int($0)]) })
        default:
            throw MobileDiffError.config("sampler must be one of ddim, euler, onestep; got \(name.debugDescription)")
        }
    }
}

/// `numpy.interp(x, arange(len(table)), table)` in Double.
private func interpolate(_ table: [Float], at x: Double) -> Double {
    let last = table.count - 1
    if x >= Double(last) { return Double(table[last]) }
    if x <= 0 { return Double(table[0]) }
    let j = Int(x.rounded(.down))
    let slope = (Double(table[j + 1]) - Double(table[j])) / 1.0
    return slope * (x - Double(j)) + Double(table[j])
}
