import Foundation
#if canImport(CryptoKit)
import CryptoKit
#endif

/// SHA-256 (FIPS 180-4) for bundle checksums, fed in pieces so a large model file never
/// sits in memory whole. CryptoKit does the work where it exists (Apple platforms); the
/// plain Swift rounds below run elsewhere (Linux CI) and are what the tests check.
public struct SHA256Hasher {
    #if canImport(CryptoKit)
    private var hasher = CryptoKit.SHA256()
    #else
    private var state = PortableSHA256()
    #endif

    public init() {}

    public mutating func update(_ data: Data) {
        #if canImport(CryptoKit)
        hasher.update(data: data)
        #else
        state.update(data)
        #endif
    }

    /// The digest as 64 lowercase hex digits.
    public func hexDigest() -> String {
        #if canImport(CryptoKit)
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
        #else
        var finished = state
        return finished.hexDigest()
        #endif
    }

    public static func hex(_ data: Data) -> String {
        var hasher = SHA256Hasher()
        hasher.update(data)
        return hasher.hexDigest()
    }

    /// The sha256 of a file, read 4 MiB at a time.
    public static func hex(fileAt url: URL) throws -> String {
        guard let handle = try? FileHandle(forReadingFrom: url) else {
            throw MobileDiffError.missingFile(url.path)
        }
        defer { try? handle.close() }
        var hasher = SHA256Hasher()
        while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty {
            hasher.update(chunk)
        }
        return hasher.hexDigest()
    }
}

/// The compression function in plain Swift. Internal so the tests run it on every platform.
struct PortableSHA256 {
    private static let k: [UInt32] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
    ]

    private var h: [UInt32] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]
    private var w = [UInt32](repeating: 0, count: 64)
    private var buffer: [UInt8] = []
    private var length: UInt64 = 0

    mutating func update(_ data: Data) {
        length &+= UInt64(data.count)
        buffer += data
        let whole = buffer.count / 64 * 64
        let pending = buffer // a copy to read while compress() mutates self
        pending.withUnsafeBytes { bytes in
            for offset in stride(from: 0, to: whole, by: 64) {
                compress(UnsafeRawBufferPointer(rebasing: bytes[offset ..< offset + 64]))
            }
        }
        buffer.removeFirst(whole)
    }

    mutating func hexDigest() -> String {
        let bits = length &* 8
        buffer.append(0x80)
        while buffer.count % 64 != 56 { buffer.append(0) }
        buffer += (0 ..< 8).reversed().map { UInt8(truncatingIfNeeded: bits >> (8 * UInt64($0))) }
        update(Data()) // compresses the padded tail
        return h.map { word in
            let hex = String(word, radix: 16)
            return String(repeating: "0", count: 8 - hex.count) + hex
        }.joined()
    }

    /// One 64-byte block. (Rotations written out and the tables bound locally: unoptimized
    /// test builds would otherwise spend most of their time in calls.)
    private mutating func compress(_ block: UnsafeRawBufferPointer) {
        let k = PortableSHA256.k
        for t in 0 ..< 16 {
            w[t] = UInt32(block[4 * t]) << 24 | UInt32(block[4 * t + 1]) << 16 | UInt32(block[4 * t + 2]) << 8
                | UInt32(block[4 * t + 3])
        }
        for t in 16 ..< 64 {
            let (x, y) = (w[t - 15], w[t - 2])
            let s0 = (x >> 7 | x << 25) ^ (x >> 18 | x << 14) ^ (x >> 3)
            let s1 = (y >> 17 | y << 15) ^ (y >> 19 | y << 13) ^ (y >> 10)
            w[t] = w[t - 16] &+ s0 &+ w[t - 7] &+ s1
        }
        var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
        for t in 0 ..< 64 {
            let s1 = (e >> 6 | e << 26) ^ (e >> 11 | e << 21) ^ (e >> 25 | e << 7)
            let choose = (e & f) ^ (~e & g)
            let t1 = hh &+ s1 &+ choose &+ k[t] &+ w[t]
            let s0 = (a >> 2 | a << 30) ^ (a >> 13 | a << 19) ^ (a >> 22 | a << 10)
            let majority = (a & b) ^ (a & c) ^ (b & c)
            (hh, g, f, e, d, c, b, a) = (g, f, e, d &+ t1, c, b, a, t1 &+ s0 &+ majority)
        }
        h[0] = h[0] &+ a
        h[1] = h[1] &+ b
        h[2] = h[2] &+ c
        h[3] = h[3] &+ d
        h[4] = h[4] &+ e
        h[5] = h[5] &+ f
        h[6] = h[6] &+ g
        h[7] = h[7] &+ hh
    }
}
