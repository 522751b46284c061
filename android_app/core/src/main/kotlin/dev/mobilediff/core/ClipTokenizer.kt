package dev.mobilediff.core

import org.json.JSONException
import org.json.JSONObject
import java.io.File
import java.nio.ByteBuffer
import java.nio.charset.CharacterCodingException
import java.nio.charset.CodingErrorAction
import java.text.Normalizer
import java.util.Locale
import java.util.regex.Pattern

/**
 * CLIP's byte-level BPE tokenizer, from `vocab.json` + `merges.txt`; the Kotlin twin of
 * `mobilediff_export/tokenizer.py`, whose docstring explains the five steps. It gives the ids
 * of transformers' `CLIPTokenizer`; `tests/vectors/tokenizer.json` holds the ids to match.
 *
 * The traps, each handled the way Python's file does:
 * - whitespace is Unicode's White_Space property ([WHITESPACE_CLASS]); U+001C..U+001F are not
 *   whitespace, although `Character.isWhitespace` says they are;
 * - lower case is per code point with the full mapping (`İ` becomes `i̇`, a final `Σ` becomes
 *   `σ`), as `String.lowercase` of a one-character string gives it;
 * - special tokens count only when written literally in the prompt, in exact case.
 */
class ClipTokenizer(
    vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    val config: TokenizerConfig = TokenizerConfig(),
) {
    private val vocab = HashMap(vocab)
    private val mergeRanks = HashMap<String, Int>(merges.size * 2).apply {
        merges.forEachIndexed { rank, (left, right) -> putIfAbsent("$left $right", rank) }
    }
    private val byteSymbols = bytesToUnicode()
    private val special = mapOf(BOS_TOKEN to config.bosTokenId, EOS_TOKEN to config.eosTokenId)
    private val cache = HashMap<String, IntArray>()

    init {
        checkVocab(merges)
    }

    /** `bos + tokens + eos`, cut to `maxLength` with `eos` kept last; no padding. */
    fun encode(text: String): IntArray {
        val ids = ArrayList<Int>()
        ids += config.bosTokenId
        for ((part, isSpecial) in splitSpecial(text)) {
            if (isSpecial) {
                ids += special.getValue(part)
            } else {
                for (word in preTokenize(normalize(part))) bpe(word).forEach { ids += it }
            }
        }
        val kept = ids.take(config.maxLength - 1) + config.eosTokenId
        return kept.toIntArray()
    }

    /** The model input for one prompt: exactly `maxLength` ids, padded with `padTokenId`. */
    operator fun invoke(text: String): IntArray {
        val out = IntArray(config.maxLength) { config.padTokenId }
        encode(text).copyInto(out)
        return out
    }

    /** A batch of prompts, each padded to `maxLength`. */
    fun tokenize(texts: List<String>): List<IntArray> = texts.map { this(it) }

    /** Steps 4 and 5 for one word: bytes to symbols, then merges by rank; memoized. */
    private fun bpe(word: String): IntArray {
        cache[word]?.let { return it }
        var symbols = word.toByteArray(Charsets.UTF_8).map { byteSymbols[it.toInt() and 0xFF] }.toMutableList()
        symbols[symbols.lastIndex] = symbols.last() + END_OF_WORD
        while (symbols.size > 1) {
            var best: String? = null
            var bestRank = Int.MAX_VALUE
            for (i in 0 until symbols.size - 1) {
                val pair = "${symbols[i]} ${symbols[i + 1]}"
                val rank = mergeRanks[pair] ?: continue
                if (rank < bestRank) {
                    best = pair
                    bestRank = rank
                }
            }
            if (best == null) break
            val merged = ArrayList<String>(symbols.size)
            var i = 0
            while (i < symbols.size) {
                if (i + 1 < symbols.size && "${symbols[i]} ${symbols[i + 1]}" == best) {
                    merged += symbols[i] + symbols[i + 1]
                    i += 2
                } else {
                    merged += symbols[i]
                    i += 1
                }
            }
            symbols = merged
        }
        val ids = symbols.map { vocab[it] ?: throw TokenizerException("BPE made $it, which is not in the vocabulary") }
            .toIntArray()
        if (cache.size < CACHE_SIZE) cache[word] = ids
        return ids
    }

    private fun checkVocab(merges: List<Pair<String, String>>) {
        val missing = byteSymbols.flatMap { listOf(it, it + END_OF_WORD) }.filter { it !in vocab }
        if (missing.isNotEmpty()) {
            throw TokenizerException(
                "vocabulary lacks byte symbol ${missing[0]} (${missing.size} missing); it is not a " +
                    "byte-level CLIP vocabulary",
            )
        }
        if (config.maxLength < 2) {
            throw TokenizerException("tokenizer max_length ${config.maxLength} leaves no room for bos, eos")
        }
        for ((name, token, id) in listOf(
            Triple("bos_token_id", BOS_TOKEN, config.bosTokenId),
            Triple("eos_token_id", EOS_TOKEN, config.eosTokenId),
        )) {
            if (vocab[token] != id) {
                throw TokenizerException("tokenizer $name is $id but the vocabulary has $token at ${vocab[token]}")
            }
        }
        if (config.padTokenId !in vocab.values) {
            throw TokenizerException("tokenizer pad_token_id ${config.padTokenId} is not in the vocabulary")
        }
        merges.forEachIndexed { rank, (left, right) ->
            if (left + right !in vocab) {
                throw TokenizerException("merge $rank ($left $right) makes ${left + right}, which is not in the vocabulary")
            }
        }
    }

    companion object {
        const val BOS_TOKEN = "<|startoftext|>"
        const val EOS_TOKEN = "<|endoftext|>"
        const val END_OF_WORD = "</w>"
        private const val CACHE_SIZE = 100_000

        /**
         * The characters with Unicode's White_Space property, as a regex class body. Stable
         * since Unicode 6.3; spelled out because `\s` means different things on each platform.
         */
        const val WHITESPACE_CLASS =
            "\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"

        /** Python's `PATTERN` (step 3), with `\s` spelled out; matched case-sensitively. */
        val PATTERN: Pattern = Pattern.compile(
            "<\\|startoftext\\|>|<\\|endoftext\\|>" +
                "|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^$WHITESPACE_CLASS\\p{L}\\p{N}]+",
        )
        private val WHITESPACE: Pattern = Pattern.compile("[$WHITESPACE_CLASS]+")

        /** Load `vocab.json` + `merges.txt`. */
        fun fromFiles(vocabJson: File, mergesTxt: File, config: TokenizerConfig = TokenizerConfig()): ClipTokenizer =
            ClipTokenizer(readVocab(vocabJson), readMerges(mergesTxt), config)

        /** The byte -> printable character table of byte-level BPE, in vocabulary order. */
        fun bytesToUnicode(): List<String> {
            val printable = ('!'.code..'~'.code) + ('¡'.code..'¬'.code) + ('®'.code..'ÿ'.code)
            val table = arrayOfNulls<String>(256)
            printable.forEach { table[it] = it.toChar().toString() }
            var extra = 0
            for (b in 0 until 256) {
                if (table[b] == null) table[b] = (256 + extra++).toChar().toString()
            }
            return table.map { it!! }
        }

        /** Step 2: NFC, whitespace runs to one space, per-code-point lower case. */
        fun normalize(text: String): String {
            val nfc = Normalizer.normalize(text, Normalizer.Form.NFC)
            val spaced = WHITESPACE.matcher(nfc).replaceAll(" ")
            val out = StringBuilder(spaced.length)
            spaced.codePoints().forEach { out.append(String(Character.toChars(it)).lowercase(Locale.ROOT)) }
            return out.toString()
        }

        /** Step 3 on normalized text: the words BPE runs on. */
        fun preTokenize(text: String): List<String> {
            val words = ArrayList<String>()
            val matcher = PATTERN.matcher(text)
            while (matcher.find()) {
                val word = matcher.group()
                if (word == BOS_TOKEN || word == EOS_TOKEN) {
                    words += listOf("<|", word.substring(2, word.length - 2), "|>")
                } else {
                    words += word
                }
            }
            return words
        }

        /** Step 1: the prompt split around literal special tokens; `true` marks a special token. */
        fun splitSpecial(text: String): List<Pair<String, Boolean>> {
            val parts = ArrayList<Pair<String, Boolean>>()
            var start = 0
            while (true) {
                val next = listOf(BOS_TOKEN, EOS_TOKEN)
                    .map { it to text.indexOf(it, start) }
                    .filter { it.second >= 0 }
                    .minByOrNull { it.second }
                if (next == null) {
                    parts += text.substring(start) to false
                    return parts
                }
                val (token, at) = next
                parts += text.substring(start, at) to false
                parts += token to true
                start = at + token.length
            }
        }

        /** `vocab.json`: a JSON object from token string to id. */
        fun readVocab(file: File): Map<String, Int> {
            val json = try {
                JSONObject(readUtf8(file, "vocabulary file"))
            } catch (e: JSONException) {
                throw TokenizerException("$file is not a JSON object of token -> id: ${e.message}", e)
            }
            val vocab = HashMap<String, Int>(json.length() * 2)
            for (token in json.keys()) {
                val id = json.get(token)
                if (id !is Int || id < 0) throw TokenizerException("$file: token $token has id $id, not an integer >= 0")
                vocab[token] = id
            }
            return vocab
        }

        /** `merges.txt`: an optional `#version` line, then one `left right` pair a line. */
        fun readMerges(file: File): List<Pair<String, String>> {
            val lines = readUtf8(file, "merges file").split("\n")
            val merges = ArrayList<Pair<String, String>>(lines.size)
            lines.forEachIndexed { index, line ->
                if (line.isEmpty() || (index == 0 && line.startsWith("#version"))) return@forEachIndexed
                val parts = line.split(" ")
                if (parts.size != 2 || parts.any { it.isEmpty() }) {
                    throw TokenizerException("$file:${index + 1}: a merge is two tokens and a space, got '$line'")
                }
                merges += parts[0] to parts[1]
            }
            return merges
        }

        private fun readUtf8(file: File, what: String): String {
            if (!file.isFile) throw TokenizerException("$what not found: $file")
            val decoder = Charsets.UTF_8.newDecoder()
                .onMalformedInput(CodingErrorAction.REPORT)
                .onUnmappableCharacter(CodingErrorAction.REPORT)
            return try {
                decoder.decode(ByteBuffer.wrap(file.readBytes())).toString()
            } catch (e: CharacterCodingException) {
                throw TokenizerException("$what $file is not UTF-8 text", e)
            }
        }
    }
}

/** The tokenizer settings the manifest carries (`tokenizer` in `bundle.json`); CLIP's by default. */
data class TokenizerConfig(
    val maxLength: Int = 77,
    val bosTokenId: Int = 49406,
    val eosTokenId: Int = 49407,
    val padTokenId: Int = 49407,
)
