"""Host mode: where the time goes when a bundle runs on this machine, per stage and backend.

For each bundle (several give precisions side by side) and each backend it can run on,
PyTorch eager from the bundle's source model, LiteRT with XNNPACK, ONNX Runtime, the
harness measures, each in a fresh process (``worker``) so memory is honest:

* per component: load time, first run, warm latency (median, p90 over ``iterations``
  after ``warmup``), peak RSS, file size, FLOPs and achieved GFLOP/s;
* the whole pipeline for the manifest's steps (or others): tokenize, text encoder, UNet
  steps, sampler, decoder, total; load time and peak RSS of all three models together;
* this CPU's fp32 matmul peak at the same thread count, to put GFLOP/s in proportion.

The result is one JSON document (``schemas/bench_result.schema.json``, kind ``host``);
``report.py`` turns it into Markdown and a chart.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..bundle import check_bundle, file_sha256, manifest_path
from ..errors import MobileDiffError
from .hostinfo import default_threads, host_facts, load_average, utc_now
from .peak import fraction_of_peak
from .worker import BACKEND_TARGETS, COMPONENTS, MARKER

HOST_RESULT_SCHEMA_VERSION = 1
DEFAULT_PROMPT = "a photo of an astronaut riding a horse on mars"
BACKENDS = tuple(BACKEND_TARGETS)

Log = Callable[[str], None]


@dataclass
class HostSettings:
    backends: tuple[str, ...] | None = None
    """pytorch, litert, onnxruntime; None: every one the bundle has, and pytorch."""
    components: tuple[str, ...] = COMPONENTS
    warmup: int = 2
    iterations: int = 10
    pipeline_warmup: int = 1
    pipeline_iterations: int = 3
    steps: tuple[int, ...] | None = None
    """End-to-end at these step counts; None: the manifest's. 1 uses the one-step sampler."""
    threads: int = field(default_factory=default_threads)
    prompt: str = DEFAULT_PROMPT
    seed: int = 0
    measure_peak: bool = True
    pipelines: bool = True
    timeout_s: float = 3600.0
    lock: str | None = None
    """A lock file every measurement holds (``heavy_lock``); None: none."""


class WorkerFailed(MobileDiffError):
    pass


@contextlib.contextmanager
def heavy_lock(path: str | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (None: no lock).

    On a shared machine heavy jobs take turns through one lock file; holding it around each
    measurement keeps other heavy work off the CPUs while it is timed, and releasing it in
    between lets theirs run.
    """
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_worker(spec: dict[str, Any], timeout_s: float, lock: str | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; its result, or status ``error``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(spec.get("threads", 1)))
    argv = [sys.executable, "-m", "mobilediff_export.bench.worker", json.dumps(spec)]
    try:
        with heavy_lock(lock):
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout_s,
                env=env,
                stdin=subprocess.DEVNULL,
                check=False,
            )
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout_s:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    if proc.returncode < 0:
        sig = signal.Signals(-proc.returncode).name
        hint = " (out of memory?)" if proc.returncode == -signal.SIGKILL else ""
        return {"status": "error", "error": f"worker killed by {sig}{hint}"}
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"status": "error", "error": f"worker failed: {tail[:300]}"}


def available_backends(manifest: dict[str, Any]) -> list[str]:
    targets = set(manifest["components"])
    return [b for b, t in BACKEND_TARGETS.items() if t is None or t in targets]


def sampler_for_steps(manifest: dict[str, Any], steps: int) -> dict[str, Any]:
    """The manifest's sampler, or the same schedule at ``steps``.

    One step uses the one-step sampler from t=999 (trailing spacing), as the paper's
    DiffusionGAN model samples; the time a step takes does not depend on the timestep.
    """
    from ..config import ModelConfig
    from ..schedulers import make_sampler

    current = manifest["pipeline"]["sampler"]
    if steps == current["num_inference_steps"]:
        return current
    config = ModelConfig.from_dict(manifest["model"]["config"]).pipeline
    name = "onestep" if steps == 1 else current["name"]
    config = replace(
        config,
        sampler=name,
        num_inference_steps=steps,
        prediction_type=current.get("prediction_type", config.prediction_type),
        timestep_spacing="trailing" if steps == 1 else config.timestep_spacing,
    )
    return make_sampler(config, num_inference_steps=steps).to_dict()


def bundle_facts(bundle: Path, manifest: dict[str, Any], ident: str) -> dict[str, Any]:
    pipeline = manifest["pipeline"]
    estimates = manifest.get("estimates") or {}
    return {
        "id": ident,
        "path": str(bundle),
        "model_name": manifest["model"]["name"],
        "source": manifest["model"]["source"],
        "manifest_sha256": file_sha256(manifest_path(bundle)),
        "image_size": pipeline["image_size"],
        "latent_shape": pipeline["latent_shape"],
        "guidance": pipeline["guidance"]["mode"],
        "sampler": pipeline["sampler"]["name"],
        "steps": pipeline["sampler"]["num_inference_steps"],
        "total_size_bytes": estimates.get("total_size_bytes"),
        "image_flops": estimates.get("image_flops"),
    }


def _entry_for(manifest: dict[str, Any], backend: str, component: str) -> dict[str, Any]:
    target = BACKEND_TARGETS[backend]
    if target is None:  # PyTorch: FLOPs and parameters are the network's, on any target
        ref = next(iter(manifest["components"].values()))[component]
        return {
            "precision": "fp32",
            "recipe": "eager",
            "file": None,
            "size_bytes": None,
            "parameters": ref.get("parameters"),
            "flops": ref.get("flops"),
        }
    entry = manifest["components"][target][component]
    return {
        k: entry.get(k)
        for k in ("precision", "recipe", "file", "size_bytes", "parameters", "flops")
    }


def bench_host(
    bundles: list[str | Path], settings: HostSettings, log: Log | None = None
) -> dict[str, Any]:
    """Measure every bundle on every backend; the ``host`` result document."""
    log = log or (lambda message: None)
    loaded = []
    for i, bundle in enumerate(bundles):
        bundle = Path(bundle)
        manifest = check_bundle(bundle)  # sha256 of every file: never time a corrupt bundle
        ident = bundle.resolve().name
        if any(ident == b[2] for b in loaded):
            ident = f"{ident}-{i}"
        loaded.append((bundle, manifest, ident))
    for _, manifest, ident in loaded:
        wanted = settings.backends or tuple(available_backends(manifest))
        missing = [b for b in wanted if b not in available_backends(manifest)]
        if missing:
            raise MobileDiffError(
                f"bundle {ident} cannot run on {', '.join(missing)} (it has "
                f"{', '.join(available_backends(manifest))})"
            )
        unknown = [b for b in wanted if b not in BACKENDS]
        if unknown:
            raise MobileDiffError(f"unknown backend {unknown[0]} (known: {', '.join(BACKENDS)})")

    result: dict[str, Any] = {
        "schema_version": HOST_RESULT_SCHEMA_VERSION,
        "kind": "host",
        "created": utc_now(),
        "host": host_facts(settings.threads),
        "settings": asdict(settings),
        "matmul_peak": None,
        "bundles": [bundle_facts(b, m, ident) for b, m, ident in loaded],
        "components": [],
        "pipelines": [],
    }
    base = {"threads": settings.threads, "seed": settings.seed}
    if settings.measure_peak:
        log("matmul peak")
        peak = run_worker({"mode": "peak", **base}, settings.timeout_s, settings.lock)
        result["matmul_peak"] = peak if peak["status"] == "ok" else None
    peak_gflops = (result["matmul_peak"] or {}).get("peak_gflops") or 0.0

    for bundle, manifest, ident in loaded:
        for backend in settings.backends or available_backends(manifest):
            for component in settings.components:
                log(f"{ident}: {backend} {component}")
                spec = {
                    "mode": "component",
                    "bundle": str(bundle),
                    "backend": backend,
                    "component": component,
                    "warmup": settings.warmup,
                    "iterations": settings.iterations,
                    **base,
                }
                measured = run_worker(spec, settings.timeout_s, settings.lock)
                row = {
                    "bundle": ident,
                    "backend": backend,
                    "target": BACKEND_TARGETS[backend],
                    "component": component,
                    **_entry_for(manifest, backend, component),
                    **measured,
                }
                row.pop("traceback", None)
                median = (row.get("warm_ms") or {}).get("median")
                row.update(fraction_of_peak(row.get("flops"), median, peak_gflops))
                result["components"].append(row)
            if not settings.pipelines:
                continue
            for steps in settings.steps or (
                manifest["pipeline"]["sampler"]["num_inference_steps"],
            ):
                log(f"{ident}: {backend} pipeline, {steps} steps")
                spec = {
                    "mode": "pipeline",
                    "bundle": str(bundle),
                    "backend": backend,
                    "sampler": sampler_for_steps(manifest, steps),
                    "prompt": settings.prompt,
                    "warmup": settings.pipeline_warmup,
                    "iterations": settings.pipeline_iterations,
                    **base,
                }
                measured = run_worker(spec, settings.timeout_s, settings.lock)
                measured.pop("traceback", None)
                precision = {c: _entry_for(manifest, backend, c)["precision"] for c in COMPONENTS}
                result["pipelines"].append(
                    {
                        "bundle": ident,
                        "backend": backend,
                        "precision": precision,
                        "requested_steps": steps,
                        **measured,
                    }
                )
    result["finished"] = utc_now()
    result["host"]["load_average_end"] = load_average()
    rows = result["components"] + result["pipelines"]
    result["status"] = "complete" if all(r["status"] == "ok" for r in rows) else "incomplete"
    return result
