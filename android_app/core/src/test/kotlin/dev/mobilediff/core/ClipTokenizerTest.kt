package dev.mobilediff.core

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.DynamicTest
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.TestFactory
import java.io.File
import java.nio.file.Files

class ClipTokenizerTest {
    private val vectors = Vectors.json("tokenizer.json")

    @TestFactory
    fun `every case of tokenizer json, ids and padded`(): List<DynamicTest> {
        val cases = vectors.getJSONArray("cases")
        return (0 until cases.length()).map { index ->
            val case = cases.getJSONObject(index)
            val text = case.getString("text")
            DynamicTest.dynamicTest("case $index: ${text.take(40).replace(Regex("\\s"), " ")}") {
                assertArrayEquals(case.getJSONArray("ids").toIntArray(), Vectors.tokenizer.encode(text), "ids")
                assertArrayEquals(case.getJSONArray("padded").toIntArray(), Vectors.tokenizer(text), "padded")
            }
        }
    }

    @Test
    fun `the vectors were made from the vocabulary we load`() {
        val meta = vectors.getJSONObject("meta")
        assertEquals(meta.getString("vocab_sha256"), BundleManifest.sha256Hex(Vectors.vocabJson))
        assertEquals(meta.getString("merges_sha256"), BundleManifest.sha256Hex(Vectors.mergesTxt))
        assertEquals(TokenizerConfig(77, 49406, 49407, 49407), Vectors.tokenizer.config)
        assertEquals(meta.getInt("max_length"), Vectors.tokenizer.config.maxLength)
    }

    @Test
    fun `whitespace is Unicode White_Space, information separators are not`() {
        assertEquals("a b c", ClipTokenizer.normalize("a\u00a0\u2003 b\u0085c"))
        assertEquals("a\u001cb", ClipTokenizer.normalize("a\u001cb"))
    }

    @Test
    fun `lower case is per code point with the full mapping`() {
        assertEquals("i\u0307stanbul", ClipTokenizer.normalize("\u0130stanbul"))
        assertEquals("οδοσ", ClipTokenizer.normalize("ΟΔΟΣ")) // no final-sigma rule
    }

    @Test
    fun `special tokens count only when written in exact case`() {
        val tok = Vectors.tokenizer
        assertEquals(3, tok.encode("<|endoftext|>").size)
        assertEquals(listOf("<|", "endoftext", "|>"), ClipTokenizer.preTokenize(ClipTokenizer.normalize("<|ENDOFTEXT|>")))
    }

    @Test
    fun `long prompts are cut to max_length with eos last`() {
        val ids = Vectors.tokenizer.encode("a ".repeat(200))
        assertEquals(77, ids.size)
        assertEquals(49406, ids.first())
        assertEquals(49407, ids.last())
    }

    @Test
    fun `malformed files give a TokenizerException`() {
        val dir = Files.createTempDirectory("tok").toFile()
        val vocab = File(dir, "vocab.json").apply { writeText("[1, 2]") }
        val merges = File(dir, "merges.txt").apply { writeText("#version: 0.2\na b c\n") }
        assertThrows<TokenizerException> { ClipTokenizer.readVocab(vocab) }
        assertThrows<TokenizerException> { ClipTokenizer.readMerges(merges) }
        assertThrows<TokenizerException> { ClipTokenizer.readVocab(File(dir, "absent.json")) }
        assertThrows<TokenizerException> { ClipTokenizer(mapOf("a" to 0), emptyList()) }
        dir.deleteRecursively()
    }
}
