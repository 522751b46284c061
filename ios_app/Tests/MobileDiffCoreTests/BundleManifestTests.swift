import Foundation
import XCTest
@testable import MobileDiffCore

final class BundleManifestTests: XCTestCase {
    private var folders: [URL] = []

    override func tearDown() {
        folders.forEach { try? FileManager.default.removeItem(at: $0) }
    }

    private func bundle(_ manifest: [String: Any] = Fixtures.manifest()) throws -> URL {
        let url = try Fixtures.writeBundle(manifest)
        folders.append(url)
        return url
    }

    /// `body`'s error, which must be a MobileDiffError.
    private func error(_ body: () throws -> Any, file: StaticString = #filePath, line: UInt = #line) -> MobileDiffError? {
        do {
            _ = try body()
            XCTFail("no error", file: file, line: line)
        } catch let error as MobileDiffError {
            return error
        } catch {
            XCTFail("not a MobileDiffError: \(error)", file: file, line: line)
        }
        return nil
    }

    private func manifestError(_ manifest: [String: Any], file: StaticString = #filePath, line: UInt = #line) -> String {
        error({ try Fixtures.decode(manifest) }, file: file, line: line).map { "\($0)" } ?? ""
    }

    func testAValidBundleOpensAndGivesItsTokenizer() throws {
        let url = try bundle()
        let opened = try MobileDiffBundle(at: url, verifyChecksums: true)
        XCTAssertEqual(opened.manifest.schemaVersion, 1)
        XCTAssertEqual(opened.manifest.pipeline.sampler.timesteps, [751, 501, 251, 1])
        XCTAssertEqual(opened.manifest.pipeline.guidance.mode, .cfg)
        XCTAssertEqual(opened.components.unet.inputs.map(\.name), ["sample", "timestep", "encoder_hidden_states"])
        XCTAssertEqual(opened.manifestSHA256, try SHA256Hasher.hex(fileAt: url.appendingPathComponent("bundle.json")))
        XCTAssertEqual(try opened.makeTokenizer().encode("a photo of a cat"), [49406, 320, 1125, 539, 320, 2368, 49407])
        XCTAssertEqual(try opened.resolve("tokenizer/vocab.json").lastPathComponent, "vocab.json")
    }

    func testSchemaVersionIsCheckedFirst() {
        var manifest = Fixtures.setting(Fixtures.manifest(), "schema_version", 2)
        manifest["pipeline"] = "a field this reader does not know"
        XCTAssertEqual(error { try Fixtures.decode(manifest) }, .unsupportedSchemaVersion(2))
        XCTAssertEqual(manifestError(Fixtures.setting(manifest, "schema_version", nil)),
                       "invalid bundle manifest: bundle.json lacks schema_version")
        XCTAssertTrue(error { try BundleManifest.decode(Data("not json".utf8)) }.map { "\($0)" }?
            .contains("is not a JSON object with an integer schema_version") ?? false)
    }

    func testMissingAndMistypedFieldsNameTheirPath() {
        let base = Fixtures.manifest()
        XCTAssertEqual(manifestError(Fixtures.setting(base, "pipeline.sampler.timesteps", nil)),
                       "invalid bundle manifest: missing field pipeline.sampler.timesteps")
        XCTAssertEqual(manifestError(Fixtures.setting(base, "tokenizer", nil)),
                       "invalid bundle manifest: missing field tokenizer")
        XCTAssertTrue(manifestError(Fixtures.setting(base, "pipeline.image_size", "64")).contains("pipeline.image_size"))
        XCTAssertTrue(manifestError(Fixtures.setting(base, "pipeline.prediction_type", "x0")).contains("pipeline.prediction_type"))
        let unet = "components.coreml.unet"
        XCTAssertTrue(manifestError(Fixtures.setting(base, "\(unet).outputs", [["name": "out"]]))
            .contains("missing field components.coreml.unet.outputs[0].shape"))
    }

    func testValuesAreValidated() {
        let base = Fixtures.manifest()
        let cases: [(String, Any, String)] = [
            ("tool.name", "other", "tool.name must be \"mobilediff\""),
            ("pipeline.latent_shape", [4, 16, 16], "pipeline.latent_shape must be [1, C, h, w]"),
            ("pipeline.vae_scaling_factor", 0, "pipeline.vae_scaling_factor must be positive"),
            ("pipeline.prediction_type", "v_prediction", "differs from pipeline.prediction_type"),
            ("pipeline.sampler.alphas_cumprod", [0.5], "sampler.alphas_cumprod has 1 entries"),
            ("pipeline.sampler.timesteps", [1, 251, 501, 751], "strictly descending"),
            ("pipeline.sampler.name", "heun", "sampler.name must be one of ddim, euler, onestep"),
            ("tokenizer.kind", "sentencepiece", "tokenizer.kind must be \"clip-bpe\""),
            ("components", [:] as [String: Any], "components must name at least one target"),
            ("components.coreml.unet.sha256", "ABC", "sha256 must be 64 lowercase hex digits"),
            ("components.coreml.unet.outputs", [Fixtures.tensor("o", [2, 0, 16, 16], "float32", "NCHW")], "sizes must be >= 1"),
        ]
        for (path, value, message) in cases {
            let text = manifestError(Fixtures.setting(base, path, value))
            XCTAssertTrue(text.contains(message), "\(path): \(text)")
        }
    }

    func testPathsMayNotLeaveTheBundle() throws {
        let base = Fixtures.manifest()
        for bad in ["../vocab.json", "/etc/passwd", "tokenizer/../../x", "tokenizer\\vocab.json", ""] {
            XCTAssertEqual(error { try Fixtures.decode(Fixtures.setting(base, "tokenizer.vocab", bad)) },
                           .pathOutsideBundle("\(bad) (tokenizer.vocab)"), bad)
        }
        XCTAssertEqual(error { try Fixtures.decode(Fixtures.setting(base, "components.coreml.unet.file", "../Unet.mlpackage")) },
                       .pathOutsideBundle("../Unet.mlpackage (components.coreml.unet.file)"))
        // A symbolic link inside the bundle that points out of it.
        let url = try bundle()
        let vocab = url.appendingPathComponent("tokenizer/vocab.json")
        let outside = url.deletingLastPathComponent().appendingPathComponent("outside-\(UUID().uuidString).json")
        folders.append(outside)
        try FileManager.default.moveItem(at: vocab, to: outside)
        try FileManager.default.createSymbolicLink(at: vocab, withDestinationURL: outside)
        XCTAssertEqual(error { try MobileDiffBundle(at: url) }, .pathOutsideBundle("tokenizer/vocab.json"))
    }

    func testMissingChangedAndAbsentFiles() throws {
        XCTAssertEqual(error { try MobileDiffBundle(at: URL(fileURLWithPath: "/nonexistent/bundle")) },
                       .missingFile("/nonexistent/bundle/bundle.json: a bundle folder holds bundle.json (made by `mobilediff export -o BUNDLE`)"))

        var url = try bundle()
        try FileManager.default.removeItem(at: url.appendingPathComponent("coreml/Unet.mlpackage"))
        XCTAssertEqual(error { try MobileDiffBundle(at: url) }, .missingFile("coreml/Unet.mlpackage"))

        url = try bundle()
        let weights = url.appendingPathComponent("coreml/VAEDecoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin")
        try Data(repeating: 8, count: 99).write(to: weights)
        XCTAssertEqual(error { try MobileDiffBundle(at: url) }, .checksumMismatch(
            path: "coreml/VAEDecoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
            expected: "100 bytes", actual: "99 bytes"))

        // Same size, other bytes: only a checksum verification sees it.
        try Data(repeating: 8, count: 100).write(to: weights)
        XCTAssertNoThrow(try MobileDiffBundle(at: url))
        guard case .checksumMismatch(let path, _, _) = error({ try MobileDiffBundle(at: url, verifyChecksums: true) }) else {
            return XCTFail("expected a checksum mismatch")
        }
        XCTAssertEqual(path, "coreml/VAEDecoder.mlpackage/Data/com.apple.CoreML/weights/weight.bin")
    }

    /// A Core ML package's hash as Python's bundle.path_sha256_and_size computed it for
    /// the fixture's Unet.mlpackage.
    func testFolderHashMatchesPython() throws {
        let url = try bundle()
        XCTAssertEqual(try MobileDiffBundle.folderSHA256(url.appendingPathComponent("coreml/Unet.mlpackage")),
                       "d1cf3ad22369aa11769f69dcdcf5354edc4abd1936b220fc1745542f946cf098")
        // An unlisted file inside a package changes the package's hash.
        try Data("x".utf8).write(to: url.appendingPathComponent("coreml/Unet.mlpackage/extra.txt"))
        XCTAssertNoThrow(try MobileDiffBundle(at: url))
        guard case .checksumMismatch(let path, _, _) = error({ try MobileDiffBundle(at: url, verifyChecksums: true) }) else {
            return XCTFail("expected a checksum mismatch")
        }
        XCTAssertEqual(path, "coreml/Unet.mlpackage")
    }

    func testTargetMustBeInTheBundle() throws {
        let url = try bundle()
        XCTAssertEqual(error { try MobileDiffBundle(at: url, target: "tflite") },
                       .invalidManifest("the bundle has no tflite models (it has: coreml); export it with --target tflite"))
    }

    func testOtherTargetsFilesAreNotNeeded() throws {
        var manifest = Fixtures.manifest()
        var components = manifest["components"] as! [String: Any]
        var tflite = components["coreml"] as! [String: Any]
        for role in ["text_encoder", "unet", "vae_decoder"] {
            tflite = Fixtures.setting(tflite, "\(role).file", "tflite/\(role).tflite")
        }
        components["tflite"] = tflite
        manifest["components"] = components
        XCTAssertNoThrow(try MobileDiffBundle(at: bundle(manifest), target: "coreml"))
        XCTAssertEqual(error { try MobileDiffBundle(at: bundle(manifest), target: "tflite") }, .missingFile("tflite/text_encoder.tflite"))
    }
}
