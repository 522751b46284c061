import Foundation
import XCTest
@testable import MobileDiffCore

final class SHA256Tests: XCTestCase {
    private func portable(_ pieces: [Data]) -> String {
        var sha = PortableSHA256()
        pieces.forEach { sha.update($0) }
        return sha.hexDigest()
    }

    /// FIPS 180-2's examples.
    func testKnownDigests() {
        XCTAssertEqual(portable([Data()]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(portable([Data("abc".utf8)]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(portable([Data("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)]),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(portable([Data(repeating: UInt8(ascii: "a"), count: 1_000_000)]),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        XCTAssertEqual(SHA256Hasher.hex(Data("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    func testPiecesGiveTheSameDigestAsTheWhole() {
        let data = Data((0 ..< 1000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        let whole = portable([data])
        for cut in [1, 55, 56, 63, 64, 65, 128, 999] {
            XCTAssertEqual(portable([data.prefix(cut), data.dropFirst(cut)]), whole, "cut at \(cut)")
        }
        XCTAssertEqual(portable(stride(from: 0, to: 1000, by: 7).map { data[$0 ..< min($0 + 7, 1000)] }), whole)
    }

    func testFileDigestAndMissingFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sha-\(UUID().uuidString)")
        try Data("abc".utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertEqual(try SHA256Hasher.hex(fileAt: url), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertThrowsError(try SHA256Hasher.hex(fileAt: url.appendingPathExtension("missing")))
    }
}
