import Foundation
import XCTest
@testable import MobileDiffCore

/// tests/vectors/samplers.json: diffusers' DDIM and Euler schedulers and the one-step
/// formulas, per case the schedule numbers and a chained run on eight floats.
private struct SamplerVectors: Decodable {
    struct Tolerance: Decodable {
        let atol: Double
        let rtol: Double
    }

    struct Config: Decodable {
        let prediction_type: PredictionType
        let num_train_timesteps: Int
        let beta_start: Double
        let beta_end: Double
        let beta_schedule: String
        let timestep_spacing: String
        let steps_offset: Int
        let set_alpha_to_one: Bool
    }

    struct Step: Decodable {
        let index: Int
        let model_input_scale: Double
        let sample: [Double]
        let model_output: [Double]
        let noise: [Double]?
        let model_input: [Double]
        let prev_sample: [Double]
    }

    struct Case: Decodable {
        let name: String
        let sampler: String
        let config: Config
        let num_inference_steps: Int
        let explicit_timesteps: Bool
        let timesteps: [Double]
        let init_noise_sigma: Double
        let prev_timesteps: [Int]?
        let alphas_cumprod: [Double]?
        let alphas_cumprod_prev: [Double]?
        let sigmas: [Double]?
        let steps: [Step]

        /// What the manifest would carry for this sampler.
        var spec: SamplerSpec {
            SamplerSpec(
                name: sampler, predictionType: config.prediction_type, numTrainTimesteps: config.num_train_timesteps,
                timestepSpacing: explicit_timesteps ? nil : config.timestep_spacing, stepsOffset: config.steps_offset,
                timesteps: timesteps, initNoiseSigma: init_noise_sigma, setAlphaToOne: config.set_alpha_to_one,
                prevTimesteps: prev_timesteps, alphasCumprod: alphas_cumprod, alphasCumprodPrev: alphas_cumprod_prev,
                sigmas: sigmas)
        }

        var schedule: NoiseSchedule {
            NoiseSchedule(numTrainTimesteps: config.num_train_timesteps, betaStart: config.beta_start,
                          betaEnd: config.beta_end, betaSchedule: config.beta_schedule)
        }
    }

    let tolerance: Tolerance
    let cases: [Case]
}

final class SchedulersTests: XCTestCase {
    private static let vectors = try! Repo.vector("samplers.json", as: SamplerVectors.self)
    private var tol: SamplerVectors.Tolerance { Self.vectors.tolerance }

    func testVectorFileCoversEverySampler() {
        XCTAssertEqual(Set(Self.vectors.cases.map(\.sampler)), ["ddim", "euler", "onestep"])
        XCTAssertEqual(Self.vectors.cases.count, 44)
    }

    /// Each step of each case: the input scale, the UNet input and the updated sample.
    func testStepsMatchDiffusers() throws {
        for vector in Self.vectors.cases {
            let sampler = try makeSampler(vector.spec)
            XCTAssertEqual(sampler.name, vector.sampler)
            XCTAssertEqual(sampler.needsNoise, vector.sampler == "onestep")
            for step in vector.steps {
                let at = "\(vector.name) step \(step.index)"
                let scale = try sampler.modelInputScale(step.index)
                XCTAssertLessThanOrEqual(abs(scale - step.model_input_scale), tol.atol + tol.rtol * abs(step.model_input_scale), at)
                assertClose(try sampler.scaleModelInput(step.sample, i: step.index), step.model_input,
                            atol: tol.atol, rtol: tol.rtol, "\(at) model_input")
                let prev = try sampler.step(modelOutput: step.model_output, i: step.index, sample: step.sample, noise: step.noise)
                assertClose(prev, step.prev_sample, atol: tol.atol, rtol: tol.rtol, "\(at) prev_sample")
            }
        }
    }

    /// The pipeline's Float path (the sample's own type in and out) stays within tolerance.
    func testFloatSamplesStepInDoubleAndRoundOnce() throws {
        for vector in Self.vectors.cases {
            let sampler = try makeSampler(vector.spec)
            for step in vector.steps {
                let prev = try sampler.step(
                    modelOutput: step.model_output.map(Float.init), i: step.index, sample: step.sample.map(Float.init),
                    noise: step.noise?.map(Float.init))
                assertClose(prev, step.prev_sample.map(Float.init), atol: tol.atol, rtol: tol.rtol, "\(vector.name) step \(step.index) Float")
            }
        }
    }

    /// The schedule recomputed from the noise schedule and spacing (the app's steps
    /// setting) gives the numbers diffusers gave.
    func testRecomputedSpecsMatchDiffusers() throws {
        for vector in Self.vectors.cases {
            let config = vector.config
            let spec = try SamplerSpec.make(
                name: vector.sampler, predictionType: config.prediction_type, schedule: vector.schedule,
                steps: vector.explicit_timesteps ? nil : vector.num_inference_steps,
                timesteps: vector.explicit_timesteps ? vector.timesteps : nil, spacing: config.timestep_spacing,
                stepsOffset: config.steps_offset, setAlphaToOne: config.set_alpha_to_one)
            let at = vector.name
            XCTAssertEqual(spec.numInferenceSteps, vector.num_inference_steps, at)
            if vector.sampler == "euler" {
                assertClose(spec.timesteps, vector.timesteps, atol: tol.atol, rtol: tol.rtol, "\(at) timesteps")
            } else {
                XCTAssertEqual(spec.timesteps, vector.timesteps, at)
            }
            XCTAssertEqual(spec.prevTimesteps, vector.prev_timesteps, at)
            XCTAssertLessThanOrEqual(abs(spec.initNoiseSigma - vector.init_noise_sigma),
                                     tol.atol + tol.rtol * vector.init_noise_sigma, "\(at) init_noise_sigma")
            for (got, want, field) in [(spec.alphasCumprod, vector.alphas_cumprod, "alphas_cumprod"),
                                       (spec.alphasCumprodPrev, vector.alphas_cumprod_prev, "alphas_cumprod_prev"),
                                       (spec.sigmas, vector.sigmas, "sigmas")] {
                XCTAssertEqual(got == nil, want == nil, "\(at) \(field)")
                if let got, let want { assertClose(got, want, atol: tol.atol, rtol: tol.rtol, "\(at) \(field)") }
            }
        }
    }

    func testWithStepsKeepsTheBundlesOwnNumbers() throws {
        let spec = Self.vectors.cases.first { $0.name == "ddim-epsilon-leading-8" }!.spec
        XCTAssertEqual(try spec.withSteps(8, schedule: NoiseSchedule()), spec)
        let four = try spec.withSteps(4, schedule: NoiseSchedule())
        XCTAssertEqual(four.timesteps, [751, 501, 251, 1])
        let explicit = Self.vectors.cases.first { $0.explicit_timesteps }!.spec
        XCTAssertThrowsError(try explicit.withSteps(explicit.numInferenceSteps + 1, schedule: NoiseSchedule())) { error in
            XCTAssertTrue("\(error)".contains("explicit list"), "\(error)")
        }
        XCTAssertThrowsError(try spec.withSteps(1001, schedule: NoiseSchedule())) { error in
            XCTAssertTrue("\(error)".contains("more than the 1000 timesteps"), "\(error)")
        }
    }

    func testOneStepFromLeadingSpacingIsRefused() {
        XCTAssertThrowsError(try SamplerSpec.make(
            name: "onestep", predictionType: .epsilon, schedule: NoiseSchedule(), steps: 2, spacing: "leading")) { error in
            XCTAssertTrue("\(error)".contains("starts from pure noise"), "\(error)")
        }
    }

    func testMisuseThrows() throws {
        let onestep = try makeSampler(Self.vectors.cases.first { $0.name == "onestep-epsilon-4" }!.spec)
        let x: [Float] = [0, 1]
        XCTAssertThrowsError(try onestep.step(modelOutput: x, i: 0, sample: x, noise: nil)) { error in
            XCTAssertTrue("\(error)".contains("needs `noise`"), "\(error)")
        }
        XCTAssertThrowsError(try onestep.step(modelOutput: x, i: 4, sample: x, noise: nil)) { error in
            XCTAssertEqual(error as? MobileDiffError, .config("step index 4 is outside 0..3"))
        }
        XCTAssertThrowsError(try onestep.step(modelOutput: [Float(0)], i: 3, sample: x, noise: nil)) { error in
            XCTAssertEqual(error as? MobileDiffError, .shapeMismatch(what: "model_output", expected: [2], actual: [1]))
        }
        var euler = Self.vectors.cases.first { $0.sampler == "euler" }!.spec
        euler.sigmas = nil
        XCTAssertThrowsError(try makeSampler(euler)) { error in
            XCTAssertTrue("\(error)".contains("sampler.sigmas must have one entry per timestep"), "\(error)")
        }
        var ddim = Self.vectors.cases.first { $0.name == "ddim-epsilon-leading-4" }!.spec
        ddim.timesteps.reverse()
        XCTAssertThrowsError(try makeSampler(ddim)) { error in
            XCTAssertTrue("\(error)".contains("strictly descending"), "\(error)")
        }
    }
}
