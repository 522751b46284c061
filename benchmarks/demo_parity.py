"""Every quantization recipe on the embedded demo model: export, validate, one table.

    python benchmarks/demo_parity.py            # all recipes of tflite, coreml and onnx
    python benchmarks/demo_parity.py --target tflite --recipe w8a8

For each (target, recipe) it exports a bundle of ``models/demo`` with that recipe on every
component (``mobilediff export --target T --recipe R``), runs ``validate_bundle`` (LiteRT
and ONNX components and the whole pipeline against PyTorch; Core ML: the Linux checks,
prediction needs macOS) and records the figures, sizes and export time in
``benchmarks/results/demo_parity.{json,md}``. The thresholds are validate's own
(``validate.THRESHOLDS``), issue "Export"'s: fp32 within 1e-4 of the output scale, fp16
image >= 35 dB, int8 weight-only >= 30 dB.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def _first(tree: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in a nested dict/list."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for value in tree:
            found = _first(value, key)
            if found is not None:
                return found
    return None


def run_one(target: str, recipe: str, work: Path, threads: int) -> dict[str, Any]:
    from mobilediff_export import export_bundle, validate_bundle
    from mobilediff_export.bundle import inspect_bundle
    from mobilediff_export.errors import MobileDiffError
    from mobilediff_export.validate import failures

    row: dict[str, Any] = {"target": target, "recipe": recipe}
    out = work / f"{target}-{recipe}"
    started = time.perf_counter()
    try:
        export_bundle(out=out, targets=target, recipe=recipe, progress=False, force=True)
    except MobileDiffError as exc:
        return {**row, "status": "export failed", "error": str(exc)}
    row["export_seconds"] = round(time.perf_counter() - started, 1)
    summary = inspect_bundle(out)
    row["size_bytes"] = {c["component"]: c["size_bytes"] for c in summary["components"]}
    report = validate_bundle(out, num_threads=threads)
    if target == "coreml":
        checks = report["coreml"]
        row["components"] = {
            c: {
                "linux_checks_passed": checks[c]["linux_checks_passed"],
                "rebuilt_weights_psnr_db": _first(checks[c].get("linux_checks"), "psnr_db"),
            }
            for c in COMPONENTS
        }
        row["image_psnr_db"] = None  # prediction needs macOS
    else:
        figures = report["components"][target]
        row["components"] = {
            c: {k: figures[c][k] for k in ("psnr_db", "relative_error", "passed")}
            for c in COMPONENTS
        }
        row["image_psnr_db"] = report["pipeline"][target]["psnr_db"]
    row["passed"] = report["passed"]
    row["failures"] = failures(report)
    row["status"] = "ok"
    return row


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Every recipe on the demo model: parity against PyTorch",
        "",
        f"Produced by `{result['command']}` on {result['created']} (mobilediff "
        f"{result['version']}, model `{result['model']}`). Component figures: PSNR in dB "
        "(peak = the reference's range) and max abs error / output scale; image: the "
        "whole pipeline's PSNR against the PyTorch image (uint8), validate's prompt and "
        "seed. Core ML cannot predict on Linux: its figure is the PSNR of the PyTorch "
        "module with the weights rebuilt from the MIL program (the weights' error alone).",
        "",
        "| target | recipe | text encoder | UNet | decoder | image dB | size | export s | "
        "validate |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"| {row['target']} | {row['recipe']} | {row['error']} |||||||")
            continue
        cells = []
        for c in COMPONENTS:
            fig = row["components"][c]
            if row["target"] == "coreml":
                psnr = fig["rebuilt_weights_psnr_db"]
                cells.append(f"{psnr:.1f} (rebuilt)" if psnr is not None else "–")
            else:
                cells.append(f"{fig['psnr_db']:.1f} / {fig['relative_error']:.1e}")
        image = row["image_psnr_db"]
        size = sum(row["size_bytes"].values()) / 2**20
        verdict = "passed" if row["passed"] else "FAILED: " + "; ".join(row["failures"])
        if row["target"] == "coreml" and row["passed"]:
            verdict = "Linux checks passed; prediction needs macOS"
        if row.get("rerun"):
            verdict += f" (rerun {row['rerun']})"
        lines.append(
            f"| {row['target']} | {row['recipe']} | {' | '.join(cells)} | "
            f"{f'{image:.1f}' if image is not None else '–'} | {size:.1f} MiB | "
            f"{row['export_seconds']} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    from mobilediff_export.export.quantize import RECIPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", choices=("tflite", "coreml", "onnx"))
    parser.add_argument("--recipe", action="append", help="only these recipes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    targets = args.target or ["tflite", "coreml", "onnx"]
    pairs = [
        (t, name)
        for t in targets
        for name, recipe in RECIPES.items()
        if t in recipe.targets and (not args.recipe or name in args.recipe)
    ]
    from mobilediff_export import __version__
    from mobilediff_export.export import DEFAULT_MODEL

    rows = []
    with tempfile.TemporaryDirectory(prefix="demo-parity-") as work:
        for i, (target, recipe) in enumerate(pairs, 1):
            print(f"[{i}/{len(pairs)}] {target} {recipe}", file=sys.stderr, flush=True)
            rows.append(run_one(target, recipe, Path(work), args.threads))
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    command = "python benchmarks/demo_parity.py " + " ".join(sys.argv[1:])
    result = {"command": command, "created": now, "version": __version__}
    result.update(model=DEFAULT_MODEL, rows=rows)
    previous = args.out / "demo_parity.json"
    if (args.target or args.recipe) and previous.is_file():
        # A partial run replaces its own rows in the recorded table and says so.
        old = json.loads(previous.read_text())
        redone = {(r["target"], r["recipe"]) for r in rows}
        for row in rows:
            row["rerun"] = f"{now} by `{command}`"
        kept = [r for r in old["rows"] if (r["target"], r["recipe"]) not in redone]
        order = {(r["target"], r["recipe"]): i for i, r in enumerate(old["rows"])}
        merged = sorted(kept + rows, key=lambda r: order.get((r["target"], r["recipe"]), 999))
        result = {**old, "rows": merged}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "demo_parity.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "demo_parity.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if all(r.get("passed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
