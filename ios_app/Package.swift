// swift-tools-version:5.9
// MobileDiffCore: everything the iOS app does that is not UI or Core ML prediction, so it
// builds and is tested on Linux too (scripts/test_ios.sh). The SwiftUI app in App/ depends
// on it through project.yml.
import PackageDescription

let package = Package(
    name: "MobileDiff",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [
        .library(name: "MobileDiffCore", targets: ["MobileDiffCore"]),
    ],
    targets: [
        .target(name: "MobileDiffCore"),
        .testTarget(name: "MobileDiffCoreTests", dependencies: ["MobileDiffCore"]),
    ]
)
