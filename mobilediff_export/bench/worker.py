"""One measurement in its own process, so its peak RSS is its own and its memory is freed.

The host harness runs ``python -m mobilediff_export.bench.worker SPEC_JSON`` per
(backend, component), per backend for the whole pipeline, and once for the matmul peak;
the worker prints one line ``BENCH_RESULT {json}`` (libraries may print other lines).
Peak RSS is the process's ``ru_maxrss``: the interpreter and the runtime library count
too, so ``baseline_rss_bytes`` (after imports, before the model loads) is recorded beside it.

Backends: ``pytorch`` (eager, the bundle's source model, fp32), ``litert`` (the bundle's
``.tflite`` files through ai_edge_litert, XNNPACK on CPU), ``onnxruntime`` (the bundle's
``.onnx`` files, CPU provider). The LiteRT and ONNX Runtime workers never import torch.
"""

from __future__ import annotations

import json
import resource
import sys
import time
import traceback
from typing import Any

import numpy as np

from .stats import summarize, time_ms

MARKER = "BENCH_RESULT "
#: Backend name in results -> bundle target it runs.
BACKEND_TARGETS = {"pytorch": None, "litert": "tflite", "onnxruntime": "onnx"}
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def random_feeds(specs: list[dict[str, Any]], vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs at the manifest's shapes: token ids in the vocabulary, timesteps mid-schedule,
    Gaussian floats elsewhere (zeros could take faster paths than real data)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if spec["layout"] == "NL":
            feeds[spec["name"]] = rng.integers(0, vocab, size=shape).astype(dtype)
        elif spec["name"] == "step_index":  # fold_timesteps: an index into the fixed list
            feeds[spec["name"]] = np.zeros(shape, dtype=dtype)
        elif spec["layout"] == "N":
            feeds[spec["name"]] = np.full(shape, 500.0, dtype=dtype)
        else:
            feeds[spec["name"]] = rng.standard_normal(shape).astype(dtype)
    return feeds


# ---------------------------------------------------------------------------- pytorch


def load_source_modules(manifest: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
    """The bundle's source model in PyTorch: (config, modules, what the weights are).

    ``config:NAME`` sources are rebuilt with the same seeded random weights; a source
    path that is gone falls back to random weights from the manifest's config, which
    times the same (latency does not depend on the values) and is labelled so.
    """
    from ..checkpoints import build_modules, load_model
    from ..config import ModelConfig
    from ..errors import MobileDiffError

    source = manifest["model"]["source"]
    config = ModelConfig.from_dict(manifest["model"]["config"])
    if source.startswith("config:"):
        return config, build_modules(config), "seeded random weights (as exported)"
    try:
        loaded = load_model(source)
        return loaded.config, loaded.modules, f"weights from {source}"
    except MobileDiffError:
        return config, build_modules(config), f"random weights ({source} not found here)"


class TorchComponent:
    """A torch module behind the runner interface (run by manifest tensor names)."""

    def __init__(self, module: Any, component: str, entry: dict[str, Any]) -> None:
        import torch

        from ..export.signatures import exportable

        self.module = exportable(module, component, "onnx")  # int64 ids, as the network takes
        self.inputs = entry["inputs"]
        self.outputs = entry["outputs"]
        self._torch = torch

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = []
        for spec in self.inputs:
            array = feeds[spec["name"]]
            args.append(
                torch.from_numpy(array.astype(np.int64 if spec["layout"] == "NL" else np.float32))
            )
        with torch.inference_mode():
            out = self.module(*args)
        return {self.outputs[0]["name"]: out.numpy()}


# ---------------------------------------------------------------------------- modes


def _open(spec: dict[str, Any], manifest: dict[str, Any], component: str) -> tuple[Any, dict]:
    """A runner for one component of the spec's backend, and its manifest entry."""
    backend = spec["backend"]
    target = BACKEND_TARGETS[backend]
    if target is None:
        import torch

        torch.set_num_threads(spec["threads"])
        # The PyTorch model has the I/O of the ONNX export (int64 ids) at the same shapes.
        ref = manifest["components"].get("onnx") or next(iter(manifest["components"].values()))
        entry = ref[component]
        _, modules, _ = load_source_modules(manifest)
        return TorchComponent(modules[component], component, entry), entry
    from ..runtime.runners import open_runner

    entry = manifest["components"][target][component]
    return open_runner(spec["bundle"], target, entry, num_threads=spec["threads"]), entry


def measure_component(spec: dict[str, Any]) -> dict[str, Any]:
    """Load time, first run and warm latency of one component on one backend."""
    from ..bundle import read_manifest

    manifest = read_manifest(spec["bundle"])
    if spec["backend"] == "pytorch":
        import torch  # counted in the baseline, not in the model's memory

        torch.set_num_threads(spec["threads"])
    baseline = peak_rss_bytes()
    load_ms, (runner, entry) = time_ms(lambda: _open(spec, manifest, spec["component"]))
    vocab = manifest["model"]["config"]["text_encoder"]["vocab_size"]
    feeds = random_feeds(entry["inputs"], vocab)
    first_ms, _ = time_ms(lambda: runner.run(feeds))
    for _ in range(spec["warmup"]):
        runner.run(feeds)
    samples = [time_ms(lambda: runner.run(feeds))[0] for _ in range(spec["iterations"])]
    return {
        "load_ms": round(load_ms, 3),
        "first_run_ms": round(first_ms, 3),
        "warm_ms": summarize(samples),
        "samples_ms": [round(s, 3) for s in samples],
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak_rss_bytes(),
    }


class _Timed:
    """Wraps a runner (or the tokenizer), adding each call's milliseconds to ``times``."""

    def __init__(self, inner: Any, times: list[float], method: str = "run") -> None:
        self._inner, self._times, self._method = inner, times, method

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._times.append((time.perf_counter() - start) * 1e3)

        return timed

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._inner(*args, **kwargs)
        finally:
            self._times.append((time.perf_counter() - start) * 1e3)


def measure_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """Prompt to decoded image on one backend, per stage, for the manifest's (or given) steps.

    Stages: tokenize, text_encoder (x2 with guidance), unet (every step), vae_decoder,
    and sampler: everything else in the loop (the numpy update rule, guidance mixing,
    copies). ``total`` is the wall clock of the whole call.
    """
    from ..bundle import read_manifest
    from ..schedulers import sampler_from_dict

    manifest = read_manifest(spec["bundle"])
    sampler_dict = spec.get("sampler") or manifest["pipeline"]["sampler"]
    baseline = peak_rss_bytes()
    times: dict[str, list[float]] = {k: [] for k in ("tokenize", *COMPONENTS)}
    if spec["backend"] == "pytorch":
        call, load_ms = _torch_pipeline(spec, manifest, sampler_dict, times)
    else:
        from ..runtime.pipeline import BundlePipeline

        def load() -> Any:
            return BundlePipeline(
                spec["bundle"], BACKEND_TARGETS[spec["backend"]], spec["threads"], verify=False
            )

        load_ms, pipe = time_ms(load)
        pipe.sampler = sampler_from_dict(sampler_dict)
        pipe.tokenizer = _Timed(pipe.tokenizer, times["tokenize"], method="__call__")
        for name in COMPONENTS:
            pipe.runners[name] = _Timed(pipe.runners[name], times[name])
        noise = np.random.default_rng(spec["seed"]).standard_normal(pipe.latent_shape)

        def call() -> Any:
            return pipe(spec["prompt"], latents=noise.astype(np.float32), output_type="decoded")

    first_ms, _ = time_ms(call)
    for _ in range(spec["warmup"]):
        call()
    runs = []
    for _ in range(spec["iterations"]):
        for values in times.values():
            values.clear()
        total, _ = time_ms(call)
        stages = {k: round(sum(v), 3) for k, v in times.items()}
        stages["sampler"] = round(max(0.0, total - sum(stages.values())), 3)
        runs.append(
            {"stages_ms": stages, "total_ms": round(total, 3), "unet_calls": len(times["unet"])}
        )
    stage_names = ("tokenize", "text_encoder", "unet", "sampler", "vae_decoder")
    return {
        "steps": len(sampler_dict["timesteps"]),
        "sampler": sampler_dict["name"],
        "load_ms": round(load_ms, 3),
        "first_run_ms": round(first_ms, 3),
        "runs": runs,
        "stages_ms": {
            k: summarize([r["stages_ms"][k] for r in runs])["median"] for k in stage_names
        },
        "total_ms": summarize([r["total_ms"] for r in runs]),
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def _torch_pipeline(
    spec: dict[str, Any], manifest: dict[str, Any], sampler_dict: dict, times: dict
) -> tuple[Any, float]:
    import torch

    from ..pipeline import Pipeline
    from ..runtime.pipeline import tokenizer_from_manifest

    torch.set_num_threads(spec["threads"])

    def load() -> Pipeline:
        config, modules, _ = load_source_modules(manifest)
        tokenizer = tokenizer_from_manifest(spec["bundle"], manifest)
        return Pipeline(config=config, tokenizer=tokenizer, **modules)

    load_ms, pipe = time_ms(load)
    pipe.tokenizer = _Timed(pipe.tokenizer, times["tokenize"], method="tokenize")
    for name in COMPONENTS:
        setattr(pipe, name, _Timed(getattr(pipe, name), times[name]))
    guidance = manifest["pipeline"]["guidance"]
    scale = float(guidance["scale"]) if guidance["mode"] == "cfg" else 1.0
    noise = np.random.default_rng(spec["seed"]).standard_normal((1, *pipe.config.latent_shape))

    def call() -> Any:
        return pipe(
            spec["prompt"],
            sampler=sampler_dict["name"],
            timesteps=[int(t) for t in sampler_dict["timesteps"]],
            guidance_scale=scale,
            latents=noise.astype(np.float32),
            output_type="np",
        )

    return call, load_ms


def measure_peak(spec: dict[str, Any]) -> dict[str, Any]:
    from .peak import measure_matmul_peak

    return measure_matmul_peak(spec["threads"], size=spec.get("size", 4096))


def call(spec: dict[str, Any]) -> dict[str, Any]:
    """``function``: ``module:name`` of a function taking the spec (peers, paper scale)."""
    import importlib

    module, name = spec["function"].split(":")
    return getattr(importlib.import_module(module), name)(spec)


MODES = {
    "component": measure_component,
    "pipeline": measure_pipeline,
    "peak": measure_peak,
    "call": call,
}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0] if argv else sys.stdin.read())
    try:
        result = {"status": "ok", **MODES[spec["mode"]](spec)}
    except Exception as exc:  # report any failure as data; the parent decides what it means
        result = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
            "traceback": traceback.format_exc()[-4000:],
            "peak_rss_bytes": peak_rss_bytes(),
        }
    sys.stdout.write("\n" + MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
