package dev.mobilediff.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.jupiter.api.Assertions
import org.junit.jupiter.api.Assertions.assertTrue
import java.io.File
import kotlin.math.abs

/** The repository's golden vectors and tokenizer files, found from `-Dmobilediff.repo` or the working folder. */
object Vectors {
    val repo: File by lazy {
        System.getProperty("mobilediff.repo")?.let(::File)
            ?: generateSequence(File("").absoluteFile) { it.parentFile }
                .firstOrNull { File(it, "tests/vectors/tokenizer.json").isFile }
            ?: error("run the tests from the repository or pass -Dmobilediff.repo=<repo root>")
    }

    val vocabJson: File get() = File(repo, "models/tokenizer/vocab.json")
    val mergesTxt: File get() = File(repo, "models/tokenizer/merges.txt")

    /** OpenAI's CLIP vocabulary, loaded once for all tests. */
    val tokenizer: ClipTokenizer by lazy { ClipTokenizer.fromFiles(vocabJson, mergesTxt) }

    fun json(name: String): JSONObject = JSONObject(File(repo, "tests/vectors/$name").readText())
}

fun JSONArray.toDoubleArray(): DoubleArray = DoubleArray(length()) { getDouble(it) }

fun JSONArray.toFloatArray(): FloatArray = FloatArray(length()) { getDouble(it).toFloat() }

fun JSONArray.toIntArray(): IntArray = IntArray(length()) { getInt(it) }

/** `numpy.allclose`-style: every |got - want| <= atol + rtol * |want|. */
fun assertClose(want: DoubleArray, got: DoubleArray, atol: Double, rtol: Double, what: String) {
    assertTrue(want.size == got.size) { "$what: ${got.size} values, expected ${want.size}" }
    for (i in want.indices) {
        val limit = atol + rtol * abs(want[i])
        assertTrue(abs(got[i] - want[i]) <= limit) {
            "$what[$i]: got ${got[i]}, want ${want[i]} (off by ${abs(got[i] - want[i])}, limit $limit)"
        }
    }
}

/** JUnit's `assertThrows` for Kotlin (Debian's JUnit jars lack the Kotlin extensions). */
inline fun <reified T : Throwable> assertThrows(noinline block: () -> Unit): T =
    Assertions.assertThrows(T::class.java, block)
