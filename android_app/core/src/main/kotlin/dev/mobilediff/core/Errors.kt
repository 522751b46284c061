package dev.mobilediff.core

/**
 * The exceptions this library throws on bad input: a bundle that is malformed, incomplete or
 * changed, a prompt or vocabulary it cannot read, an option the bundle cannot honour.
 *
 * Each message says what was wrong and what to do, so an app can show it as one line. The
 * hierarchy is sealed and mirrors `mobilediff_export/errors.py`; anything else escaping the
 * library (an [IllegalArgumentException] from a wrong call) is a programming error.
 */
sealed class MobileDiffException(message: String, cause: Throwable? = null) :
    Exception(message, cause)

/** `bundle.json` is not valid JSON, lacks a field, has a wrong type or value, or a path leaves the bundle. */
class ManifestException(message: String, cause: Throwable? = null) : MobileDiffException(message, cause)

/** `bundle.json` has a `schema_version` this reader does not know. */
class UnsupportedSchemaVersionException(val found: Int) : MobileDiffException(
    "bundle.json has schema_version $found; this app reads version $SCHEMA_VERSION. " +
        "Export the bundle again with a matching mobilediff, or update the app.",
)

/** A file the manifest names is not in the bundle folder. */
class MissingFileException(val path: String, where: String) : MobileDiffException(
    "$where: $path is missing from the bundle; push the whole bundle folder again",
)

/** A bundle file's size or sha256 differs from what the manifest records. */
class ChecksumMismatchException(val path: String, what: String, expected: String, actual: String) :
    MobileDiffException(
        "$path: $what is $actual but bundle.json says $expected; the file is incomplete or " +
            "changed, push the bundle again",
    )

/** A tensor (declared in the manifest, or returned by a model) has the wrong shape. */
class ShapeMismatchException(what: String, expected: String, actual: String) :
    MobileDiffException("$what: expected shape $expected, got $actual")

/** Tokenizer files are malformed or do not fit the tokenizer settings. */
class TokenizerException(message: String, cause: Throwable? = null) : MobileDiffException(message, cause)

/** An option (number of steps, ...) that this bundle cannot run with. */
class ConfigException(message: String) : MobileDiffException(message)
