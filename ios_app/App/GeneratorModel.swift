import CoreGraphics
import Foundation
import MobileDiffCore

/// The screen's state and the work behind it: opens the bundle, keeps one pipeline per
/// compute-unit choice (Core ML loads a model for one choice), generates off the main thread.
@MainActor
final class GeneratorModel: ObservableObject {
    @Published var prompt = "a red circle left of a blue square"
    @Published var steps = 8
    @Published var seed: UInt64 = 0
    @Published var computeUnits = ComputeUnits.all
    @Published private(set) var isRunning = false
    @Published private(set) var progress = 0.0
    @Published private(set) var image: CGImage?
    @Published private(set) var timings: StageTimings?
    @Published private(set) var loadMs: [ComponentRole: Double] = [:]
    @Published private(set) var message = ""

    private(set) var bundle: MobileDiffBundle?
    private var pipeline: (units: ComputeUnits, pipeline: Pipeline)?

    init() {
        do {
            let bundle = try BundleLocator.open()
            self.bundle = bundle
            steps = bundle.manifest.pipeline.sampler.numInferenceSteps
            message = "\(bundle.manifest.model.name) from \(bundle.url.lastPathComponent)"
        } catch {
            message = "\(error)"
        }
    }

    func generate() {
        guard let bundle, !isRunning else { return }
        isRunning = true
        progress = 0
        let (prompt, steps, seed, units) = (prompt, steps, seed, computeUnits)
        let cached = pipeline?.units == units ? pipeline?.pipeline : nil
        Task.detached(priority: .userInitiated) {
            do {
                var load: [ComponentRole: Double]?
                let pipeline: Pipeline
                if let cached {
                    pipeline = cached
                } else {
                    pipeline = try Pipeline(bundle: bundle, runner: CoreMLModelRunner(bundle: bundle, computeUnits: units))
                    load = try pipeline.load()
                }
                let result = try pipeline.generate(prompt: prompt, steps: steps, seed: seed) { done, total in
                    Task { @MainActor in self.progress = Double(done) / Double(total) }
                }
                await MainActor.run {
                    self.pipeline = (units, pipeline)
                    if let load { self.loadMs = load }
                    self.image = result.image.cgImage
                    self.timings = result.timings
                    self.message = String(format: "%.0f ms", result.timings.totalMs)
                    self.isRunning = false
                }
            } catch {
                await MainActor.run {
                    self.message = "\(error)"
                    self.isRunning = false
                }
            }
        }
    }
}
