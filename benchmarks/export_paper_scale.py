"""Export the paper-size model and record time and peak memory per component.

Run it alone on the machine (other engineers share it; take the heavy-work lock)::

    flock /tmp/mobilediff-heavy.lock python benchmarks/export_paper_scale.py --target tflite

It writes ``benchmarks/results/export_paper_scale_<target>.json``:

- ``components``: each component converted in a fresh process of its own, so each
  peak RSS is that component's alone (the process's ``ru_maxrss`` from ``wait4``);
- ``whole_export``: the three components converted one after another in one process that
  loads the whole model first, as ``mobilediff export`` does (each component freed before
  the next); its peak is what the 6 GiB budget of issue 3 is about;
- ``parity``: each written file run once in the LiteRT interpreter against PyTorch on one
  random input (a fresh process again, not counted in the export's memory).

A target is one converter function in ``CONVERTERS`` (``convert_<target>`` from
``mobilediff_export.export``) plus, optionally, a parity check in ``PARITY``; adding Core
ML is one entry in each.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BUDGET_BYTES = 6 * 1024**3
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
DEFAULT_RECIPES = {"tflite": "int8-dynamic", "coreml": "fp16"}
SUFFIX = {"tflite": ".tflite", "coreml": ".mlpackage"}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


# --- one converter per target ---------------------------------------------------------


def convert_tflite(module, config, component: str, out: Path, recipe: str) -> dict[str, Any]:
    from mobilediff_export.export.quantize import get_recipe
    from mobilediff_export.export.tflite import convert_tflite as convert

    artifact = convert(module, config, component, out, get_recipe(recipe))
    return {
        "file": out.name,
        "file_bytes": out.stat().st_size,
        "rewrites": artifact.rewrites,
        "inputs": [s.to_dict() for s in artifact.inputs],
        "outputs": [s.to_dict() for s in artifact.outputs],
        "details": artifact.details,
    }


def convert_coreml(module, config, component: str, out: Path, recipe: str) -> dict[str, Any]:
    import shutil

    from mobilediff_export.export.coreml import convert_coreml as convert
    from mobilediff_export.export.quantize import get_recipe

    if out.exists():  # the whole-export run writes where the per-component runs wrote
        shutil.rmtree(out)
    artifact = convert(module, config, component, out, get_recipe(recipe))
    return {
        "file": out.name,
        "file_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        "rewrites": artifact.rewrites,
        "inputs": [s.to_dict() for s in artifact.inputs],
        "outputs": [s.to_dict() for s in artifact.outputs],
        "details": artifact.details,
    }


CONVERTERS = {"tflite": convert_tflite, "coreml": convert_coreml}


def parity_tflite(model: str, component: str, path: Path) -> dict[str, Any]:
    """One random input through the .tflite (2 threads) and through PyTorch."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from mobilediff_export.checkpoints import load_model
    from mobilediff_export.export.rewrite import DEFAULT_REWRITES, rewritten_io

    loaded = load_model(model)
    module = loaded.modules.pop(component)
    loaded.modules.clear()
    io = rewritten_io(loaded.config, component, "tflite", DEFAULT_REWRITES["tflite"])
    interpreter = Interpreter(model_path=str(path), num_threads=2)
    runner = interpreter.get_signature_runner(component)
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}  # in the network's argument order
    for spec in io.inputs:
        if spec.dtype == "int32":
            feeds[spec.name] = rng.integers(0, 49407, spec.shape).astype(np.int32)
        elif spec.name == "timestep":
            feeds[spec.name] = np.full(spec.shape, 999.0, np.float32)
        else:
            feeds[spec.name] = rng.standard_normal(spec.shape).astype(np.float32)
    runner(**feeds)  # warm-up: XNNPACK packs the weights on the first run
    started = time.perf_counter()
    (output,) = runner(**feeds).values()
    seconds = time.perf_counter() - started
    del runner, interpreter
    gc.collect()
    with torch.inference_mode():
        args = [torch.from_numpy(feeds[name]) for name in feeds]
        if component == "text_encoder":
            args = [args[0].long()]
        reference = module(*args).numpy()
    error = output - reference
    return {
        "max_abs_error": float(np.abs(error).max()),
        "output_max_abs": float(np.abs(reference).max()),
        "relative_l2_error": float(np.linalg.norm(error) / np.linalg.norm(reference)),
        "litert_seconds": round(seconds, 3),
    }


def parity_coreml(model: str, component: str, path: Path) -> dict[str, Any]:
    """What Linux can check of the .mlpackage (check_coreml); prediction needs macOS.

    The manifest entry it compares against is rebuilt from what the converter promises:
    the recipe and rewrites recorded in the model, the I/O of ``rewritten_io``.
    """
    from mobilediff_export.checkpoints import load_model
    from mobilediff_export.export.coreml import check_coreml, read_metadata
    from mobilediff_export.export.rewrite import DEFAULT_REWRITES, rewritten_io

    loaded = load_model(model)
    module = loaded.modules.pop(component)
    loaded.modules.clear()
    meta = read_metadata(path)
    io = rewritten_io(loaded.config, component, "coreml", DEFAULT_REWRITES["coreml"])
    entry = {
        "recipe": meta["recipe"],
        "rewrites": meta["rewrites"],
        "inputs": [s.to_dict() for s in io.inputs],
        "outputs": [s.to_dict() for s in io.outputs],
    }
    started = time.perf_counter()
    result = check_coreml(path, entry, module, loaded.config, component)
    result["check_seconds"] = round(time.perf_counter() - started, 2)
    for check in result["checks"].values():
        check.pop("records", None)
    return result


PARITY = {"tflite": parity_tflite, "coreml": parity_coreml}


# --- workers (run in a child process) ------------------------------------------------


def _worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(2)
    from mobilediff_export.analysis import count_parameters
    from mobilediff_export.checkpoints import load_model

    out_dir = Path(args.out)
    convert = CONVERTERS[args.target]
    recipe = args.recipe or DEFAULT_RECIPES[args.target]
    if args.mode == "parity":
        path = out_dir / f"{args.component}{SUFFIX[args.target]}"
        return PARITY[args.target](args.model, args.component, path)

    started = time.perf_counter()
    if args.mode == "component":
        # Build only the component asked for: the figure is this component's own.
        from mobilediff_export.checkpoints import models_dir
        from mobilediff_export.config import ModelConfig

        config = ModelConfig.from_json_file(models_dir() / f"{args.model}.json")
        modules = {args.component: _build_one(config, args.component)}
        names = [args.component]
    else:
        loaded = load_model(args.model)
        config, modules, names = loaded.config, loaded.modules, list(COMPONENTS)
    result: dict[str, Any] = {"load_seconds": round(time.perf_counter() - started, 2)}
    per_component = {}
    for name in names:
        module = modules.pop(name)
        params = count_parameters(module)
        before = _peak_rss_bytes()
        started = time.perf_counter()
        out = out_dir / f"{name}{SUFFIX[args.target]}"
        facts = convert(module, config, name, out, recipe)
        facts.update(
            parameters=params,
            seconds=round(time.perf_counter() - started, 2),
            peak_rss_bytes_so_far=_peak_rss_bytes(),
            peak_rss_rose=_peak_rss_bytes() > before,
        )
        del module
        gc.collect()
        facts["rss_after_free_bytes"] = _current_rss_bytes()
        per_component[name] = facts
    result["components"] = per_component
    result["recipe"] = recipe
    return result


def _build_one(config, component: str):
    """The component with exactly the weights ``load_model`` gives it (so the parity run,
    which loads the model, compares like with like): the three networks draw from one
    seeded generator in order, so the others are built too and dropped at once."""
    from mobilediff_export.checkpoints import build_modules

    modules = build_modules(config)
    module = modules.pop(component)
    modules.clear()
    gc.collect()
    return module


class WorkerFailed(RuntimeError):
    pass


def _run_child(argv: list[str]) -> tuple[dict[str, Any], int, float]:
    """Run this script as a worker; its JSON result, its peak RSS (bytes), its wall time."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, *argv, "--result", result.name])
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise WorkerFailed(f"worker {argv} failed with exit code {proc.returncode}")
        return json.load(result), usage.ru_maxrss * 1024, seconds


def _machine() -> dict[str, Any]:
    import torch

    from mobilediff_export.export.tflite import _versions

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "packages": _versions(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def run_target(
    target: str,
    model: str,
    recipe: str | None,
    out_dir: Path,
    check: bool,
    components: tuple[str, ...] = COMPONENTS,
    whole: bool = True,
    convert: bool = True,
    save=lambda report: None,
) -> dict[str, Any]:
    """Convert (each component alone, then all in one process) and check; ``save`` is
    called after every step so an interrupted run keeps what it measured."""
    recipe = recipe or DEFAULT_RECIPES[target]
    common = ["--target", target, "--model", model, "--recipe", recipe, "--out", str(out_dir)]
    report: dict[str, Any] = {
        "target": target,
        "model": model,
        "recipe": recipe,
        "date": datetime.date.today().isoformat(),
        "machine": _machine(),
        "budget_bytes": BUDGET_BYTES,
        "components": {},
    }
    for component in components if convert else ():
        print(f"[{target}] {component}: converting in its own process", flush=True)
        result, peak, seconds = _run_child(
            ["--worker", "--mode", "component", "--component", component, *common]
        )
        facts = result["components"][component]
        facts["process_peak_rss_bytes"] = peak
        facts["process_seconds"] = round(seconds, 2)
        report["components"][component] = facts
        save(report)
        print(f"    {facts['seconds']} s, peak {peak / 2**30:.2f} GiB", flush=True)

    if convert and whole:
        print(f"[{target}] whole export in one process", flush=True)
        result, peak, seconds = _run_child(["--worker", "--mode", "whole", *common])
        keys = ("seconds", "peak_rss_bytes_so_far", "rss_after_free_bytes", "file_bytes")
        report["whole_export"] = {
            "seconds": round(seconds, 2),
            "peak_rss_bytes": peak,
            "within_budget": peak <= BUDGET_BYTES,
            "load_seconds": result["load_seconds"],
            "components": {
                name: {k: facts[k] for k in keys} for name, facts in result["components"].items()
            },
        }
        save(report)
        print(f"    {seconds:.0f} s, peak {peak / 2**30:.2f} GiB", flush=True)

    if check and target in PARITY:
        report["parity"] = {}
        for component in components:
            print(f"[{target}] {component}: parity against PyTorch", flush=True)
            try:
                result, peak, _ = _run_child(
                    ["--worker", "--mode", "parity", "--component", component, *common]
                )
                result["process_peak_rss_bytes"] = peak
            except WorkerFailed as exc:
                result = {"error": str(exc)}
            report["parity"][component] = result
            save(report)
    report["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    save(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=sorted(CONVERTERS), default="tflite")
    parser.add_argument("--model", default="mobilediffusion")
    parser.add_argument(
        "--recipe",
        default=None,
        help="default: the target's (int8-dynamic for tflite); another recipe is recorded "
        "under other_recipes in the same results file",
    )
    parser.add_argument("--components", default=",".join(COMPONENTS), help="comma list")
    parser.add_argument("--out", default=None, help="where the files go (default: a temp dir)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity runs")
    parser.add_argument("--no-whole", action="store_true", help="skip the one-process export")
    parser.add_argument(
        "--check-only", action="store_true", help="parity of the files already in --out"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("component", "whole", "parity"), help=argparse.SUPPRESS)
    parser.add_argument("--component", choices=COMPONENTS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = _worker(args)
        Path(args.result).write_text(json.dumps(result, indent=2, default=str))
        return 0
    if args.check_only and not args.out:
        parser.error("--check-only needs --out, the folder of an earlier run")

    components = tuple(c for c in args.components.split(",") if c)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        parser.error(f"unknown components {sorted(unknown)}")
    recipe = args.recipe or DEFAULT_RECIPES[args.target]
    path = RESULTS / f"export_paper_scale_{args.target}.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.exists() else None

    def save(report: dict[str, Any]) -> None:
        if recipe == DEFAULT_RECIPES[args.target]:
            merged = dict(report)
            if previous and previous.get("other_recipes"):
                merged["other_recipes"] = previous["other_recipes"]
            if args.check_only and previous:
                merged = {**previous, "parity": report.get("parity", {})}
        else:
            merged = dict(previous or {})
            merged.setdefault("other_recipes", {})[recipe] = report
        path.write_text(json.dumps(merged, indent=2, default=str) + "\n")

    with tempfile.TemporaryDirectory(prefix="paper-export-") as scratch:
        out_dir = Path(args.out) if args.out else Path(scratch)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_target(
            args.target,
            args.model,
            recipe,
            out_dir,
            check=not args.no_check,
            components=components,
            whole=not args.no_whole,
            convert=not args.check_only,
            save=save,
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
