import Foundation

/// Every error a user can cause: a bad bundle, a bad prompt file, a setting the model
/// cannot take. The message says what was wrong and, where it helps, what to do.
/// Mirrors the Python hierarchy (`ConfigError`, `TokenizerError`, ...) as one enum.
public enum MobileDiffError: Error, Equatable, CustomStringConvertible {
    /// bundle.json is not valid JSON, lacks a field or has a wrong value.
    case invalidManifest(String)
    /// bundle.json has a `schema_version` this reader does not know.
    case unsupportedSchemaVersion(Int)
    /// A file the manifest names (or bundle.json itself) is not there.
    case missingFile(String)
    /// A file's size or sha256 differs from the manifest.
    case checksumMismatch(path: String, expected: String, actual: String)
    /// A path in the manifest is absolute, has a `..` segment or resolves outside the bundle.
    case pathOutsideBundle(String)
    /// vocab.json / merges.txt are malformed or disagree with the tokenizer settings.
    case tokenizer(String)
    /// A sampler or pipeline setting the manifest cannot support (steps, indices, ...).
    case config(String)
    /// A tensor does not have the shape the manifest (or the algorithm) requires.
    case shapeMismatch(what: String, expected: [Int], actual: [Int])
    /// A model runner failed (Core ML load or prediction).
    case runner(String)

    public var description: String {
        switch self {
        case let .invalidManifest(message):
            return "invalid bundle manifest: \(message)"
        case let .unsupportedSchemaVersion(version):
            return "bundle.json has schema_version \(version); this app reads version "
                + "\(BundleManifest.supportedSchemaVersion). Re-export the bundle with a "
                + "matching mobilediff, or update the app"
        case let .missingFile(path):
            return "missing file: \(path)"
        case let .checksumMismatch(path, expected, actual):
            return "\(path) does not match the manifest: expected \(expected), found \(actual)"
        case let .pathOutsideBundle(path):
            return "path \(path.debugDescription) in bundle.json points outside the bundle"
        case let .tokenizer(message):
            return "tokenizer: \(message)"
        case let .config(message):
            return message
        case let .shapeMismatch(what, expected, actual):
            return "\(what) has shape \(actual), expected \(expected)"
        case let .runner(message):
            return "model runner: \(message)"
        }
    }
}

extension MobileDiffError: LocalizedError {
    public var errorDescription: String? { description }
}
