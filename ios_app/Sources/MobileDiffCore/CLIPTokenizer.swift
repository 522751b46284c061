import Foundation

/// The tokenizer settings the manifest's `tokenizer` object carries.
public struct TokenizerConfig: Equatable, Sendable {
    public var maxLength = 77
    public var bosTokenId = 49406
    public var eosTokenId = 49407
    public var padTokenId = 49407

    public init(maxLength: Int = 77, bosTokenId: Int = 49406, eosTokenId: Int = 49407, padTokenId: Int = 49407) {
        self.maxLength = maxLength
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.padTokenId = padTokenId
    }
}

/// CLIP's byte-level BPE tokenizer from `vocab.json` + `merges.txt`; the same ids as
/// transformers' `CLIPTokenizer` and as `mobilediff_export/tokenizer.py`, whose docstring
/// is the specification. A prompt becomes ids in five steps:
///
/// 1. Special tokens written literally (exact case) become their ids; the text between
///    them is tokenized on its own.
/// 2. `normalize`: Unicode NFC, whitespace runs to one space, per-code-point lower case.
/// 3. `preTokenize`: contractions, letter runs, single digits, runs of other non-space
///    characters. A lower-cased special token is split into `<|`, its name, `|>`.
/// 4. Each word's UTF-8 bytes become printable symbols (`bytesToUnicode`), the last one
///    with `</w>`.
/// 5. BPE: adjacent symbols merge, lowest rank first.
///
/// All text handling works on Unicode scalars (code points), never on Swift `Character`s:
/// Python's regex sees code points, and a grapheme cluster would hide a combining mark
/// that follows `>` or an apostrophe. Character classes are Unicode's: `\p{L}` letters,
/// `\p{N}` numbers, whitespace the White_Space property (so U+001C..U+001F are *not*
/// whitespace, whatever `Character.isWhitespace` says).
public struct CLIPTokenizer: Sendable {
    public static let bosToken = "<|startoftext|>"
    public static let eosToken = "<|endoftext|>"
    public static let endOfWord = "</w>"

    public let config: TokenizerConfig
    public let vocab: [String: Int]
    private let mergeRanks: [Pair: Int]
    private let byteSymbols: [String] = CLIPTokenizer.bytesToUnicode()

    /// Symbols are strings of `bytesToUnicode` characters, none of them a combining mark,
    /// so Swift's String equality (canonical equivalence) is code-point equality here.
    private struct Pair: Hashable {
        let left: String
        let right: String
    }

    public init(vocab: [String: Int], merges: [(String, String)], config: TokenizerConfig = TokenizerConfig()) throws {
        try CLIPTokenizer.checkVocab(vocab, merges, config)
        self.vocab = vocab
        self.config = config
        var ranks: [Pair: Int] = [:]
        for (rank, merge) in merges.enumerated() {
            ranks[Pair(left: merge.0, right: merge.1)] = rank // a repeated pair keeps its last rank, as in Python
        }
        mergeRanks = ranks
    }

    /// Loads `vocab.json` and `merges.txt`.
    public init(vocabURL: URL, mergesURL: URL, config: TokenizerConfig = TokenizerConfig()) throws {
        try self.init(
            vocab: CLIPTokenizer.readVocab(vocabURL), merges: CLIPTokenizer.readMerges(mergesURL), config: config)
    }

    // MARK: encoding

    /// `bos + tokens + eos`, cut to `maxLength` with `eos` kept last; no padding.
    public func encode(_ text: String) -> [Int] {
        var ids = [config.bosTokenId]
        for part in CLIPTokenizer.splitSpecialTokens(Array(text.unicodeScalars)) {
            switch part {
            case let .special(token):
                ids.append(vocab[token]!) // checkVocab made sure both special tokens exist
            case let .text(scalars):
                for word in CLIPTokenizer.preTokenize(CLIPTokenizer.normalize(scalars)) {
                    ids += bpe(word)
                }
            }
        }
        return Array(ids.prefix(config.maxLength - 1)) + [config.eosTokenId]
    }

    /// The model input for one prompt: exactly `maxLength` ids, padded with `padTokenId`.
    public func callAsFunction(_ text: String) -> [Int] {
        let ids = encode(text)
        return ids + [Int](repeating: config.padTokenId, count: config.maxLength - ids.count)
    }

    /// A batch of prompts, each padded to `maxLength`.
    public func tokenize(_ texts: [String]) -> [[Int]] {
        texts.map { self($0) }
    }

    // MARK: the five steps

    enum Part: Equatable {
        case special(String)
        case text([Unicode.Scalar])
    }

    /// Step 1: the literal special tokens (exact case) and the text between them.
    static func splitSpecialTokens(_ text: [Unicode.Scalar]) -> [Part] {
        let specials = [bosToken, eosToken].map { Array($0.unicodeScalars) }
        var parts: [Part] = []
        var start = 0
        var i = 0
        while i < text.count {
            if let special = specials.first(where: { text[i...].starts(with: $0) }) {
                if start < i { parts.append(.text(Array(text[start ..< i]))) }
                parts.append(.special(String(String.UnicodeScalarView(special))))
                i += special.count
                start = i
            } else {
                i += 1
            }
        }
        if start < text.count { parts.append(.text(Array(text[start...]))) }
        return parts
    }

    /// Step 2: NFC, every whitespace run to one space, each code point lower-cased on its
    /// own (a final capital sigma becomes `σ`, not `ς`; `İ` becomes `i` + U+0307).
    public static func normalize(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        let nfc = String(String.UnicodeScalarView(text)).precomposedStringWithCanonicalMapping
        var out: [Unicode.Scalar] = []
        var inWhitespace = false
        for scalar in nfc.unicodeScalars {
            if scalar.properties.isWhitespace {
                if !inWhitespace { out.append(" ") }
                inWhitespace = true
            } else {
                out += scalar.properties.lowercaseMapping.unicodeScalars
                inWhitespace = false
            }
        }
        return out
    }

    /// Step 3 on normalized text: CLIP's pattern
    /// `<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`
    /// matched case-sensitively, leftmost alternative first, whitespace dropped.
    public static func preTokenize(_ text: [Unicode.Scalar]) -> [String] {
        let specials = [bosToken, eosToken].map { Array($0.unicodeScalars) }
        let contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"].map { Array($0.unicodeScalars) }
        var words: [String] = []
        var i = 0
        func take(_ count: Int) {
            words.append(String(String.UnicodeScalarView(text[i ..< i + count])))
            i += count
        }
        func run(while belongs: (Unicode.Scalar) -> Bool) -> Int {
            var end = i
            while end < text.count, belongs(text[end]) { end += 1 }
            return end - i
        }
        while i < text.count {
            let scalar = text[i]
            if isWhitespace(scalar) {
                i += 1
            } else if let special = specials.first(where: { text[i...].starts(with: $0) }) {
                // Only a differently-cased special token gets here (step 1 took the exact
                // ones): transformers' byte-level pre-tokenizer splits it up.
                let name = special[2 ..< special.count - 2]
                words += ["<|", String(String.UnicodeScalarView(name)), "|>"]
                i += special.count
            } else if let contraction = contractions.first(where: { text[i...].starts(with: $0) }) {
                take(contraction.count)
            } else if isLetter(scalar) {
                take(run(while: isLetter))
            } else if isNumber(scalar) {
                take(1)
            } else {
                take(run(while: { !isWhitespace($0) && !isLetter($0) && !isNumber($0) }))
            }
        }
        return words
    }

    /// Step 4's table (GPT-2's, used by CLIP): byte -> printable character. Printable
    /// Latin-1 bytes stand for themselves; the other 68 take U+0100 on, in byte order.
    public static func bytesToUnicode() -> [String] {
        let printable = Set(Array(0x21 ... 0x7E) + Array(0xA1 ... 0xAC) + Array(0xAE ... 0xFF))
        var extra = 0
        return (0 ..< 256).map { byte in
            if printable.contains(byte) { return String(UnicodeScalar(UInt8(byte))) }
            defer { extra += 1 }
            return String(UnicodeScalar(UInt32(256 + extra))!)
        }
    }

    /// Steps 4 and 5 for one word.
    func bpe(_ word: String) -> [Int] {
        var symbols = word.utf8.map { byteSymbols[Int($0)] }
        symbols[symbols.count - 1] += CLIPTokenizer.endOfWord
        while symbols.count > 1 {
            // The pair with the lowest rank; the first one on a tie, as Python's min().
            var best: (pair: Pair, rank: Int)?
            for k in 0 ..< symbols.count - 1 {
                let pair = Pair(left: symbols[k], right: symbols[k + 1])
                if let rank = mergeRanks[pair], rank < (best?.rank ?? Int.max) { best = (pair, rank) }
            }
            guard let pair = best?.pair else { break }
            var merged: [String] = []
            var k = 0
            while k < symbols.count {
                if k + 1 < symbols.count, symbols[k] == pair.left, symbols[k + 1] == pair.right {
                    merged.append(pair.left + pair.right)
                    k += 2
                } else {
                    merged.append(symbols[k])
                    k += 1
                }
            }
            symbols = merged
        }
        return symbols.map { vocab[$0]! } // checkVocab: byte symbols and merge results exist
    }

    static func isWhitespace(_ scalar: Unicode.Scalar) -> Bool { scalar.properties.isWhitespace }

    static func isLetter(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    static func isNumber(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    // MARK: files

    /// `vocab.json`: a JSON object from token string to id.
    public static func readVocab(_ url: URL) throws -> [String: Int] {
        let data = try readFile(url, "vocabulary file")
        guard let vocab = try? JSONDecoder().decode([String: Int].self, from: data) else {
            throw MobileDiffError.tokenizer("\(url.path) must hold a JSON object of token -> integer id")
        }
        if let (token, id) = vocab.first(where: { $0.value < 0 }) {
            throw MobileDiffError.tokenizer("\(url.path): token \(token.debugDescription) has id \(id), not >= 0")
        }
        return vocab
    }

    /// `merges.txt`: an optional `#version` line, then one `left right` pair a line.
    public static func readMerges(_ url: URL) throws -> [(String, String)] {
        let data = try readFile(url, "merges file")
        guard let text = String(data: data, encoding: .utf8) else {
            throw MobileDiffError.tokenizer("merges file \(url.path) is not UTF-8 text")
        }
        var lines = text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.first?.hasPrefix("#version") == true { lines.removeFirst() }
        var merges: [(String, String)] = []
        for (index, line) in lines.enumerated() where !line.isEmpty {
            let parts = line.unicodeScalars.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw MobileDiffError.tokenizer(
                    "\(url.path):\(index + 2): a merge is two tokens and a space, got \(line.debugDescription)")
            }
            merges.append((parts[0], parts[1]))
        }
        return merges
    }

    private static func readFile(_ url: URL, _ what: String) throws -> Data {
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw MobileDiffError.missingFile("\(what) \(url.path)")
        }
        do {
            return try Data(contentsOf: url)
        } catch {
            throw MobileDiffError.tokenizer("cannot read \(what) \(url.path): \(error.localizedDescription)")
        }
    }

    private static func checkVocab(_ vocab: [String: Int], _ merges: [(String, String)], _ config: TokenizerConfig) throws {
        for symbol in bytesToUnicode() {
            for token in [symbol, symbol + endOfWord] where vocab[token] == nil {
                throw MobileDiffError.tokenizer(
                    "vocabulary lacks byte symbol \(token.debugDescription); it is not a byte-level CLIP vocabulary")
            }
        }
        if config.maxLength < 2 {
            throw MobileDiffError.tokenizer("max_length \(config.maxLength) leaves no room for bos, eos")
        }
        for (name, token, id) in [("bos_token_id", bosToken, config.bosTokenId), ("eos_token_id", eosToken, config.eosTokenId)]
            where vocab[token] != id {
            throw MobileDiffError.tokenizer(
                "\(name) is \(id) but the vocabulary has \(token) at \(vocab[token].map(String.init) ?? "no id")")
        }
        if !vocab.values.contains(config.padTokenId) {
            throw MobileDiffError.tokenizer("pad_token_id \(config.padTokenId) is not in the vocabulary")
        }
        for (rank, (left, right)) in merges.enumerated() where vocab[left + right] == nil {
            throw MobileDiffError.tokenizer(
                "merge \(rank) (\(left.debugDescription) \(right.debugDescription)) makes "
                    + "\((left + right).debugDescription), which is not in the vocabulary")
        }
    }
}
