import Foundation

/// Seeded unit Gaussian noise for the initial latents and for one-step re-noising, drawn
/// the way PyTorch's CPU generator draws float32 `torch.randn`, so that a seed means the
/// same starting latents here as in `mobilediff generate --seed` (the Python pipeline
/// uses `torch.Generator().manual_seed(seed)` for the latents and `seed + 1` for
/// re-noising; `Pipeline` does the same).
///
/// The algorithm is torch's `normal_fill` (aten/src/ATen/native/cpu/DistributionTemplates.h):
/// MT19937 seeded with the low 32 bits of the seed; each value first becomes a uniform
/// `(u32 & 0xFFFFFF) / 2^24`; then every block of 16 turns into normals by Box-Muller,
/// `r = sqrt(-2 log(1 - u[j]))`, `theta = 2 pi u[j + 8]`, `x[j] = r cos(theta)`,
/// `x[j + 8] = r sin(theta)`, all in float32 as torch's vectorized (AVX2/AVX-512) kernel
/// computes them, the last block redrawn when the count is not a multiple of 16.
/// This platform's float32 log/sin/cos stand in for torch's SLEEF ones, so a value can
/// differ from torch's in its last bits (at most 2.4e-7 on the recorded seed-0 latents; the
/// tests allow 1e-6). Torch builds without those kernels (Apple silicon) take theta in
/// double and differ from this by up to about 1.5e-6. Counts below 16 (never a latent)
/// take the block algorithm on 16 values and keep the first ones, which torch does not.
public struct TorchGaussianNoise: Sendable {
    private var mt: MT19937

    public init(seed: UInt64) {
        mt = MT19937(seed: UInt32(truncatingIfNeeded: seed))
    }

    /// The next `count` values, as `torch.randn(count, generator=g)` continues them.
    public mutating func randn(_ count: Int) -> [Float] {
        guard count >= 16 else { return Array(randn(16).prefix(count)) }
        var data = (0 ..< count).map { _ in uniform() }
        var start = 0
        while start + 16 <= count {
            Self.boxMuller16(&data, start)
            start += 16
        }
        if count % 16 != 0 {
            let tail = count - 16
            for j in 0 ..< 16 { data[tail + j] = uniform() }
            Self.boxMuller16(&data, tail)
        }
        return data
    }

    private mutating func uniform() -> Float {
        Float(Double(mt.next() & 0xFFFFFF) * (1.0 / 16_777_216.0))
    }

    private static func boxMuller16(_ data: inout [Float], _ start: Int) {
        for j in start ..< start + 8 {
            let u1: Float = 1 - data[j] // [0, 1) -> (0, 1] for log
            let u2 = data[j + 8]
            let radius = (-2 * Foundation.log(u1)).squareRoot()
            let theta = Float(2 * Double.pi) * u2
            data[j] = radius * Foundation.cos(theta)
            data[j + 8] = radius * Foundation.sin(theta)
        }
    }
}

/// The 32-bit Mersenne Twister as torch's `at::mt19937` runs it.
struct MT19937: Sendable {
    private var state = [UInt32](repeating: 0, count: 624)
    private var index = 624

    init(seed: UInt32) {
        state[0] = seed
        for i in 1 ..< 624 {
            state[i] = 1_812_433_253 &* (state[i - 1] ^ (state[i - 1] >> 30)) &+ UInt32(i)
        }
    }

    mutating func next() -> UInt32 {
        if index == 624 { twist() }
        var y = state[index]
        index += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C_5680
        y ^= (y << 15) & 0xEFC6_0000
        y ^= y >> 18
        return y
    }

    private mutating func twist() {
        for i in 0 ..< 624 {
            let y = (state[i] & 0x8000_0000) | (state[(i + 1) % 624] & 0x7FFF_FFFF)
            state[i] = state[(i + 397) % 624] ^ (y >> 1) ^ (y & 1 == 0 ? 0 : 0x9908_B0DF)
        }
        index = 0
    }
}
