import Foundation
import XCTest
@testable import MobileDiffCore

/// The repository around this package, found from this file's location: the first parent
/// folder that holds tests/vectors/ (the golden vectors Python writes).
enum Repo {
    static let root: URL = {
        var folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        while folder.path != "/" {
            if FileManager.default.fileExists(atPath: folder.appendingPathComponent("tests/vectors/tokenizer.json").path) {
                return folder
            }
            folder.deleteLastPathComponent()
        }
        fatalError("tests/vectors/ not found above \(#filePath); the package must stay inside the mobilediff repo")
    }()

    static func url(_ path: String) -> URL { root.appendingPathComponent(path) }

    static func vector<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
        try JSONDecoder().decode(type, from: Data(contentsOf: url("tests/vectors/\(name)")))
    }

    static func json(_ path: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url(path))) as! [String: Any]
    }

    /// The CLIP tokenizer of models/tokenizer/, loaded once for all tests.
    static let tokenizer: CLIPTokenizer = {
        do {
            return try CLIPTokenizer(
                vocabURL: url("models/tokenizer/vocab.json"), mergesURL: url("models/tokenizer/merges.txt"))
        } catch {
            fatalError("cannot load models/tokenizer: \(error)")
        }
    }()
}

/// A recorded float tensor in the vector files.
struct RecordedTensor: Decodable {
    let shape: [Int]
    let data: [Float]

    var tensor: Tensor { try! Tensor(shape: shape, data: data) }
}

/// `|got - want| <= atol + rtol * |want|` everywhere (numpy.allclose), with a message that
/// points at the worst element.
func assertClose<T: BinaryFloatingPoint>(
    _ got: [T], _ want: [T], atol: Double, rtol: Double, _ what: String, file: StaticString = #filePath, line: UInt = #line
) {
    guard got.count == want.count else {
        return XCTFail("\(what): \(got.count) values, expected \(want.count)", file: file, line: line)
    }
    for (k, (g, w)) in zip(got, want).enumerated() {
        let (g, w) = (Double(g), Double(w))
        if !(abs(g - w) <= atol + rtol * abs(w)) {
            return XCTFail("\(what)[\(k)] = \(g), expected \(w) (atol \(atol), rtol \(rtol))", file: file, line: line)
        }
    }
}

/// Builds bundle folders and manifests for the tests: a manifest shaped like the `tiny`
/// model's (cfg, 16x16 latents, 64x64 images, 64-wide context), with its Core ML files.
enum Fixtures {
    /// The sampler object of tests/vectors/pipeline_tiny.json (DDIM, 4 steps).
    static let sampler: [String: Any] = try! Repo.json("tests/vectors/pipeline_tiny.json")["sampler"] as! [String: Any]

    static func tensor(_ name: String, _ shape: [Int], _ dtype: String, _ layout: String) -> [String: Any] {
        ["name": name, "shape": shape, "dtype": dtype, "layout": layout]
    }

    static func component(_ file: String, inputs: [[String: Any]], outputs: [[String: Any]]) -> [String: Any] {
        ["file": file, "sha256": String(repeating: "0", count: 64), "size_bytes": 0, "precision": "fp16",
         "recipe": "fp16", "inputs": inputs, "outputs": outputs]
    }

    static let modelFiles = [
        "text_encoder": "coreml/TextEncoder.mlpackage",
        "unet": "coreml/Unet.mlpackage",
        "vae_decoder": "coreml/VAEDecoder.mlpackage",
    ]

    static func manifest(batch: Int = 2, textBatch: Int = 2) -> [String: Any] {
        let target: [String: Any] = [
            "text_encoder": component(
                modelFiles["text_encoder"]!, inputs: [tensor("input_ids", [textBatch, 77], "int32", "NL")],
                outputs: [tensor("last_hidden_state", [textBatch, 77, 64], "float32", "NLC")]),
            "unet": component(
                modelFiles["unet"]!,
                inputs: [tensor("sample", [batch, 4, 16, 16], "float32", "NCHW"), tensor("timestep", [batch], "float32", "N"),
                         tensor("encoder_hidden_states", [batch, 77, 64], "float32", "NLC")],
                outputs: [tensor("noise_pred", [batch, 4, 16, 16], "float32", "NCHW")]),
            "vae_decoder": component(
                modelFiles["vae_decoder"]!, inputs: [tensor("latent", [1, 4, 16, 16], "float32", "NCHW")],
                outputs: [tensor("image", [1, 3, 64, 64], "float32", "NCHW")]),
        ]
        return [
            "schema_version": 1,
            "tool": ["name": "mobilediff", "version": "0.1.0"],
            "model": ["name": "tiny", "source": "config:tiny", "source_sha256": NSNull(), "config": [:] as [String: Any]],
            "pipeline": [
                "image_size": 64,
                "latent_shape": [1, 4, 16, 16],
                "vae_scaling_factor": 0.18215,
                "prediction_type": "epsilon",
                "noise_schedule": ["num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                   "beta_schedule": "scaled_linear"],
                "sampler": sampler,
                "guidance": ["mode": batch == 2 ? "cfg" : "none", "scale": batch == 2 ? 7.5 : 1.0],
            ] as [String: Any],
            "tokenizer": ["kind": "clip-bpe", "vocab": "tokenizer/vocab.json", "merges": "tokenizer/merges.txt",
                          "max_length": 77, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407],
            "components": ["coreml": target],
            "files": [:] as [String: Any],
        ]
    }

    static func data(_ manifest: [String: Any]) -> Data {
        try! JSONSerialization.data(withJSONObject: manifest, options: [.sortedKeys])
    }

    static func decode(_ manifest: [String: Any]) throws -> BundleManifest {
        try BundleManifest.decode(data(manifest))
    }

    /// `manifest` with the value at a dotted path replaced (nil removes it).
    static func setting(_ manifest: [String: Any], _ path: String, _ value: Any?) -> [String: Any] {
        func set(_ object: [String: Any], _ keys: ArraySlice<Substring>) -> [String: Any] {
            var object = object
            let key = String(keys.first!)
            if keys.count == 1 {
                object[key] = value
            } else {
                object[key] = set(object[key] as! [String: Any], keys.dropFirst())
            }
            return object
        }
        return set(manifest, path.split(separator: ".")[...])
    }

    /// The files of a fixture bundle with their sha256 (hashed once: the vocabulary is 1.6 MB).
    static let contents: [String: (Data, String)] = {
        var contents: [String: Data] = [
            "tokenizer/vocab.json": try! Data(contentsOf: Repo.url("models/tokenizer/vocab.json")),
            "tokenizer/merges.txt": try! Data(contentsOf: Repo.url("models/tokenizer/merges.txt")),
        ]
        for (role, file) in modelFiles {
            contents["\(file)/Manifest.json"] = Data("{\"role\": \"\(role)\"}".utf8)
            contents["\(file)/Data/com.apple.CoreML/weights/weight.bin"] = Data(repeating: 7, count: 100)
        }
        return contents.mapValues { ($0, SHA256Hasher.hex($0)) }
    }()

    /// A bundle folder in the temporary folder: bundle.json, the tokenizer files and a small
    /// Core ML package per network, every file listed in `files` with its real size and
    /// sha256, each package's hash in its component.
    static func writeBundle(_ manifest: [String: Any] = manifest()) throws -> URL {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("mobilediff-bundle-\(UUID().uuidString)")
        var files: [String: Any] = [:]
        for (path, (data, sha256)) in contents {
            let url = root.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try data.write(to: url)
            files[path] = ["sha256": sha256, "size_bytes": data.count]
        }
        var full = setting(manifest, "files", files)
        for (role, file) in modelFiles {
            let sha256 = try MobileDiffBundle.folderSHA256(root.appendingPathComponent(file))
            full = setting(full, "components.coreml.\(role).sha256", sha256)
        }
        try data(full).write(to: root.appendingPathComponent("bundle.json"))
        return root
    }
}
