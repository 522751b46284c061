import Foundation
import MobileDiffCore

/// Where the app finds its bundle, first match wins:
/// 1. Documents/bundle.json (a bundle's contents copied straight into Documents),
/// 2. Documents/<folder>/bundle.json, folders in name order (a bundle folder copied in
///    with Finder's file sharing or `xcrun devicectl device copy to`),
/// 3. a folder named `bundle` in the app's resources (App/Resources/bundle at build time).
enum BundleLocator {
    static var documents: URL {
        FileManager.default.urls(for: .documentDirectory, in: .userDomainMask)[0]
    }

    static func find() -> URL? {
        let fm = FileManager.default
        let marker = MobileDiffBundle.manifestName
        if fm.fileExists(atPath: documents.appendingPathComponent(marker).path) { return documents }
        let folders = (try? fm.contentsOfDirectory(at: documents, includingPropertiesForKeys: nil)) ?? []
        for folder in folders.sorted(by: { $0.lastPathComponent < $1.lastPathComponent })
            where fm.fileExists(atPath: folder.appendingPathComponent(marker).path) {
            return folder
        }
        return Bundle.main.url(forResource: "bundle", withExtension: nil)
    }

    /// The bundle, opened for Core ML.
    static func open() throws -> MobileDiffBundle {
        guard let url = find() else {
            throw MobileDiffError.missingFile(
                "no bundle: copy a folder made by `mobilediff export -o bundle` into the app's Documents")
        }
        return try MobileDiffBundle(at: url, target: "coreml")
    }
}

extension PhoneBenchResult.Device {
    /// This phone: its model identifier (e.g. iPhone16,1), SoC where known, iOS version.
    static var current: Self {
        var system = utsname()
        uname(&system)
        let machine = withUnsafeBytes(of: &system.machine) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        let model = ProcessInfo.processInfo.environment["SIMULATOR_MODEL_IDENTIFIER"] ?? machine
        let os = ProcessInfo.processInfo.operatingSystemVersion
        #if arch(arm64)
        let abi = "arm64"
        #else
        let abi = "x86_64"
        #endif
        return .init(manufacturer: "Apple", model: model, soc: socs[model] ?? "unknown",
                     osVersion: "\(os.majorVersion).\(os.minorVersion).\(os.patchVersion)", abi: abi)
    }

    /// Apple's model identifiers of recent iPhones and their chips.
    private static let socs: [String: String] = [
        "iPhone13,1": "A14 Bionic", "iPhone13,2": "A14 Bionic", "iPhone13,3": "A14 Bionic", "iPhone13,4": "A14 Bionic",
        "iPhone14,4": "A15 Bionic", "iPhone14,5": "A15 Bionic", "iPhone14,2": "A15 Bionic", "iPhone14,3": "A15 Bionic",
        "iPhone14,6": "A15 Bionic", "iPhone14,7": "A15 Bionic", "iPhone14,8": "A15 Bionic",
        "iPhone15,2": "A16 Bionic", "iPhone15,3": "A16 Bionic", "iPhone15,4": "A16 Bionic", "iPhone15,5": "A16 Bionic",
        "iPhone16,1": "A17 Pro", "iPhone16,2": "A17 Pro",
        "iPhone17,1": "A18 Pro", "iPhone17,2": "A18 Pro", "iPhone17,3": "A18", "iPhone17,4": "A18", "iPhone17,5": "A18",
    ]
}
