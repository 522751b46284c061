/// The app's benchmark launch arguments:
///
///     -benchmark [-iterations 10] [-warmup 2] [-steps N] [-seed 0]
///                [-compute-units all|cpuOnly|cpuAndGPU|cpuAndNeuralEngine]
///                [-prompt TEXT] [-output benchmark_result.json]
///
/// Options not listed here are left alone (Xcode and iOS add their own, such as
/// `-AppleLanguages`), so only a bad value of a known option is an error.
public struct BenchmarkCommand: Equatable, Sendable {
    public var settings = BenchmarkSettings()
    /// The result's file name in the app's Documents folder.
    public var output = "benchmark_result.json"

    public static let usage = "-benchmark [-iterations N] [-warmup N] [-steps N] [-seed N] "
        + "[-compute-units \(ComputeUnits.allCases.map(\.rawValue).joined(separator: "|"))] [-prompt TEXT] [-output FILE.json]"

    /// nil unless `arguments` (the process's, program name first or not) has `-benchmark`.
    public static func parse(_ arguments: [String]) throws -> BenchmarkCommand? {
        guard arguments.contains("-benchmark") else { return nil }
        var command = BenchmarkCommand()
        func value(_ option: String) throws -> String? {
            guard let index = arguments.firstIndex(of: option) else { return nil }
            guard index + 1 < arguments.count else {
                throw MobileDiffError.config("\(option) needs a value; usage: \(usage)")
            }
            return arguments[index + 1]
        }
        func count(_ option: String, minimum: Int) throws -> Int? {
            guard let text = try value(option) else { return nil }
            guard let number = Int(text), number >= minimum else {
                throw MobileDiffError.config("\(option) takes a whole number >= \(minimum), got \(text.debugDescription)")
            }
            return number
        }
        if let n = try count("-iterations", minimum: 1) { command.settings.iterations = n }
        if let n = try count("-warmup", minimum: 0) { command.settings.warmup = n }
        if let n = try count("-steps", minimum: 1) { command.settings.steps = n }
        if let text = try value("-seed") {
            guard let seed = UInt64(text) else {
                throw MobileDiffError.config("-seed takes a whole number >= 0, got \(text.debugDescription)")
            }
            command.settings.seed = seed
        }
        if let text = try value("-compute-units") {
            guard let units = ComputeUnits(rawValue: text) else {
                throw MobileDiffError.config("-compute-units must be one of "
                    + "\(ComputeUnits.allCases.map(\.rawValue).joined(separator: ", ")), got \(text.debugDescription)")
            }
            command.settings.backend = units
        }
        if let prompt = try value("-prompt") { command.settings.prompt = prompt }
        if let output = try value("-output") {
            guard !output.isEmpty, !output.contains("/") else {
                throw MobileDiffError.config("-output is a file name in Documents, got \(output.debugDescription)")
            }
            command.output = output
        }
        return command
    }
}
