"""What a phone says about itself over adb: identity, free space, heat and memory.

Parsers for ``getprop``, ``df -k``, ``dumpsys thermalservice``, ``dumpsys meminfo`` and
``/proc/meminfo`` output. Pure functions over text, so they are tested on captured output
without a phone; ``describe_device`` and friends call them through an ``Adb``.
"""

from __future__ import annotations

import re
from typing import Any

from .adb import Adb, quote

#: android.os.PowerManager THERMAL_STATUS_* values, as ``dumpsys thermalservice`` prints them.
THERMAL_STATUS = ("none", "light", "moderate", "severe", "critical", "emergency", "shutdown")

_PROPS = {
    "manufacturer": "ro.product.manufacturer",
    "model": "ro.product.model",
    "device": "ro.product.device",
    "soc_manufacturer": "ro.soc.manufacturer",
    "soc_model": "ro.soc.model",
    "board_platform": "ro.board.platform",
    "hardware": "ro.hardware",
    "android_version": "ro.build.version.release",
    "sdk": "ro.build.version.sdk",
    "abi": "ro.product.cpu.abi",
    "build": "ro.build.fingerprint",
}


def parse_getprop(text: str) -> dict[str, str]:
    """``getprop`` with no argument prints ``[name]: [value]`` lines."""
    return dict(re.findall(r"^\[([^\]]+)\]:\s*\[(.*)\]\s*$", text, re.MULTILINE))


def describe_device(adb: Adb) -> dict[str, Any]:
    """Model, SoC, Android version and RAM of the device behind ``adb`` (one getprop call)."""
    props = parse_getprop(adb.shell("getprop"))
    info: dict[str, Any] = {"serial": adb.serial}
    for key, prop in _PROPS.items():
        info[key] = props.get(prop) or None
    soc = info["soc_model"] or info["board_platform"] or info["hardware"]
    info["soc"] = f"{info['soc_manufacturer']} {soc}" if info["soc_manufacturer"] else soc
    code, meminfo = adb.shell_status("cat /proc/meminfo")
    info["ram_bytes"] = parse_proc_meminfo(meminfo) if code == 0 else None
    return info


def parse_proc_meminfo(text: str) -> int | None:
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def parse_df_available(text: str) -> int | None:
    """Available bytes from ``df -k DIR`` (toybox and busybox layouts; wrapped lines too)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    fields = " ".join(lines[1:]).split()
    # ... Size Used Available Use% Mounted-on: Available is third from the end.
    if len(fields) < 4 or not fields[-2].endswith("%"):
        return None
    try:
        return int(fields[-3]) * 1024
    except ValueError:
        return None


def free_bytes(adb: Adb, folder: str) -> int | None:
    code, out = adb.shell_status(f"df -k {quote(folder)}")
    return parse_df_available(out) if code == 0 else None


def parse_thermal(text: str) -> dict[str, Any]:
    """``dumpsys thermalservice``: the status (0-6) and the hottest CPU and skin readings."""
    match = re.search(r"Thermal Status:\s*(\d+)", text)
    status = int(match.group(1)) if match else None
    temps: dict[str, list[float]] = {"cpu": [], "skin": [], "gpu": [], "npu": []}
    kinds = {0: "cpu", 1: "gpu", 3: "skin", 9: "npu"}
    # Only the HAL's current readings when present; the cached ones can be stale.
    section = text.split("Current temperatures from HAL:", 1)[-1]
    for value, mtype in re.findall(r"Temperature\{mValue=([-\d.]+), mType=(\d+)", section):
        kind = kinds.get(int(mtype))
        if kind:
            temps[kind].append(float(value))
    name = THERMAL_STATUS[status] if status is not None and status < len(THERMAL_STATUS) else None
    return {
        "status": status,
        "status_name": name,
        **{f"max_{kind}_c": max(values) if values else None for kind, values in temps.items()},
    }


def thermal_state(adb: Adb) -> dict[str, Any]:
    code, out = adb.shell_status("dumpsys thermalservice")
    if code != 0:
        return {"status": None, "status_name": None, "error": out.strip()[:200]}
    return parse_thermal(out)


def parse_meminfo(text: str) -> dict[str, int | None]:
    """``dumpsys meminfo PACKAGE``: total PSS and RSS of the app process, in bytes."""

    def kib(pattern: str) -> int | None:
        match = re.search(pattern, text)
        return int(match.group(1)) * 1024 if match else None

    pss = kib(r"TOTAL PSS:\s*(\d+)") or kib(r"^\s*TOTAL:?\s+(\d+)")
    return {"total_pss_bytes": pss, "total_rss_bytes": kib(r"TOTAL RSS:\s*(\d+)")}


def app_memory(adb: Adb, package: str) -> dict[str, int | None] | None:
    """The app's memory now, or None when it is not running."""
    code, out = adb.shell_status(f"dumpsys meminfo {quote(package)}")
    if code != 0 or "No process found" in out:
        return None
    mem = parse_meminfo(out)
    return mem if any(v is not None for v in mem.values()) else None
