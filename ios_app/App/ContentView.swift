import Foundation
import MobileDiffCore
import SwiftUI

/// The generator screen: prompt, steps, seed, compute units, Generate, the image and the
/// milliseconds of each stage.
@MainActor
struct ContentView: View {
    @StateObject private var model = GeneratorModel()

    var body: some View {
        NavigationStack {
            Form {
                Section("Prompt") {
                    TextField("Prompt", text: $model.prompt, axis: .vertical)
                        .lineLimit(2 ... 5)
                }
                Section("Settings") {
                    Stepper("Steps: \(model.steps)", value: $model.steps, in: 1 ... 50)
                    LabeledContent("Seed") {
                        TextField("Seed", value: $model.seed, format: IntegerFormatStyle<UInt64>())
                            .keyboardType(.numberPad)
                            .multilineTextAlignment(.trailing)
                    }
                    Picker("Compute units", selection: $model.computeUnits) {
                        ForEach(ComputeUnits.allCases, id: \.self) { Text($0.rawValue).tag($0) }
                    }
                }
                Section {
                    Button(model.isRunning ? "Generating…" : "Generate") { model.generate() }
                        .disabled(model.isRunning || model.bundle == nil)
                    if model.isRunning { ProgressView(value: model.progress) }
                    Text(model.message).font(.footnote).foregroundStyle(.secondary)
                }
                if let image = model.image {
                    Section("Image") {
                        Image(decorative: image, scale: 1)
                            .resizable()
                            .aspectRatio(1, contentMode: .fit)
                    }
                }
                if let timings = model.timings {
                    Section("Timings (ms)") {
                        row("tokenize", timings.tokenizeMs)
                        row("text encoder", timings.textEncoderMs)
                        row("UNet, \(timings.unetMs.count) steps", timings.unetMs.reduce(0, +))
                        row("sampler", timings.samplerMs)
                        row("VAE decoder", timings.vaeDecoderMs)
                        row("total", timings.totalMs)
                        ForEach(ComponentRole.allCases, id: \.self) { role in
                            if let ms = model.loadMs[role] { row("load \(role.rawValue)", ms) }
                        }
                    }
                }
            }
            .navigationTitle("MobileDiff")
        }
    }

    private func row(_ label: String, _ ms: Double) -> some View {
        LabeledContent(label, value: String(format: "%.1f", ms))
    }
}
