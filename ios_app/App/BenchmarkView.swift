import Foundation
import MobileDiffCore
import SwiftUI

/// The `-benchmark` launch: runs `Benchmark.run` on the bundle, writes the JSON result to
/// Documents/<output> (after each measured run with status incomplete, then the final one),
/// prints its path and exits (so `xcrun devicectl device process launch
/// --console` returns when it is done).
@MainActor
struct BenchmarkView: View {
    let command: BenchmarkCommand
    @State private var status = "starting"

    var body: some View {
        Text("Benchmark: \(status)")
            .padding()
            .task { await run() }
    }

    private func run() async {
        let command = command
        let report: @Sendable (String) -> Void = { text in Task { @MainActor in status = text } }
        let destination = BundleLocator.documents.appendingPathComponent(command.output)
        let result = await Task.detached(priority: .userInitiated) { () -> PhoneBenchResult in
            let device = PhoneBenchResult.Device.current
            let info = Bundle.main.infoDictionary
            let version = "\(info?["CFBundleShortVersionString"] as? String ?? "?") (\(info?["CFBundleVersion"] as? String ?? "?"))"
            do {
                let bundle = try BundleLocator.open()
                let pipeline = try Pipeline(
                    bundle: bundle, runner: CoreMLModelRunner(bundle: bundle, computeUnits: command.settings.backend))
                return Benchmark.run(
                    pipeline: pipeline, settings: command.settings, device: device, appVersion: version,
                    manifestSHA256: bundle.manifestSHA256, progress: report,
                    onRun: { interim in try? interim.jsonData().write(to: destination, options: .atomic) })
            } catch {
                return Benchmark.failure(settings: command.settings, device: device, appVersion: version, error: error)
            }
        }.value
        do {
            try result.jsonData().write(to: destination, options: .atomic)
            print("mobilediff benchmark: \(result.status.rawValue), wrote \(destination.path)")
            status = "\(result.status.rawValue), wrote \(destination.lastPathComponent)"
        } catch {
            print("mobilediff benchmark: cannot write \(destination.path): \(error)")
        }
        exit(result.status == .complete ? 0 : 1)
    }
}
