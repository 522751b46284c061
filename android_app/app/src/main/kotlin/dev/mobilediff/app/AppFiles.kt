package dev.mobilediff.app

import android.content.Context
import android.os.Build
import dev.mobilediff.core.DeviceInfo
import java.io.File

/**
 * Where the app finds its bundle and writes its benchmark results: the app's external files
 * folder, `/sdcard/Android/data/dev.mobilediff.app/files/`, which `adb push` and `adb pull`
 * reach without root and which is removed with the app.
 */
object AppFiles {
    /** The bundle folder: `.../files/bundle/` (holding `bundle.json`). */
    fun bundleDir(context: Context): File = File(filesRoot(context), "bundle")

    /** A benchmark result file (a plain name, kept inside the files folder). */
    fun resultFile(context: Context, name: String): File = File(filesRoot(context), File(name).name)

    private fun filesRoot(context: Context): File = context.getExternalFilesDir(null) ?: context.filesDir
}

/** The phone, for benchmark results. */
fun deviceInfo(): DeviceInfo = DeviceInfo(
    manufacturer = Build.MANUFACTURER,
    model = Build.MODEL,
    soc = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) "${Build.SOC_MANUFACTURER} ${Build.SOC_MODEL}" else Build.HARDWARE,
    osVersion = "Android ${Build.VERSION.RELEASE} (API ${Build.VERSION.SDK_INT})",
    abi = Build.SUPPORTED_ABIS.firstOrNull() ?: "unknown",
)
