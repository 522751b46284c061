package dev.mobilediff.app

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.Image
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.aspectRatio
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.foundation.rememberScrollState
import androidx.compose.foundation.text.KeyboardOptions
import androidx.compose.foundation.verticalScroll
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.asImageBitmap
import androidx.compose.ui.graphics.FilterQuality
import androidx.compose.ui.text.input.KeyboardType
import androidx.compose.ui.unit.dp
import dev.mobilediff.core.StageTimings

/** The one screen: prompt, steps, seed, backend, Generate, the image and where the time went. */
class MainActivity : ComponentActivity() {
    private val model: GenerateViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent {
            MaterialTheme {
                Surface(Modifier.fillMaxSize()) { GenerateScreen(model) }
            }
        }
    }
}

@Composable
private fun GenerateScreen(model: GenerateViewModel) {
    Column(
        Modifier.safeDrawingPadding().padding(16.dp).verticalScroll(rememberScrollState()),
        verticalArrangement = Arrangement.spacedBy(12.dp),
    ) {
        OutlinedTextField(
            value = model.prompt,
            onValueChange = { model.prompt = it },
            label = { Text("Prompt") },
            modifier = Modifier.fillMaxWidth(),
        )
        Row(horizontalArrangement = Arrangement.spacedBy(12.dp)) {
            NumberField("Steps", model.steps, "bundle's", Modifier.weight(1f)) { model.steps = it }
            NumberField("Seed", model.seed, "0", Modifier.weight(1f)) { model.seed = it }
        }
        Row(horizontalArrangement = Arrangement.spacedBy(8.dp)) {
            Backend.entries.forEach { backend ->
                FilterChip(
                    selected = model.backend == backend,
                    onClick = { model.backend = backend },
                    label = { Text(backend.id.uppercase()) },
                    enabled = !model.busy,
                )
            }
        }
        Button(onClick = model::generate, enabled = !model.busy, modifier = Modifier.fillMaxWidth()) {
            Text(if (model.busy) "Generating…" else "Generate")
        }
        if (model.status.isNotEmpty()) Text(model.status, style = MaterialTheme.typography.bodyMedium)
        model.image?.let { bitmap ->
            Image(
                bitmap = bitmap.asImageBitmap(),
                contentDescription = model.prompt,
                filterQuality = FilterQuality.None,
                modifier = Modifier.fillMaxWidth().aspectRatio(1f),
            )
        }
        model.timings?.let { Text(describe(it), style = MaterialTheme.typography.bodySmall) }
        if (model.loadInfo.isNotEmpty()) Text(model.loadInfo, style = MaterialTheme.typography.bodySmall)
        Text("Bundle: ${model.bundleDir}", style = MaterialTheme.typography.labelSmall)
    }
}

@Composable
private fun NumberField(label: String, value: String, hint: String, modifier: Modifier, onChange: (String) -> Unit) {
    OutlinedTextField(
        value = value,
        onValueChange = onChange,
        label = { Text(label) },
        placeholder = { Text(hint) },
        singleLine = true,
        keyboardOptions = KeyboardOptions(keyboardType = KeyboardType.Number),
        modifier = modifier,
    )
}

/** Per-stage timings in one short block. */
private fun describe(t: StageTimings): String {
    val unet = t.unetMs.sum()
    val perStep = if (t.unetMs.isEmpty()) 0.0 else unet / t.unetMs.size
    return listOf(
        "tokenize %.1f ms".format(t.tokenizeMs),
        "text encoder %.0f ms".format(t.textEncoderMs),
        "UNet %d × %.0f ms = %.0f ms".format(t.unetMs.size, perStep, unet),
        "sampler %.1f ms".format(t.samplerMs),
        "VAE decoder %.0f ms".format(t.vaeDecoderMs),
        "total %.0f ms".format(t.totalMs),
    ).joinToString("\n")
}
