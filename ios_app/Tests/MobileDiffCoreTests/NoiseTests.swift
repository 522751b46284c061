import Foundation
import XCTest
@testable import MobileDiffCore

final class NoiseTests: XCTestCase {
    /// The C++ standard's check of mt19937: the 10000th output for the default seed 5489.
    func testMersenneTwisterMatchesTheStandard() {
        var mt = MT19937(seed: 5489)
        XCTAssertEqual(mt.next(), 3_499_211_612)
        for _ in 2 ..< 10000 { _ = mt.next() }
        XCTAssertEqual(mt.next(), 4_123_659_995)
    }

    /// torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(0)), as recorded
    /// by the Python pipeline (DDIM: init_noise_sigma 1, so these are the raw draws).
    func testSeedZeroGivesTorchsLatents() {
        let recorded = PipelineVector.recorded
        XCTAssertEqual(recorded.sampler.initNoiseSigma, 1)
        var noise = TorchGaussianNoise(seed: recorded.seed)
        assertClose(noise.randn(1024), recorded.initial_latents.data, atol: 1e-6, rtol: 0, "randn(seed 0)")
    }

    func testSameSeedSameNoiseAndTheStreamContinues() {
        var a = TorchGaussianNoise(seed: 42)
        var b = TorchGaussianNoise(seed: 42)
        var c = TorchGaussianNoise(seed: 43)
        let first = a.randn(64)
        XCTAssertEqual(first, b.randn(64))
        XCTAssertNotEqual(first, c.randn(64))
        XCTAssertNotEqual(a.randn(64), first, "a second draw continues the stream")
        var odd = TorchGaussianNoise(seed: 1)
        var again = TorchGaussianNoise(seed: 1)
        XCTAssertEqual(odd.randn(20), again.randn(20), "counts that are not a multiple of 16")
        XCTAssertEqual(odd.randn(5).count, 5)
    }

    func testValuesAreUnitGaussian() {
        var noise = TorchGaussianNoise(seed: 7)
        let values = noise.randn(200_000).map(Double.init)
        let mean = values.reduce(0, +) / Double(values.count)
        let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance.squareRoot(), 1, accuracy: 0.01)
        XCTAssertTrue(values.allSatisfy(\.isFinite))
    }
}
