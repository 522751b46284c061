import MobileDiffCore
import SwiftUI

/// The demo app: a prompt-to-image screen, or, launched with `-benchmark`, a benchmark run
/// that writes its JSON result to Documents and exits (see ios_app/README.md).
@main
struct MobileDiffApp: App {
    private let launch: Result<BenchmarkCommand?, Error> = Result {
        try BenchmarkCommand.parse(ProcessInfo.processInfo.arguments)
    }

    var body: some Scene {
        WindowGroup {
            switch launch {
            case .success(let command?):
                BenchmarkView(command: command)
            case .success(nil):
                ContentView()
            case .failure(let error):
                Text("Bad launch arguments: \(error.localizedDescription)\nUsage: \(BenchmarkCommand.usage)")
                    .padding()
            }
        }
    }
}
