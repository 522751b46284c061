"""Fit check without a phone: will a bundle fit a device's memory, and about how fast will it run?

An *estimate*, and every output says so. It combines two kinds of numbers:

* the bundle's own, from its manifest: file sizes, per-call FLOPs of each component, the
  activation estimates the exporter wrote (``estimated_peak_memory_bytes``);
* a device profile (``devices/*.json``, or ``--profiles DIR``): RAM and the share an app
  can use, and per accelerator a sustained throughput in TFLOP/s. Published peaks are
  quoted with their source; the sustained figures are derived (from published end-to-end
  latencies of this model family), labelled estimates, with the derivation in the file.

latency = (text-encoder calls x its FLOPs + steps x UNet FLOPs + decoder FLOPs) / throughput
memory  = all three models resident + the largest component's activations
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..bundle import format_bytes, iter_components, read_manifest
from ..errors import MobileDiffError

PROFILES_DIR = Path(__file__).parent / "devices"
TARGET_FOR_PLATFORM = {"android": "tflite", "ios": "coreml"}


def load_profiles(extra_dirs: list[Path] | None = None) -> dict[str, dict[str, Any]]:
    """Every device profile by name: the packaged ones, then ``extra_dirs`` (which override)."""
    profiles: dict[str, dict[str, Any]] = {}
    for folder in [PROFILES_DIR, *(extra_dirs or [])]:
        if not Path(folder).is_dir():
            raise MobileDiffError(f"device profile folder not found: {folder}")
        for path in sorted(Path(folder).glob("*.json")):
            try:
                profile = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise MobileDiffError(f"device profile {path} is not valid JSON: {exc}") from None
            problems = profile_problems(profile)
            if problems:
                raise MobileDiffError(f"device profile {path}: {problems[0]}")
            profile["profile_path"] = str(path)
            profiles[profile["name"]] = profile
    return profiles


def profile_problems(profile: Any) -> list[str]:
    """What a profile lacks; every figure must carry its source or basis."""
    if not isinstance(profile, dict):
        return ["must be a JSON object"]
    problems = [
        f"missing {key}"
        for key in (
            "name",
            "display_name",
            "platform",
            "ram_bytes",
            "ram_source",
            "app_memory_fraction",
            "app_memory_basis",
            "accelerators",
        )
        if key not in profile
    ]
    if problems:
        return problems
    if profile["platform"] not in TARGET_FOR_PLATFORM:
        problems.append(f"platform must be one of {', '.join(TARGET_FOR_PLATFORM)}")
    for name, acc in profile["accelerators"].items():
        for key in ("name", "peak_tops", "peak_source", "effective_tflops", "effective_basis"):
            if key not in acc:
                problems.append(f"accelerator {name} lacks {key}")
        if acc.get("effective_tflops") is not None and "estimate" not in str(
            acc.get("effective_basis", "")
        ):
            problems.append(
                f"accelerator {name}: a derived throughput must be labelled an estimate"
            )
    return problems


def estimate_fit(
    bundle: str | Path,
    profile: dict[str, Any],
    steps: int | None = None,
    budget_ms: float = 1000.0,
) -> dict[str, Any]:
    """Memory fit and latency estimate of ``bundle`` on the device ``profile``."""
    manifest = read_manifest(bundle)
    target = TARGET_FOR_PLATFORM[profile["platform"]]
    entries = {c: e for t, c, e in iter_components(manifest) if t == target}
    notes = []
    if not entries:
        present = sorted({t for t, _, _ in iter_components(manifest)})
        fallback = next(t for t in ("tflite", "coreml", "onnx") if t in present)
        notes.append(
            f"the bundle has no {target} models, which a {profile['platform']} app runs; "
            f"sizes and FLOPs are taken from its {fallback} models instead"
        )
        target = fallback
        entries = {c: e for t, c, e in iter_components(manifest) if t == target}

    pipeline = manifest["pipeline"]
    steps = steps or pipeline["sampler"]["num_inference_steps"]
    te_calls = 2 if pipeline["guidance"]["mode"] == "cfg" else 1
    calls = {"text_encoder": te_calls, "unet": steps, "vae_decoder": 1}
    flops = {c: (entries[c].get("flops") or 0) * n for c, n in calls.items()}
    missing_flops = [c for c in calls if not entries[c].get("flops")]
    if missing_flops:
        notes.append(f"the manifest gives no FLOPs for {', '.join(missing_flops)}")
    total_flops = sum(flops.values())

    sizes = {c: int(entries[c]["size_bytes"]) for c in calls}
    activations = {
        c: max(0, int(entries[c].get("estimated_peak_memory_bytes") or sizes[c]) - sizes[c])
        for c in calls
    }
    all_loaded = sum(sizes.values()) + max(activations.values())
    one_at_a_time = max(sizes[c] + activations[c] for c in calls)
    usable = int(profile["ram_bytes"] * profile["app_memory_fraction"])
    fits = all_loaded <= usable
    memory = {
        "all_loaded_bytes": all_loaded,
        "one_at_a_time_bytes": one_at_a_time,
        "usable_bytes": usable,
        "ram_bytes": profile["ram_bytes"],
        "fits_all_loaded": fits,
        "fits_one_at_a_time": one_at_a_time <= usable,
        "basis": [
            f"models: {', '.join(f'{c} {format_bytes(s)}' for c, s in sizes.items())} "
            f"({target} files in the manifest)",
            "activations: the largest component's, from the manifest's "
            "estimated_peak_memory_bytes (an exporter estimate)",
            f"usable: {profile['app_memory_fraction']:.0%} of {format_bytes(profile['ram_bytes'])} "
            f"RAM ({profile['app_memory_basis']}); RAM: {profile['ram_source']}",
        ],
    }

    accelerators = {}
    for name, acc in profile["accelerators"].items():
        tflops = acc.get("effective_tflops")
        if not tflops or not total_flops:
            accelerators[name] = {
                "name": acc["name"],
                "latency_ms": None,
                "basis": acc["effective_basis"],
            }
            continue
        per = {c: round(f / (tflops * 1e12) * 1e3, 1) for c, f in flops.items()}
        latency = round(total_flops / (tflops * 1e12) * 1e3, 1)
        accelerators[name] = {
            "name": acc["name"],
            "effective_tflops": tflops,
            "peak_tops": acc.get("peak_tops"),
            "peak_source": acc.get("peak_source"),
            "latency_ms": latency,
            "per_component_ms": per,
            "within_budget": latency <= budget_ms,
            "basis": acc["effective_basis"],
        }
    best = min(
        (a for a in accelerators.values() if a["latency_ms"] is not None),
        key=lambda a: a["latency_ms"],
        default=None,
    )
    return {
        "estimate": True,
        "device": {k: profile.get(k) for k in ("name", "display_name", "platform", "soc")},
        "profile_path": profile.get("profile_path"),
        "bundle": str(bundle),
        "model_name": manifest["model"]["name"],
        "target": target,
        "image_size": pipeline["image_size"],
        "steps": steps,
        "text_encoder_calls": te_calls,
        "flops": {**flops, "total": total_flops},
        "memory": memory,
        "accelerators": accelerators,
        "best_latency_ms": best["latency_ms"] if best else None,
        "budget_ms": budget_ms,
        "within_budget": (best["latency_ms"] <= budget_ms) if best else None,
        "notes": notes,
    }


def format_fit(fit: dict[str, Any]) -> str:
    """The estimate as ``mobilediff check`` prints it, basis included."""
    d, m = fit["device"], fit["memory"]
    lines = [
        f"ESTIMATE (no phone was run): {fit['model_name']} on {d['display_name']} ({d['soc']}), "
        f"{fit['target']} models, {fit['image_size']}x{fit['image_size']}, {fit['steps']} step(s)",
        "",
        "memory:",
        f"  all three models loaded: {format_bytes(m['all_loaded_bytes'])}; one at a time: "
        f"{format_bytes(m['one_at_a_time_bytes'])}; usable by the app: "
        f"{format_bytes(m['usable_bytes'])} -> "
        + (
            "fits"
            if m["fits_all_loaded"]
            else "fits only loading one component at a time"
            if m["fits_one_at_a_time"]
            else "DOES NOT FIT"
        ),
        *(f"  basis: {b}" for b in m["basis"]),
        "",
        f"latency (compute bound: FLOPs / sustained throughput; {fit['text_encoder_calls']} "
        f"text-encoder call(s), {fit['steps']} UNet step(s), 1 decode; "
        f"{fit['flops']['total'] / 1e12:.3f} TFLOP per image):",
    ]
    for key, acc in fit["accelerators"].items():
        if acc["latency_ms"] is None:
            lines.append(f"  {key} ({acc['name']}): no estimate; {acc['basis']}")
            continue
        per = ", ".join(f"{c} {v:.0f} ms" for c, v in acc["per_component_ms"].items())
        verdict = "within" if acc["within_budget"] else "OVER"
        lines.append(
            f"  {key} ({acc['name']}): ~{acc['latency_ms']:.0f} ms ({per}) at "
            f"{acc['effective_tflops']} TFLOP/s -> {verdict} the {fit['budget_ms']:g} ms budget"
        )
        lines.append(f"    basis: {acc['basis']}")
        if acc.get("peak_tops"):
            lines.append(f"    published peak: {acc['peak_tops']} TOPS ({acc['peak_source']})")
    lines.extend(f"note: {n}" for n in fit["notes"])
    lines.append(
        "This is an estimate from published figures and the bundle's FLOPs; measure on the "
        "phone with `mobilediff bench BUNDLE --phone`."
    )
    return "\n".join(lines)


def fit_exit_code(fit: dict[str, Any]) -> int:
    """0 when the estimate fits memory and the budget; 3 when it does not (or cannot be said)."""
    if not fit["memory"]["fits_all_loaded"] and not fit["memory"]["fits_one_at_a_time"]:
        return 3
    return 0 if fit["within_budget"] else 3
