import Foundation
import XCTest
@testable import MobileDiffCore

/// Answers every network with zeros of the manifest's shapes; can fail on the n-th UNet call.
private final class ZeroRunner: ModelRunner {
    var unetCalls = 0
    var failOnUnetCall: Int?

    func textEncoder(inputIds: [Int32], shape: [Int]) throws -> Tensor { Tensor(zeros: [shape[0], 77, 64]) }

    func unet(sample: Tensor, timestep: Tensor, context: Tensor) throws -> Tensor {
        unetCalls += 1
        if unetCalls == failOnUnetCall { throw MobileDiffError.runner("unet prediction failed: out of memory") }
        return Tensor(zeros: sample.shape)
    }

    func vaeDecoder(latents: Tensor) throws -> Tensor { Tensor(zeros: [1, 3, 64, 64]) }
}

final class BenchmarkTests: XCTestCase {
    private let device = PhoneBenchResult.Device(
        manufacturer: "Apple", model: "iPhone16,1", soc: "A17 Pro", osVersion: "17.5", abi: "arm64")

    func testStatisticsInterpolateLikeNumpy() throws {
        let stats = try XCTUnwrap(PhoneBenchResult.Stats((1 ... 10).map(Double.init).shuffled()))
        XCTAssertEqual(stats.median, 5.5)
        XCTAssertEqual(stats.p90, 9.1, accuracy: 1e-12)
        XCTAssertEqual(stats.min, 1)
        XCTAssertEqual(stats.max, 10)
        let one = try XCTUnwrap(PhoneBenchResult.Stats([3]))
        XCTAssertEqual([one.median, one.p90, one.min, one.max], [3, 3, 3, 3])
        XCTAssertNil(PhoneBenchResult.Stats([]))
    }

    func testSummaryTakesEveryUNetStepOfEveryRun() throws {
        var a = StageTimings(), b = StageTimings()
        a.unetMs = [10, 20]
        b.unetMs = [30, 40]
        a.totalMs = 100
        b.totalMs = 200
        let summary = PhoneBenchResult.Summary(runs: [a, b])
        XCTAssertEqual(summary.unetStepMs?.median, 25)
        XCTAssertEqual(summary.unetStepMs?.max, 40)
        XCTAssertEqual(summary.totalMs?.median, 150)
    }

    private func pipeline(_ runner: ModelRunner) throws -> Pipeline {
        try Pipeline(manifest: Fixtures.decode(Fixtures.manifest()), tokenizer: Repo.tokenizer, runner: runner)
    }

    func testCompleteRunRecordsIterationsAfterWarmup() throws {
        let runner = ZeroRunner()
        let settings = BenchmarkSettings(prompt: "a cat", steps: 2, seed: 3, iterations: 3, warmup: 2, backend: .cpuAndNeuralEngine)
        var messages: [String] = []
        var interim: [PhoneBenchResult] = []
        let result = Benchmark.run(
            pipeline: try pipeline(runner), settings: settings, device: device, appVersion: "1.0 (7)",
            manifestSHA256: String(repeating: "a", count: 64), progress: { messages.append($0) },
            onRun: { interim.append($0) })
        XCTAssertEqual(result.status, .complete)
        XCTAssertNil(result.error)
        XCTAssertEqual(result.runs.count, 3)
        XCTAssertEqual(runner.unetCalls, (2 + 3) * 2)
        XCTAssertEqual(result.runs.map(\.unetMs.count), [2, 2, 2])
        XCTAssertEqual(messages, ["loading the models", "warm-up 1/2", "warm-up 2/2", "iteration 1/3", "iteration 2/3", "iteration 3/3"])
        XCTAssertEqual(result.settings.steps, 2)
        XCTAssertEqual(interim.map(\.runs.count), [1, 2, 3])
        XCTAssertEqual(interim.map(\.status), [.incomplete, .incomplete, .incomplete])
        XCTAssertNotNil(result.loadMs.unet)
        XCTAssertTrue(result.runs.flatMap(\.unetMs).allSatisfy { ($0 * 1000).rounded() == $0 * 1000 }, "microseconds")
        XCTAssertEqual(result.bundle.modelName, "tiny")
        XCTAssertNotNil(result.summary.unetStepMs)
        XCTAssertGreaterThan(result.memory.peakRssBytes ?? 0, 1 << 20)

        // The JSON has exactly the contract's shape.
        let json = try JSONSerialization.jsonObject(with: result.jsonData()) as! [String: Any]
        XCTAssertEqual(Set(json.keys), ["schema_version", "platform", "app_version", "device", "bundle", "settings", "load_ms",
                                        "runs", "summary", "memory", "status", "error"])
        XCTAssertEqual(json["schema_version"] as? Int, 1)
        XCTAssertEqual(json["platform"] as? String, "ios")
        XCTAssertEqual(json["status"] as? String, "complete")
        XCTAssertTrue(json["error"] is NSNull, "error is written as null")
        XCTAssertEqual(Set((json["device"] as! [String: Any]).keys), ["manufacturer", "model", "soc", "os_version", "abi"])
        XCTAssertEqual(Set((json["bundle"] as! [String: Any]).keys), ["model_name", "manifest_sha256"])
        let settingsJSON = json["settings"] as! [String: Any]
        XCTAssertEqual(Set(settingsJSON.keys), ["prompt", "steps", "seed", "iterations", "warmup", "backend"])
        XCTAssertEqual(settingsJSON["backend"] as? String, "cpuAndNeuralEngine")
        XCTAssertEqual(Set((json["load_ms"] as! [String: Any]).keys), ["text_encoder", "unet", "vae_decoder"])
        let runs = json["runs"] as! [[String: Any]]
        XCTAssertEqual(Set(runs[0].keys), ["tokenize_ms", "text_encoder_ms", "unet_ms", "sampler_ms", "vae_decoder_ms", "total_ms"])
        let summary = json["summary"] as! [String: Any]
        XCTAssertEqual(Set(summary.keys), ["text_encoder_ms", "unet_step_ms", "vae_decoder_ms", "total_ms"])
        XCTAssertEqual(Set((summary["total_ms"] as! [String: Any]).keys), ["median", "p90", "min", "max"])
        XCTAssertEqual(Set((json["memory"] as! [String: Any]).keys), ["peak_rss_bytes"])

        XCTAssertEqual(try JSONDecoder().decode(PhoneBenchResult.self, from: result.jsonData()), result, "round trip")
    }

    func testFailureMidRunKeepsFinishedRunsAndIsIncomplete() throws {
        let runner = ZeroRunner()
        runner.failOnUnetCall = 7 // warm-up 1 (steps 1-2), runs 1 (3-4) and 2 (5-6) finish; run 3 fails
        let settings = BenchmarkSettings(prompt: "a cat", steps: 2, iterations: 5, warmup: 1)
        let result = Benchmark.run(pipeline: try pipeline(runner), settings: settings, device: device, appVersion: "1.0",
                                   manifestSHA256: "")
        XCTAssertEqual(result.status, .incomplete)
        XCTAssertEqual(result.runs.count, 2)
        XCTAssertEqual(result.error, "model runner: unet prediction failed: out of memory")
        XCTAssertEqual(result.summary.totalMs.map { _ in true }, true)
    }

    func testResultOfABenchmarkThatCouldNotStart() throws {
        let result = Benchmark.failure(
            settings: BenchmarkSettings(), device: device, appVersion: "1.0", error: MobileDiffError.missingFile("bundle.json"))
        XCTAssertEqual(result.status, .incomplete)
        XCTAssertEqual(result.error, "missing file: bundle.json")
        let json = try JSONSerialization.jsonObject(with: result.jsonData()) as! [String: Any]
        let summary = json["summary"] as! [String: Any]
        XCTAssertTrue(summary["total_ms"] is NSNull, "no samples: null statistics")
        XCTAssertEqual((json["runs"] as! [Any]).count, 0)
        XCTAssertTrue((json["settings"] as! [String: Any])["steps"] is NSNull, "steps unknown without a manifest")
        XCTAssertTrue((json["bundle"] as! [String: Any])["model_name"] is NSNull)
        XCTAssertTrue((json["load_ms"] as! [String: Any])["unet"] is NSNull)
    }
}

final class BenchmarkCommandTests: XCTestCase {
    func testNoBenchmarkFlagMeansNoBenchmark() throws {
        XCTAssertNil(try BenchmarkCommand.parse(["MobileDiffDemo", "-iterations", "3"]))
    }

    func testDefaultsAndOptions() throws {
        XCTAssertEqual(try BenchmarkCommand.parse(["app", "-benchmark"]), BenchmarkCommand())
        let command = try XCTUnwrap(BenchmarkCommand.parse([
            "app", "-benchmark", "-iterations", "5", "-warmup", "0", "-steps", "8", "-seed", "42",
            "-compute-units", "cpuAndGPU", "-prompt", "a red circle", "-output", "run1.json",
            "-AppleLanguages", "(en)",
        ]))
        XCTAssertEqual(command.settings, BenchmarkSettings(
            prompt: "a red circle", steps: 8, seed: 42, iterations: 5, warmup: 0, backend: .cpuAndGPU))
        XCTAssertEqual(command.output, "run1.json")
    }

    func testBadValuesAreClearErrors() {
        let cases: [([String], String)] = [
            (["-iterations", "0"], "-iterations takes a whole number >= 1, got \"0\""),
            (["-seed", "-1"], "-seed takes a whole number >= 0, got \"-1\""),
            (["-compute-units", "gpu"], "-compute-units must be one of cpuOnly, cpuAndGPU, cpuAndNeuralEngine, all, got \"gpu\""),
            (["-output", "../x.json"], "-output is a file name in Documents"),
            (["-steps"], "-steps needs a value"),
        ]
        for (arguments, message) in cases {
            XCTAssertThrowsError(try BenchmarkCommand.parse(["-benchmark"] + arguments)) { error in
                XCTAssertTrue("\(error)".hasPrefix(message), "\(error)")
            }
        }
    }
}
