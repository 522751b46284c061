import Foundation

/// A bundle folder opened for one target: its validated manifest, and the files of that
/// target and of the tokenizer checked to be present, inside the folder and (on request)
/// unchanged.
///
/// Files of other targets (the .tflite models on iOS) are not needed and not checked, so
/// a bundle trimmed to its Core ML part still opens.
public struct MobileDiffBundle: Sendable {
    public static let manifestName = "bundle.json"

    public let url: URL
    public let manifest: BundleManifest
    /// sha256 of bundle.json's bytes: names the exact bundle in benchmark results.
    public let manifestSHA256: String
    /// The target whose networks are used (`coreml` on iOS).
    public let target: String

    /// Opens `url`, validates bundle.json and checks that the files `target` and the
    /// tokenizer use exist with the manifest's sizes; with `verifyChecksums` their sha256
    /// too (this reads every byte: seconds for a paper-size model).
    public init(at url: URL, target: String = "coreml", verifyChecksums: Bool = false) throws {
        self.url = url.standardizedFileURL
        self.target = target
        let manifestURL = self.url.appendingPathComponent(Self.manifestName)
        guard let data = FileManager.default.contents(atPath: manifestURL.path) else {
            throw MobileDiffError.missingFile(
                "\(manifestURL.path): a bundle folder holds bundle.json (made by `mobilediff export -o BUNDLE`)")
        }
        manifest = try BundleManifest.decode(data)
        manifestSHA256 = SHA256Hasher.hex(data)
        guard manifest.components[target] != nil else {
            let present = manifest.components.keys.sorted().joined(separator: ", ")
            throw MobileDiffError.invalidManifest(
                "the bundle has no \(target) models (it has: \(present)); export it with --target \(target)")
        }
        try checkFiles(checksums: verifyChecksums)
    }

    /// The networks of this bundle's target.
    public var components: BundleManifest.Target { manifest.components[target]! }

    /// The tokenizer the manifest describes.
    public func makeTokenizer() throws -> CLIPTokenizer {
        let spec = manifest.tokenizer
        return try CLIPTokenizer(
            vocabURL: resolve(spec.vocab), mergesURL: resolve(spec.merges), config: spec.config)
    }

    /// The location of a manifest path, refused if it leaves the bundle (also through a
    /// symbolic link). A path to nothing comes back as is, for the caller to report missing
    /// (Apple's symlink resolution treats existing and missing paths differently: /private).
    public func resolve(_ path: String) throws -> URL {
        try BundleManifest.checkPath(path, "path")
        let candidate = url.appendingPathComponent(path)
        guard FileManager.default.fileExists(atPath: candidate.path) else { return candidate }
        let resolved = candidate.resolvingSymlinksInPath()
        guard resolved.path.hasPrefix(url.resolvingSymlinksInPath().path + "/") else {
            throw MobileDiffError.pathOutsideBundle(path)
        }
        return resolved
    }

    /// The paths this bundle uses: the tokenizer files and the target's model files.
    public var usedPaths: [String] {
        [manifest.tokenizer.vocab, manifest.tokenizer.merges] + ComponentRole.allCases.map { components[$0].file }
    }

    /// Present, inside the bundle, of the listed size; and of the listed sha256 if asked,
    /// each model too (a file's hash, or a folder's as `folderSHA256` computes it).
    public func checkFiles(checksums: Bool) throws {
        let fm = FileManager.default
        for path in usedPaths {
            guard fm.fileExists(atPath: try resolve(path).path) else { throw MobileDiffError.missingFile(path) }
        }
        let listed = manifest.files.keys.filter { file in
            usedPaths.contains { file == $0 || file.hasPrefix($0 + "/") }
        }
        for path in listed.sorted() {
            let entry = manifest.files[path]!
            let fileURL = try resolve(path)
            guard let size = (try? fm.attributesOfItem(atPath: fileURL.path))?[.size] as? NSNumber else {
                throw MobileDiffError.missingFile(path)
            }
            if size.intValue != entry.sizeBytes {
                throw MobileDiffError.checksumMismatch(
                    path: path, expected: "\(entry.sizeBytes) bytes", actual: "\(size.intValue) bytes")
            }
        }
        guard checksums else { return }
        var hashes: [URL: String] = [:] // each file read once
        func hash(_ url: URL) throws -> String {
            if let known = hashes[url] { return known }
            let digest = try SHA256Hasher.hex(fileAt: url)
            hashes[url] = digest
            return digest
        }
        for path in listed.sorted() {
            let actual = try hash(resolve(path))
            if actual != manifest.files[path]!.sha256 {
                throw MobileDiffError.checksumMismatch(path: path, expected: manifest.files[path]!.sha256, actual: actual)
            }
        }
        for role in ComponentRole.allCases {
            let component = components[role]
            let url = try resolve(component.file)
            var isFolder: ObjCBool = false
            _ = fm.fileExists(atPath: url.path, isDirectory: &isFolder)
            let actual = isFolder.boolValue ? try MobileDiffBundle.folderSHA256(url, hash: hash) : try hash(url)
            if actual != component.sha256 {
                throw MobileDiffError.checksumMismatch(path: component.file, expected: component.sha256, actual: actual)
            }
        }
    }

    /// The sha256 of a folder (a Core ML .mlpackage), as mobilediff_export/bundle.py defines
    /// it: of the lines `"<sha256>  <path>\n"` for every regular file inside, paths relative
    /// to the folder, sorted by their UTF-8 bytes (`sha256sum` over `find . -type f`).
    public static func folderSHA256(_ folder: URL, hash: (URL) throws -> String = SHA256Hasher.hex(fileAt:)) throws -> String {
        let fm = FileManager.default
        let paths = try fm.subpathsOfDirectory(atPath: folder.path).filter { path in
            let attributes = try? fm.attributesOfItem(atPath: folder.appendingPathComponent(path).path)
            return attributes?[.type] as? FileAttributeType == .typeRegular
        }
        var listing = ""
        for path in paths.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            listing += "\(try hash(folder.appendingPathComponent(path)))  \(path)\n"
        }
        return SHA256Hasher.hex(Data(listing.utf8))
    }
}
