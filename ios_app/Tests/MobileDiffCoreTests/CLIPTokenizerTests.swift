import Foundation
import XCTest
@testable import MobileDiffCore

/// tests/vectors/tokenizer.json: ids from transformers' CLIPTokenizer, to match exactly.
private struct TokenizerVectors: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int]
        let padded: [Int]
    }

    struct Meta: Decodable {
        let max_length: Int
        let bos_token_id: Int
        let eos_token_id: Int
        let pad_token_id: Int
        let vocab_sha256: String
        let merges_sha256: String
    }

    let cases: [Case]
    let meta: Meta
}

final class CLIPTokenizerTests: XCTestCase {
    private let tokenizer = Repo.tokenizer

    func testEveryVectorGivesTransformersIds() throws {
        let vectors = try Repo.vector("tokenizer.json", as: TokenizerVectors.self)
        XCTAssertEqual(vectors.cases.count, 70)
        XCTAssertEqual(tokenizer.config, TokenizerConfig(
            maxLength: vectors.meta.max_length, bosTokenId: vectors.meta.bos_token_id,
            eosTokenId: vectors.meta.eos_token_id, padTokenId: vectors.meta.pad_token_id))
        for vector in vectors.cases {
            XCTAssertEqual(tokenizer.encode(vector.text), vector.ids, "encode(\(vector.text.debugDescription))")
            XCTAssertEqual(tokenizer(vector.text), vector.padded, "padded \(vector.text.debugDescription)")
        }
    }

    func testVocabularyFilesAreTheOnesTheVectorsWereMadeFrom() throws {
        let meta = try Repo.vector("tokenizer.json", as: TokenizerVectors.self).meta
        XCTAssertEqual(try SHA256Hasher.hex(fileAt: Repo.url("models/tokenizer/vocab.json")), meta.vocab_sha256)
        XCTAssertEqual(try SHA256Hasher.hex(fileAt: Repo.url("models/tokenizer/merges.txt")), meta.merges_sha256)
        XCTAssertEqual(tokenizer.vocab.count, 49408)
    }

    func testBatchIsPaddedRows() {
        let rows = tokenizer.tokenize(["", "a photo of a cat"])
        XCTAssertEqual(rows.map(\.count), [77, 77])
        XCTAssertEqual(Array(rows[0].prefix(3)), [49406, 49407, 49407])
        XCTAssertEqual(Array(rows[1].prefix(7)), [49406, 320, 1125, 539, 320, 2368, 49407])
    }

    func testNormalizeUsesUnicodeWhitespaceAndPerCodePointLowerCase() {
        func normalize(_ text: String) -> String {
            String(String.UnicodeScalarView(CLIPTokenizer.normalize(Array(text.unicodeScalars))))
        }
        XCTAssertEqual(normalize("a \t\n\u{3000}b"), "a b")
        XCTAssertEqual(normalize("\u{1C}x"), "\u{1C}x", "U+001C is not White_Space")
        XCTAssertEqual(normalize("ΟΔΟΣ"), "οδοσ", "no final-sigma rule")
        XCTAssertEqual(normalize("İ"), "i\u{307}")
        XCTAssertEqual(normalize("cafe\u{301}").unicodeScalars.count, 4, "NFC composes é")
    }

    func testPreTokenizeFollowsThePatternAlternativesInOrder() {
        func words(_ text: String) -> [String] { CLIPTokenizer.preTokenize(Array(text.unicodeScalars)) }
        XCTAssertEqual(words("don't stop"), ["don", "'t", "stop"])
        XCTAssertEqual(words("''s"), ["''", "s"], "a punctuation run swallows the apostrophe")
        XCTAssertEqual(words("abc123"), ["abc", "1", "2", "3"])
        XCTAssertEqual(words("<|endoftext|>"), ["<|", "endoftext", "|>"])
        XCTAssertEqual(words("!<|endoftext|>"), ["!<|", "endoftext", "|>"])
    }

    func testLiteralSpecialTokensBecomeTheirIds() {
        XCTAssertEqual(tokenizer.encode("<|endoftext|>"), [49406, 49407, 49407])
        XCTAssertNotEqual(tokenizer.encode("<|ENDOFTEXT|>"), [49406, 49407, 49407])
    }

    func testTruncationKeepsEosLast() {
        let ids = tokenizer.encode(String(repeating: "a ", count: 200))
        XCTAssertEqual(ids.count, 77)
        XCTAssertEqual(ids.last, 49407)
    }

    func testBadFilesGiveClearErrors() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("tok-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let vocab = folder.appendingPathComponent("vocab.json")
        let merges = folder.appendingPathComponent("merges.txt")

        XCTAssertThrowsError(try CLIPTokenizer.readVocab(vocab)) { error in
            XCTAssertEqual(error as? MobileDiffError, .missingFile("vocabulary file \(vocab.path)"))
        }
        try Data("[1, 2]".utf8).write(to: vocab)
        XCTAssertThrowsError(try CLIPTokenizer.readVocab(vocab)) { error in
            XCTAssertTrue("\(error)".contains("must hold a JSON object"), "\(error)")
        }
        try Data("#version: 0.2\na b\nc\n".utf8).write(to: merges)
        XCTAssertThrowsError(try CLIPTokenizer.readMerges(merges)) { error in
            XCTAssertTrue("\(error)".contains("merges.txt:3: a merge is two tokens and a space"), "\(error)")
        }
        XCTAssertThrowsError(try CLIPTokenizer(vocab: ["a": 0], merges: [])) { error in
            XCTAssertTrue("\(error)".contains("lacks byte symbol"), "\(error)")
        }
        let wrongBos = TokenizerConfig(bosTokenId: 1)
        XCTAssertThrowsError(try CLIPTokenizer(vocab: tokenizer.vocab, merges: [], config: wrongBos)) { error in
            XCTAssertTrue("\(error)".contains("bos_token_id is 1 but the vocabulary has <|startoftext|> at 49406"), "\(error)")
        }
        XCTAssertThrowsError(try CLIPTokenizer(vocab: tokenizer.vocab, merges: [("x", "qqqq")])) { error in
            XCTAssertTrue("\(error)".contains("which is not in the vocabulary"), "\(error)")
        }
    }
}
