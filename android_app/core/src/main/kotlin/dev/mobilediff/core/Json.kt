package dev.mobilediff.core

import org.json.JSONArray
import org.json.JSONObject

/**
 * Typed, strict reads from one JSON object of the manifest. Every failure is a
 * [ManifestException] that names the field by its path (`pipeline.sampler.timesteps`), so a
 * user sees which part of `bundle.json` to fix. org.json's own getters coerce ("5" reads as
 * 5, 2.7 as 2); these do not.
 */
internal class JsonFields(private val obj: JSONObject, private val where: String) {
    fun has(name: String): Boolean = obj.has(name) && !obj.isNull(name)

    fun string(name: String): String = get(name) as? String ?: wrongType(name, "a string")

    fun optString(name: String): String? = if (has(name)) string(name) else null

    fun int(name: String): Int {
        val value = get(name)
        if ((value is Int || value is Long) && (value as Number).toLong() in Int.MIN_VALUE..Int.MAX_VALUE) {
            return value.toInt()
        }
        wrongType(name, "an integer")
    }

    fun optInt(name: String): Int? = if (has(name)) int(name) else null

    fun long(name: String): Long {
        val value = get(name)
        return if (value is Int || value is Long) (value as Number).toLong() else wrongType(name, "an integer")
    }

    fun double(name: String): Double = (get(name) as? Number)?.toDouble() ?: wrongType(name, "a number")

    fun optBoolean(name: String): Boolean? =
        if (has(name)) get(name) as? Boolean ?: wrongType(name, "true or false") else null

    fun obj(name: String): JsonFields =
        JsonFields(get(name) as? JSONObject ?: wrongType(name, "an object"), path(name))

    fun array(name: String): JSONArray = get(name) as? JSONArray ?: wrongType(name, "an array")

    fun oneOf(name: String, allowed: Collection<String>): String {
        val value = string(name)
        if (value !in allowed) fail("${path(name)} must be one of ${allowed.joinToString()}; got '$value'")
        return value
    }

    fun doubles(name: String): DoubleArray {
        val array = array(name)
        return DoubleArray(array.length()) {
            (array.get(it) as? Number)?.toDouble() ?: fail("${path(name)}[$it] must be a number; got ${array.get(it)}")
        }
    }

    fun optDoubles(name: String): DoubleArray? = if (has(name)) doubles(name) else null

    fun ints(name: String): IntArray {
        val array = array(name)
        return IntArray(array.length()) {
            val value = array.get(it)
            if (value is Int) value else fail("${path(name)}[$it] must be an integer; got $value")
        }
    }

    fun optInts(name: String): IntArray? = if (has(name)) ints(name) else null

    /** Each element of an array of objects, with its own path for messages. */
    fun objects(name: String): List<JsonFields> {
        val array = array(name)
        return (0 until array.length()).map {
            JsonFields(array.get(it) as? JSONObject ?: fail("${path(name)}[$it] must be an object"), "${path(name)}[$it]")
        }
    }

    /** The names and values of an object whose keys are data (a map). */
    fun entries(): List<Pair<String, JsonFields>> = obj.keys().asSequence().map { key ->
        key to JsonFields(obj.get(key) as? JSONObject ?: fail("${path(key)} must be an object"), path(key))
    }.toList()

    fun path(name: String): String = if (where.isEmpty()) name else "$where.$name"

    fun fail(message: String): Nothing = throw ManifestException("bundle.json: $message")

    private fun get(name: String): Any {
        if (!obj.has(name)) fail("${path(name)} is missing")
        val value = obj.get(name)
        if (value == JSONObject.NULL) fail("${path(name)} must not be null")
        return value
    }

    private fun wrongType(name: String, what: String): Nothing {
        val value = obj.get(name)
        val shown = if (value is String) "\"$value\"" else value.toString()
        fail("${path(name)} must be $what; got ${shown.take(60)}")
    }
}
