import Foundation

/// Core ML's compute-unit choices, named as `MLComputeUnits` names them; the benchmark
/// result's `settings.backend` on iOS.
public enum ComputeUnits: String, Codable, CaseIterable, Sendable {
    case cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all
}

/// What the benchmark runs: `warmup` unrecorded images, then `iterations` recorded ones,
/// all from the same prompt, steps and seed. The result's `settings` object.
public struct BenchmarkSettings: Codable, Equatable, Sendable {
    public var prompt: String
    /// nil: the bundle's own step count (filled in once the manifest is read).
    public var steps: Int?
    public var seed: UInt64
    public var iterations: Int
    public var warmup: Int
    public var backend: ComputeUnits

    public init(prompt: String = "a photo of an astronaut riding a horse on mars", steps: Int? = nil, seed: UInt64 = 0,
                iterations: Int = 10, warmup: Int = 2, backend: ComputeUnits = .all) {
        self.prompt = prompt
        self.steps = steps
        self.seed = seed
        self.iterations = iterations
        self.warmup = warmup
        self.backend = backend
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(prompt, forKey: .prompt)
        try container.encode(steps, forKey: .steps) // null, not absent
        try container.encode(seed, forKey: .seed)
        try container.encode(iterations, forKey: .iterations)
        try container.encode(warmup, forKey: .warmup)
        try container.encode(backend, forKey: .backend)
    }
}

/// One benchmark run on a phone, in the format of
/// mobilediff_export/schemas/phone_bench_result.schema.json, which the Android app writes
/// too and the benchmark harness reads. Milliseconds, rounded to the microsecond. Values
/// not known (yet) are written as null, never left out.
public struct PhoneBenchResult: Codable, Equatable, Sendable {
    public var schemaVersion = 1
    public var platform = "ios"
    public var appVersion: String
    public var device: Device
    public var bundle = BundleRef()
    public var settings: BenchmarkSettings
    public var loadMs = LoadMs()
    public var runs: [StageTimings] = []
    public var summary = Summary(runs: [])
    public var memory = Memory()
    /// `complete` only when every requested run finished without an error.
    public var status = Status.incomplete
    public var error: String?

    public enum Status: String, Codable, Sendable { case complete, incomplete }

    public struct Device: Codable, Equatable, Sendable {
        public var manufacturer: String
        public var model: String
        public var soc: String
        public var osVersion: String
        public var abi: String

        public init(manufacturer: String, model: String, soc: String, osVersion: String, abi: String) {
            self.manufacturer = manufacturer
            self.model = model
            self.soc = soc
            self.osVersion = osVersion
            self.abi = abi
        }

        enum CodingKeys: String, CodingKey {
            case manufacturer, model, soc, abi
            case osVersion = "os_version"
        }
    }

    /// null until the bundle's manifest was read.
    public struct BundleRef: Codable, Equatable, Sendable {
        public var modelName: String?
        public var manifestSha256: String?

        enum CodingKeys: String, CodingKey {
            case modelName = "model_name"
            case manifestSha256 = "manifest_sha256"
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(modelName, forKey: .modelName)
            try container.encode(manifestSha256, forKey: .manifestSha256)
        }
    }

    /// Loading (and compiling, the first time) each network; null until it was loaded.
    public struct LoadMs: Codable, Equatable, Sendable {
        public var textEncoder: Double?
        public var unet: Double?
        public var vaeDecoder: Double?

        enum CodingKeys: String, CodingKey {
            case textEncoder = "text_encoder"
            case unet
            case vaeDecoder = "vae_decoder"
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(textEncoder, forKey: .textEncoder)
            try container.encode(unet, forKey: .unet)
            try container.encode(vaeDecoder, forKey: .vaeDecoder)
        }
    }

    /// Statistics over the recorded runs: per run for the text encoder, decoder and total,
    /// per UNet call across all runs for the step; null where no run finished.
    public struct Summary: Codable, Equatable, Sendable {
        public var textEncoderMs: Stats?
        public var unetStepMs: Stats?
        public var vaeDecoderMs: Stats?
        public var totalMs: Stats?

        enum CodingKeys: String, CodingKey {
            case textEncoderMs = "text_encoder_ms"
            case unetStepMs = "unet_step_ms"
            case vaeDecoderMs = "vae_decoder_ms"
            case totalMs = "total_ms"
        }

        public init(runs: [StageTimings]) {
            textEncoderMs = Stats(runs.map(\.textEncoderMs))
            unetStepMs = Stats(runs.flatMap(\.unetMs))
            vaeDecoderMs = Stats(runs.map(\.vaeDecoderMs))
            totalMs = Stats(runs.map(\.totalMs))
        }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(textEncoderMs, forKey: .textEncoderMs)
            try container.encode(unetStepMs, forKey: .unetStepMs)
            try container.encode(vaeDecoderMs, forKey: .vaeDecoderMs)
            try container.encode(totalMs, forKey: .totalMs)
        }
    }

    public struct Stats: Codable, Equatable, Sendable {
        public var median: Double
        public var p90: Double
        public var min: Double
        public var max: Double

        /// nil for no samples. Percentiles interpolate linearly between order statistics,
        /// as numpy.percentile does by default (and the Android app).
        public init?(_ samples: [Double]) {
            guard !samples.isEmpty else { return nil }
            let sorted = samples.sorted()
            median = roundedMs(Stats.percentile(sorted, 50))
            p90 = roundedMs(Stats.percentile(sorted, 90))
            min = roundedMs(sorted.first!)
            max = roundedMs(sorted.last!)
        }

        static func percentile(_ sorted: [Double], _ p: Double) -> Double {
            let rank = p / 100 * Double(sorted.count - 1)
            let low = Int(rank.rounded(.down))
            let high = Swift.min(low + 1, sorted.count - 1)
            return sorted[low] + (sorted[high] - sorted[low]) * (rank - Double(low))
        }
    }

    public struct Memory: Codable, Equatable, Sendable {
        public var peakRssBytes: Int?

        enum CodingKeys: String, CodingKey { case peakRssBytes = "peak_rss_bytes" }

        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(peakRssBytes, forKey: .peakRssBytes)
        }
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case platform
        case appVersion = "app_version"
        case device, bundle, settings
        case loadMs = "load_ms"
        case runs, summary, memory, status, error
    }

    public init(appVersion: String, device: Device, settings: BenchmarkSettings) {
        self.appVersion = appVersion
        self.device = device
        self.settings = settings
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(schemaVersion, forKey: .schemaVersion)
        try container.encode(platform, forKey: .platform)
        try container.encode(appVersion, forKey: .appVersion)
        try container.encode(device, forKey: .device)
        try container.encode(bundle, forKey: .bundle)
        try container.encode(settings, forKey: .settings)
        try container.encode(loadMs, forKey: .loadMs)
        try container.encode(runs, forKey: .runs)
        try container.encode(summary, forKey: .summary)
        try container.encode(memory, forKey: .memory)
        try container.encode(status, forKey: .status)
        try container.encode(error, forKey: .error)
    }

    /// Pretty, key-sorted JSON, as written to the app's Documents folder.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

public enum Benchmark {
    /// Loads the networks (timed), runs `settings.warmup` images unrecorded and
    /// `settings.iterations` recorded ones, and returns the result. Never throws: a failure
    /// ends the run with `status: incomplete`, its message in `error`, the runs finished so
    /// far kept. `onRun` sees the (incomplete) result after each recorded run, so the app
    /// can write it and a harness that loses the phone still gets what was measured.
    public static func run(
        pipeline: Pipeline, settings: BenchmarkSettings, device: PhoneBenchResult.Device, appVersion: String,
        manifestSHA256: String, progress: ((String) -> Void)? = nil, onRun: ((PhoneBenchResult) -> Void)? = nil
    ) -> PhoneBenchResult {
        var resolved = settings
        resolved.steps = settings.steps ?? pipeline.manifest.pipeline.sampler.numInferenceSteps
        var result = PhoneBenchResult(appVersion: appVersion, device: device, settings: resolved)
        result.bundle = .init(modelName: pipeline.manifest.model.name, manifestSha256: manifestSHA256)
        do {
            guard settings.iterations >= 1, settings.warmup >= 0 else {
                throw MobileDiffError.config("iterations must be at least 1 and warmup at least 0")
            }
            progress?("loading the models")
            let load = try pipeline.load()
            result.loadMs = .init(
                textEncoder: load[.textEncoder].map(roundedMs), unet: load[.unet].map(roundedMs),
                vaeDecoder: load[.vaeDecoder].map(roundedMs))
            for k in 0 ..< settings.warmup + settings.iterations {
                let warming = k < settings.warmup
                progress?(warming ? "warm-up \(k + 1)/\(settings.warmup)"
                                  : "iteration \(k - settings.warmup + 1)/\(settings.iterations)")
                let image = try pipeline.generate(prompt: settings.prompt, steps: resolved.steps, seed: settings.seed)
                if !warming {
                    result.runs.append(image.timings.roundedToMicroseconds())
                    result.summary = .init(runs: result.runs)
                    result.memory.peakRssBytes = peakResidentBytes()
                    onRun?(result)
                }
            }
            result.status = .complete
        } catch {
            result.error = "\(error)"
        }
        result.summary = .init(runs: result.runs)
        result.memory.peakRssBytes = peakResidentBytes()
        return result
    }

    /// The result of a benchmark that could not start (no bundle, a bad manifest, ...).
    public static func failure(
        settings: BenchmarkSettings, device: PhoneBenchResult.Device, appVersion: String, error: Error
    ) -> PhoneBenchResult {
        var result = PhoneBenchResult(appVersion: appVersion, device: device, settings: settings)
        result.error = "\(error)"
        result.memory.peakRssBytes = peakResidentBytes()
        return result
    }

    /// The process's peak resident set size so far, from getrusage (kilobytes on Linux,
    /// bytes on Apple platforms).
    public static func peakResidentBytes() -> Int? {
        var usage = rusage()
        #if os(Linux)
        let who = __rusage_who_t(RUSAGE_SELF.rawValue)
        #else
        let who = RUSAGE_SELF
        #endif
        guard getrusage(who, &usage) == 0 else { return nil }
        #if canImport(Darwin)
        return Int(usage.ru_maxrss)
        #else
        return Int(usage.ru_maxrss) * 1024
        #endif
    }
}

/// Milliseconds to the microsecond: enough for latency, and readable.
func roundedMs(_ ms: Double) -> Double { (ms * 1000).rounded() / 1000 }

extension StageTimings {
    func roundedToMicroseconds() -> StageTimings {
        var rounded = self
        rounded.tokenizeMs = roundedMs(tokenizeMs)
        rounded.textEncoderMs = roundedMs(textEncoderMs)
        rounded.unetMs = unetMs.map(roundedMs)
        rounded.samplerMs = roundedMs(samplerMs)
        rounded.vaeDecoderMs = roundedMs(vaeDecoderMs)
        rounded.totalMs = roundedMs(totalMs)
        return rounded
    }
}
