import Foundation
import XCTest
@testable import MobileDiffCore

/// tests/vectors/pipeline_tiny.json: one run of the PyTorch pipeline (tiny config, cfg
/// 7.5, DDIM 4 steps), tensor by tensor.
struct PipelineVector: Decodable {
    struct Step: Decodable {
        let index: Int
        let timestep: Double
        let model_input: RecordedTensor
        let model_output: RecordedTensor
        let guided_output: RecordedTensor
        let latents_after: RecordedTensor
    }

    struct Pixels: Decodable {
        let shape: [Int]
        let data: [Int]
    }

    let prompt: String
    let negative_prompt: String
    let seed: UInt64
    let vae_scaling_factor: Double
    let sampler: SamplerSpec
    let token_ids: [[Int]]
    let context: RecordedTensor
    let initial_latents: RecordedTensor
    let steps: [Step]
    let decoder_input: RecordedTensor
    let decoder_output: RecordedTensor
    let pixels: Pixels

    static let recorded = try! Repo.vector("pipeline_tiny.json", as: PipelineVector.self)
}

/// Stands in for the networks: checks that each is fed what Python fed it and answers
/// with what Python's network answered.
final class ReplayRunner: ModelRunner {
    let vector = PipelineVector.recorded
    /// Floats fed must be within `tolerance * max(1, |recorded|)` (float32 arithmetic).
    let tolerance: Float = 1e-5
    var unetCalls = 0
    var decoderCalls = 0
    var loaded: [ComponentRole] = []
    /// The largest scaled deviation of any input from the recording.
    var worstInputError: Float = 0

    func load(_ component: ComponentRole) throws { loaded.append(component) }

    func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor {
        XCTAssertEqual(shape, [2, 77])
        XCTAssertEqual(inputIds.map(Int.init), vector.token_ids.flatMap { $0 }, "token ids")
        return vector.context.tensor
    }

    func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor {
        let step = vector.steps[unetCalls]
        unetCalls += 1
        check(sample, step.model_input, "UNet sample at step \(step.index)")
        XCTAssertEqual(timestep.shape, [2])
        XCTAssertEqual(timestep.data, [Float(step.timestep), Float(step.timestep)])
        check(context, vector.context, "UNet context")
        return step.model_output.tensor
    }

    func vaeDecoder(latents: Tensor) throws -> Tensor {
        decoderCalls += 1
        check(latents, vector.decoder_input, "decoder input")
        return vector.decoder_output.tensor
    }

    private func check(_ fed: Tensor, _ recorded: RecordedTensor, _ what: String) {
        XCTAssertEqual(fed.shape, recorded.shape, what)
        for (got, want) in zip(fed.data, recorded.data) {
            worstInputError = max(worstInputError, abs(got - want) / max(1, abs(want)))
        }
        XCTAssertLessThanOrEqual(worstInputError, tolerance, what)
    }
}

final class PipelineReplayTests: XCTestCase {
    private let vector = PipelineVector.recorded

    private func makePipeline(_ runner: ModelRunner, manifest: [String: Any] = Fixtures.manifest()) throws -> Pipeline {
        try Pipeline(manifest: Fixtures.decode(manifest), tokenizer: Repo.tokenizer, runner: runner)
    }

    private func assertPixelsMatchPython(_ image: RGBAImage, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual([image.height, image.width, 3], vector.pixels.shape, file: file, line: line)
        let rgb = image.rgb
        let worst = zip(rgb, vector.pixels.data).map { abs(Int($0) - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(worst, 1, "pixels differ from Python's by up to \(worst)", file: file, line: line)
        XCTAssertTrue(stride(from: 3, to: image.pixels.count, by: 4).allSatisfy { image.pixels[$0] == 255 }, "alpha")
    }

    /// The recorded latents injected: every network input and the final pixels as Python's.
    func testReplayOfRecordedRun() throws {
        let runner = ReplayRunner()
        let pipeline = try makePipeline(runner)
        XCTAssertEqual(try pipeline.load().keys.sorted { $0.rawValue < $1.rawValue }, [.textEncoder, .unet, .vaeDecoder])
        XCTAssertEqual(runner.loaded, [.textEncoder, .unet, .vaeDecoder])
        var progress: [Int] = []
        let result = try pipeline.generate(
            prompt: vector.prompt, seed: vector.seed, latents: vector.initial_latents.data, onStep: { done, _ in progress.append(done) })
        XCTAssertEqual(runner.unetCalls, 4)
        XCTAssertEqual(runner.decoderCalls, 1)
        XCTAssertEqual(progress, [1, 2, 3, 4])
        assertPixelsMatchPython(result.image)
        XCTAssertEqual(result.timings.unetMs.count, 4)
        XCTAssertGreaterThan(result.timings.totalMs, 0)
        XCTAssertGreaterThanOrEqual(
            result.timings.totalMs,
            result.timings.textEncoderMs + result.timings.unetMs.reduce(0, +) + result.timings.vaeDecoderMs)
    }

    /// No latents given: the seed alone must reproduce torch's starting noise, so the
    /// whole recorded run replays again.
    func testReplayFromTheSeedAlone() throws {
        let runner = ReplayRunner()
        let result = try makePipeline(runner).generate(prompt: vector.prompt, seed: vector.seed)
        XCTAssertEqual(runner.unetCalls, 4)
        assertPixelsMatchPython(result.image)
    }

    /// The sampler loop on its own reproduces Python's latents after each step.
    func testDenoiseMatchesRecordedLatents() throws {
        let runner = ReplayRunner()
        let pipeline = try makePipeline(runner)
        var timings = StageTimings()
        let final = try pipeline.denoise(
            context: vector.context.tensor, latents: vector.initial_latents.tensor, sampler: pipeline.makeSampler(),
            guidanceScale: 7.5, seed: 0, timings: &timings)
        assertClose(final.data, vector.steps.last!.latents_after.data, atol: 1e-5, rtol: 1e-5, "final latents")
        XCTAssertEqual(timings.unetMs.count, 4)
    }

    func testDecodedToPixelsAsNumpyRounds() throws {
        // Float(bitPattern: 3154149526) is the float32 that numpy maps to exactly 126.5 (-> 126, half to even).
        let values: [Float] = [-1, 1, 0, -3, 3, .nan, Float(bitPattern: 3_154_149_526), 0.25]
        let image = try RGBAImage(decoded: Tensor(shape: [1, 3, 1, 8], data: values + values + values))
        XCTAssertEqual(Array(image.rgb.enumerated().filter { $0.offset % 3 == 0 }.map(\.element)), [0, 255, 128, 0, 255, 0, 126, 159])
        XCTAssertEqual(image.width, 8)
        XCTAssertThrowsError(try RGBAImage(decoded: Tensor(zeros: [1, 4, 2, 2])))
    }

    func testWrongShapesAreClearErrors() throws {
        // The manifest says the UNet runs at batch 1 although guidance is on.
        var manifest = Fixtures.manifest()
        manifest = Fixtures.setting(manifest, "components.coreml.unet.inputs",
                                    [Fixtures.tensor("sample", [1, 4, 16, 16], "float32", "NCHW"),
                                     Fixtures.tensor("timestep", [1], "float32", "N"),
                                     Fixtures.tensor("encoder_hidden_states", [1, 77, 64], "float32", "NLC")])
        XCTAssertThrowsError(try makePipeline(ReplayRunner(), manifest: manifest)) { error in
            XCTAssertEqual(error as? MobileDiffError, .shapeMismatch(
                what: "UNet sample \"sample\" in the manifest", expected: [2, 4, 16, 16], actual: [1, 4, 16, 16]))
            XCTAssertEqual("\(error)", "UNet sample \"sample\" in the manifest has shape [1, 4, 16, 16], expected [2, 4, 16, 16]")
        }
        // A decoder that does not make image_size pixels.
        manifest = Fixtures.setting(Fixtures.manifest(), "pipeline.image_size", 128)
        XCTAssertThrowsError(try makePipeline(ReplayRunner(), manifest: manifest)) { error in
            XCTAssertTrue("\(error)".contains("VAE decoder output"), "\(error)")
        }
        // No tensor with the layout a role needs.
        manifest = Fixtures.setting(Fixtures.manifest(), "components.coreml.text_encoder.inputs",
                                    [Fixtures.tensor("input_ids", [2, 77], "int32", "NLC")])
        XCTAssertThrowsError(try makePipeline(ReplayRunner(), manifest: manifest)) { error in
            XCTAssertTrue("\(error)".contains("the text encoder's input needs a tensor with layout NL"), "\(error)")
        }
        // A runner that answers with the wrong shape.
        final class BadRunner: ModelRunner {
            func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor { Tensor(zeros: [2, 77, 32]) }
            func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor { sample }
            func vaeDecoder(latents: Tensor) throws -> Tensor { Tensor(zeros: [1, 3, 64, 64]) }
        }
        XCTAssertThrowsError(try makePipeline(BadRunner()).generate(prompt: "x")) { error in
            XCTAssertEqual(error as? MobileDiffError,
                           .shapeMismatch(what: "text encoder output", expected: [2, 77, 64], actual: [2, 77, 32]))
        }
        XCTAssertThrowsError(try makePipeline(ReplayRunner()).generate(prompt: "x", latents: [0, 1])) { error in
            XCTAssertEqual(error as? MobileDiffError, .shapeMismatch(what: "latents", expected: [1, 4, 16, 16], actual: [2]))
        }
    }

    /// A text encoder exported at batch 1 is called once per prompt.
    func testBatchOneTextEncoderIsCalledPerPrompt() throws {
        final class Runner: ModelRunner {
            var calls: [[Int32]] = []
            func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor {
                calls.append(inputIds)
                return try Tensor(shape: [1, 77, 64], data: [Float](repeating: Float(calls.count), count: 77 * 64))
            }
            func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor {
                XCTAssertEqual(context.data.first, 1)
                XCTAssertEqual(context.data.last, 2)
                return Tensor(zeros: sample.shape)
            }
            func vaeDecoder(latents: Tensor) throws -> Tensor { Tensor(zeros: [1, 3, 64, 64]) }
        }
        let runner = Runner()
        _ = try makePipeline(runner, manifest: Fixtures.manifest(textBatch: 1)).generate(prompt: "a cat", steps: 2)
        XCTAssertEqual(runner.calls.count, 2 * 1)
        XCTAssertEqual(runner.calls[0].prefix(2), [49406, 49407], "the negative prompt first")
    }

    /// A bundle without guidance runs the UNet at batch 1 and refuses a guidance scale.
    func testNoGuidanceRunsBatchOne() throws {
        final class Runner: ModelRunner {
            var batches: [Int] = []
            func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor { Tensor(zeros: [1, 77, 64]) }
            func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor {
                batches.append(sample.shape[0])
                return Tensor(zeros: sample.shape)
            }
            func vaeDecoder(latents: Tensor) throws -> Tensor { Tensor(zeros: [1, 3, 64, 64]) }
        }
        let runner = Runner()
        let pipeline = try makePipeline(runner, manifest: Fixtures.manifest(batch: 1, textBatch: 1))
        _ = try pipeline.generate(prompt: "a cat")
        XCTAssertEqual(runner.batches, [1, 1, 1, 1])
        XCTAssertThrowsError(try pipeline.generate(prompt: "a cat", guidanceScale: 3)) { error in
            XCTAssertTrue("\(error)".contains("exported without classifier-free guidance"), "\(error)")
        }
        XCTAssertThrowsError(try makePipeline(ReplayRunner()).generate(prompt: "a cat", guidanceScale: 1)) { error in
            XCTAssertTrue("\(error)".contains("give a scale above 1"), "\(error)")
        }
    }

    /// A UNet exported with fold_timesteps takes the step index, and only the bundle's steps.
    func testFoldedTimestepsFeedTheStepIndex() throws {
        final class Runner: ModelRunner {
            var fed: [[Float]] = []
            func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor { Tensor(zeros: [2, 77, 64]) }
            func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor {
                fed.append(timestep.data)
                return Tensor(zeros: sample.shape)
            }
            func vaeDecoder(latents: Tensor) throws -> Tensor { Tensor(zeros: [1, 3, 64, 64]) }
        }
        let manifest = Fixtures.setting(Fixtures.manifest(), "components.coreml.unet.inputs", [
            Fixtures.tensor("sample", [2, 4, 16, 16], "float32", "NCHW"), Fixtures.tensor("step_index", [2], "int32", "N"),
            Fixtures.tensor("encoder_hidden_states", [2, 77, 64], "float32", "NLC"),
        ])
        let runner = Runner()
        let pipeline = try makePipeline(runner, manifest: manifest)
        _ = try pipeline.generate(prompt: "a cat")
        XCTAssertEqual(runner.fed, [[0, 0], [1, 1], [2, 2], [3, 3]])
        XCTAssertThrowsError(try pipeline.generate(prompt: "a cat", steps: 8)) { error in
            XCTAssertTrue("\(error)".contains("fold_timesteps"), "\(error)")
        }
    }
}
