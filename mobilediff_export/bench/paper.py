"""Paper scale on this host, peers side by side, and what each rewrite and recipe buys.

``benchmarks/run_paper_scale.py`` calls ``run_paper_scale``; the result (kind
``paper_scale`` of ``schemas/bench_result.schema.json``) has four parts:

* ``paper``: the ``mobilediffusion`` config at 512x512 (random weights) exported to a bundle
  (LiteRT with the default recipes, and ONNX), run by ``host.bench_host`` at 1 and 8
  steps: per component latency, FLOPs, achieved GFLOP/s against the matmul peak measured
  in the same run;
* ``peers``: one SD-1.5-family UNet (``peers.PEER_NAME``), same weights, run by diffusers
  eager, plain litert-torch, plain torch.onnx.export + ONNX Runtime, and by us (our UNet
  with those weights, our converter and recipe); each as a ratio to ours;
* ``rewrites``: each mobile rewrite alone (fp32) and each LiteRT recipe (default
  rewrites) on our UNet, as a ratio to no rewrite / fp32;
* ``speed_targets``: issue "Export"'s targets. Each is a ratio of two UNet step times, so
  both are measured in alternating rounds (``paired_unet_rounds``): a drift in the shared
  machine's speed between two separate measurements would otherwise land in the ratio.

Every conversion and measurement is its own process (see ``peers``); conversions are
cached in the work folder by name, so a rerun after an interruption measures again
without converting again.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .host import HostSettings, bench_host, run_worker
from .hostinfo import host_facts, load_average, utc_now
from .stats import summarize

PEERS = "mobilediff_export.bench.peers"

Log = Callable[[str], None]


@dataclass
class PaperSettings:
    work: Path
    threads: int
    bundle: Path | None = None
    """A paper-size bundle to reuse; None: export one into ``work``."""
    paper_model: str = "mobilediffusion"
    steps: tuple[int, ...] = (1, 8)
    iterations: int = 5
    warmup: int = 1
    pipeline_iterations: int = 2
    peers: bool = True
    peer_overrides: dict[str, Any] | None = None
    """Shrink the peer (tests); None: the full BK-SDM-Tiny layout."""
    rewrites: bool = True
    rewrite_source: str = "ours:mobilediffusion-lite"
    rewrite_variants: tuple[str, ...] = (
        "none",
        "fuse_qkv",
        "gelu_tanh",
        "group_norm",
        "attention_sdpa",
        "phase_upsample",
        "winograd",
        "split_linear",
        "fold_timesteps",
        "default",
    )
    recipes: tuple[str, ...] = ("fp32", "fp16", "int8-weight", "int8-dynamic", "w8a8")
    paper: bool = True
    """Export and bench the paper-size bundle (off: peers and rewrites only)."""
    paper_fp32_litert: bool = True
    """Also convert the paper UNet to LiteRT fp32 (issue Export's fp32 speed target)."""
    paired_rounds: int = 5
    """Alternating rounds of the speed-target UNets (``paired_unet_rounds``); 0: none.
    Odd, so the median ratio is one round's ratio."""
    timeout_s: float = 3600.0
    lock: str | None = None
    """Lock file each conversion and measurement holds (``host.heavy_lock``)."""
    convert_only: bool = False
    """Export and convert everything (cached in ``work``), measure nothing."""
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers


class _Variants:
    """Convert (cached by name) and measure variants through worker processes."""

    def __init__(self, settings: PaperSettings, log: Log) -> None:
        self.s = settings
        self.log = log
        self.cache_path = settings.work / "conversions.json"
        self.cache: dict[str, Any] = (
            json.loads(self.cache_path.read_text()) if self.cache_path.exists() else {}
        )

    def _call(self, function: str, **spec: Any) -> dict[str, Any]:
        spec = {
            "mode": "call",
            "function": f"{PEERS}:{function}",
            "work": str(self.s.work),
            "threads": self.s.threads,
            **spec,
        }
        result = run_worker(spec, self.s.timeout_s, self.s.lock)
        result.pop("traceback", None)
        return result

    def convert(self, name: str, source: str, runner: str, **extra: Any) -> dict[str, Any]:
        cached = self.cache.get(name)
        stamp = converter_stamp({"source": source, "runner": runner, **extra})
        if (
            cached
            and cached.get("status") == "ok"
            and cached.get("stamp") == stamp
            and (self.s.work / cached["entry"]["file"]).exists()
        ):
            return cached
        self.log(f"convert {name} ({source}, {runner})")
        result = self._call("convert_variant", name=name, source=source, runner=runner, **extra)
        result["stamp"] = stamp
        self.cache[name] = result
        self.cache_path.write_text(json.dumps(self.cache, indent=2))
        return result

    def measure(self, name: str, source: str, runner: str, what: str, **extra: Any) -> dict:
        row: dict[str, Any] = {"name": name, "what": what, "source": source, "runner": runner}
        entry = None
        if runner != "eager":
            converted = self.convert(name, source, runner, **extra)
            row.update(
                {
                    k: converted.get(k)
                    for k in (
                        "convert_s",
                        "convert_peak_rss_bytes",
                        "size_bytes",
                        "rewrites",
                        "recipe",
                    )
                }
            )
            if converted["status"] != "ok":
                row.update(status="error", error=f"conversion failed: {converted.get('error')}")
                return row
            entry = converted["entry"]
        if self.s.convert_only:
            row.update(status="skipped", error="conversion only")
            return row
        self.log(f"measure {name}")
        row.update(self.step_times(source, runner, entry))
        return row

    def step_times(
        self, source: str, runner: str, entry: dict[str, Any] | None, work: Path | None = None
    ) -> dict[str, Any]:
        """``peers.measure_variant`` in a worker: the entry's file is found in ``work``
        (default: the settings' work folder)."""
        return self._call(
            "measure_variant",
            work=str(work or self.s.work),
            source=source,
            runner=runner,
            entry=entry,
            warmup=self.s.warmup,
            iterations=self.s.iterations,
        )


def _step_input_text(settings: PaperSettings) -> str:
    from .peers import peer_config_dict

    config = peer_config_dict(settings.peer_overrides)
    n, dim = config["sample_size"], config["cross_attention_dim"]
    return f"one denoising step at batch 1: sample 1x4x{n}x{n}, timestep 500, context 1x77x{dim}"


def _median(row: dict[str, Any]) -> float | None:
    return (row.get("step_ms") or {}).get("median") if row.get("status") == "ok" else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


# ---------------------------------------------------------------------------- parts


def converter_stamp(spec: dict[str, Any]) -> str:
    """What a cached conversion was made with: the spec, the tool's version, the default
    rewrites and recipes, and a digest of the code that builds and converts the networks
    (``models/`` and ``export/``), so a converter change, a rewrite's new form included,
    is never measured from a stale file."""
    from .. import __version__
    from ..export.quantize import DEFAULT_RECIPES
    from ..export.rewrite import DEFAULT_REWRITES

    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for source in sorted([*package.glob("models/*.py"), *package.glob("export/*.py")]):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0")
        digest.update(source.read_bytes())
    return json.dumps(
        [spec, __version__, repr(DEFAULT_REWRITES), repr(DEFAULT_RECIPES), digest.hexdigest()],
        sort_keys=True,
    )


def export_paper_bundle(settings: PaperSettings, log: Log) -> Path:
    """The paper-size bundle: LiteRT (default recipes) and ONNX, exported in a worker."""
    out = settings.work / f"{settings.paper_model}-bundle"
    stamp_path = settings.work / f"{settings.paper_model}-bundle.stamp"
    stamp = converter_stamp({"model": settings.paper_model, "targets": ["tflite", "onnx"]})
    fresh = stamp_path.is_file() and stamp_path.read_text() == stamp
    if fresh and (out / "bundle.json").exists():
        return out
    log(f"export {settings.paper_model} to {out} (tflite + onnx)")
    result = run_worker(
        {
            "mode": "call",
            "function": "mobilediff_export.bench.paper:export_bundle_call",
            "model": settings.paper_model,
            "out": str(out),
            "threads": settings.threads,
        },
        settings.timeout_s * 2,
        settings.lock,
    )
    if result["status"] != "ok":
        raise RuntimeError(f"paper-size export failed: {result.get('error')}")
    stamp_path.write_text(stamp)
    return out


def export_bundle_call(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker call: ``export_bundle`` of the named model to tflite + onnx."""
    import torch

    from ..export import export_bundle
    from .worker import peak_rss_bytes

    torch.set_num_threads(spec["threads"])
    export_bundle(
        spec["model"], spec["out"], targets=("tflite", "onnx"), progress=False, force=True
    )
    return {"peak_rss_bytes": peak_rss_bytes()}


#: (name, source, runner, what, converter options), in measurement order: ours first, so
#: every partial result already has the ratios of what was measured.
PEER_VARIANTS: tuple[tuple[str, str, str, str, dict[str, Any]], ...] = (
    ("ours-litert", "ours-peer", "litert",
     "ours: our UNet, our LiteRT converter, default recipe (int8-dynamic) and rewrites",
     {"recipe": "int8-dynamic"}),
    ("ours-litert-fp32", "ours-peer", "litert",
     "our UNet, our LiteRT converter, fp32, default rewrites", {"recipe": "fp32"}),
    ("diffusers-litert-plain", "diffusers", "litert-plain",
     "diffusers module, plain litert_torch.convert, LiteRT fp32 (XNNPACK)", {}),
    ("diffusers-onnx-plain", "diffusers", "onnx-plain",
     "diffusers module, plain torch.onnx.export, ONNX Runtime fp32", {}),
    ("diffusers-eager", "diffusers", "eager",
     "diffusers UNet2DConditionModel, PyTorch eager fp32", {}),
    ("ours-onnx", "ours-peer", "onnx", "our UNet, our ONNX export, ONNX Runtime fp32", {}),
    ("ours-eager", "ours-peer", "eager", "our UNet with the same weights, PyTorch eager fp32", {}),
)  # fmt: skip


def _peer_flops(settings: PaperSettings) -> int:
    """FLOPs of one peer UNet step (our network, same shapes as the diffusers one)."""
    from ..analysis import component_costs
    from .peers import model_config_for

    config = model_config_for("diffusers", settings.work)
    return next(c.flops for c in component_costs(config) if c.name == "unet")


def _peer_ratios(rows: list[dict[str, Any]]) -> None:
    by_name = {r["name"]: r for r in rows}
    ours = _median(by_name.get("ours-litert", {}))
    ours_fp32 = _median(by_name.get("ours-litert-fp32", {}))
    for row in rows:
        row["ratio_to_ours"] = _ratio(_median(row), ours)
        row["ratio_to_ours_fp32"] = _ratio(_median(row), ours_fp32)


def run_peers(
    variants: _Variants, publish: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The peer UNet, same weights, seven ways; ratios to our LiteRT (recipe and fp32).

    ``publish`` gets the part after every variant (partial results survive a stop).
    """
    from .peers import PEER_NAME, peer_config_dict

    s = variants.s
    weights = variants._call("make_peer_weights", overrides=s.peer_overrides)
    part: dict[str, Any] = {
        "model": PEER_NAME,
        "diffusers_config": peer_config_dict(s.peer_overrides),
        "parameters": weights.get("parameters"),
        "unet_flops": _peer_flops(s) if weights["status"] == "ok" else None,
        "input": _step_input_text(s),
        "ours": "ours-litert",
        "rows": [],
        "status": "incomplete",
    }
    if weights["status"] != "ok":
        return {**part, "status": "error", "error": weights.get("error")}
    for name, source, runner, what, options in PEER_VARIANTS:
        part["rows"].append(variants.measure(name, source, runner, what, **options))
        _peer_ratios(part["rows"])
        if publish is not None:
            publish(part)
    part["status"] = "ok" if all(r["status"] == "ok" for r in part["rows"]) else "incomplete"
    return part


_REWRITES: dict[str, dict[str, Any]] = {
    "none": {},
    "fuse_qkv": {"fuse_qkv": True},
    "gelu_tanh": {"gelu_tanh": True},
    "group_norm": {"group_norm": "decomposed"},
    "attention_sdpa": {"attention": "sdpa"},
    "attention_split_heads": {"attention": "split_heads"},
    "linear_as_conv": {"linear_as_conv": True},
    "phase_upsample": {"phase_upsample": True},
    "winograd": {"winograd": True},
    "split_linear": {"split_linear": True},
    "fold_timesteps": {"fold_timesteps": [999.0, 874.0, 749.0, 624.0, 499.0, 374.0, 249.0, 124.0]},
    "default": None,  # DEFAULT_REWRITES["tflite"]
}


def run_rewrites(variants: _Variants) -> dict[str, Any]:
    """Each rewrite alone (LiteRT fp32) against none; each recipe against fp32."""
    s = variants.s
    source = s.rewrite_source
    tag = source.replace(":", "-")
    rewrite_rows = []
    for name in s.rewrite_variants:
        options = _REWRITES[name]
        row = variants.measure(
            f"{tag}-rw-{name}",
            source,
            "litert",
            f"LiteRT fp32, rewrites: {name}",
            recipe="fp32",
            rewrites=options,
        )
        rewrite_rows.append(row)
    base = next((_median(r) for r in rewrite_rows if r["name"].endswith("-rw-none")), None)
    for row in rewrite_rows:
        row["ratio_to_baseline"] = _ratio(_median(row), base)
    recipe_rows = []
    for recipe in s.recipes:
        same = next((r for r in rewrite_rows if r["name"].endswith("-rw-default")), None)
        if recipe == "fp32" and same is not None:  # the same model: measured once
            recipe_rows.append(
                {
                    **same,
                    "name": f"{tag}-recipe-fp32",
                    "what": "LiteRT fp32, default rewrites (= rw-default)",
                }
            )
            continue
        row = variants.measure(
            f"{tag}-recipe-{recipe}",
            source,
            "litert",
            f"LiteRT {recipe}, default rewrites",
            recipe=recipe,
        )
        recipe_rows.append(row)
    base = next((_median(r) for r in recipe_rows if r["name"].endswith("-recipe-fp32")), None)
    for row in recipe_rows:
        row["ratio_to_baseline"] = _ratio(_median(row), base)
    return {
        "source": source,
        "rewrites_baseline": "no rewrite, fp32",
        "recipes_baseline": "fp32, default rewrites",
        "note": "a ratio below 1 is faster than the baseline",
        "rewrite_rows": rewrite_rows,
        "recipe_rows": recipe_rows,
    }


#: The speed targets' contestants, as (key, runner): the bundle's LiteRT UNet (its recipe,
#: int8-dynamic by default), the same UNet converted to LiteRT fp32, and the bundle's ONNX
#: UNet on ONNX Runtime, the reference both are divided by.
PAIRED: tuple[tuple[str, str], ...] = (
    ("litert", "litert"),
    ("litert_fp32", "litert"),
    ("onnxruntime", "onnx"),
)


def paired_unet_rounds(
    settings: PaperSettings,
    variants: _Variants,
    bundle: Path,
    fp32_entry: dict[str, Any] | None,
    log: Log,
) -> dict[str, Any]:
    """The speed targets' UNets measured in alternating rounds on the same inputs.

    Round r runs every contestant once, each in its own worker (load, first run, warmup,
    ``iterations`` timed steps), in the order of ``PAIRED`` on even rounds and reversed on
    odd ones, so a slow stretch of the shared machine falls on both sides of a ratio. Each
    round gives a ratio per contestant (its median step over ONNX Runtime's in that
    round); the targets read the median of those ratios, and the spread is kept with it.
    """
    manifest = json.loads((bundle / "bundle.json").read_text())
    where: dict[str, tuple[Path, dict[str, Any] | None]] = {
        "litert": (bundle, manifest["components"].get("tflite", {}).get("unet")),
        "litert_fp32": (settings.work, fp32_entry),
        "onnxruntime": (bundle, manifest["components"].get("onnx", {}).get("unet")),
    }
    present = [(key, runner) for key, runner in PAIRED if where[key][1] is not None]
    rounds: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {key: [] for key, _ in present}
    errors: dict[str, str] = {}
    for index in range(settings.paired_rounds):
        order = present if index % 2 == 0 else present[::-1]
        medians: dict[str, float | None] = {}
        for key, runner in order:
            work, entry = where[key]
            log(f"paired round {index + 1}/{settings.paired_rounds}: {key}")
            measured = variants.step_times(f"ours:{settings.paper_model}", runner, entry, work)
            if measured.get("status") != "ok":
                errors[key] = str(measured.get("error"))
                medians[key] = None
                continue
            medians[key] = measured["step_ms"]["median"]
            samples[key].extend(measured["samples_ms"])
        reference = medians.get("onnxruntime")
        rounds.append(
            {
                "order": [key for key, _ in order],
                "step_ms": medians,
                "over_onnxruntime": {
                    key: _ratio(medians.get(key), reference)
                    for key, _ in present
                    if key != "onnxruntime"
                },
            }
        )
    ratios: dict[str, dict[str, Any]] = {}
    for key, _ in present:
        if key == "onnxruntime":
            continue
        values = [r["over_onnxruntime"][key] for r in rounds]
        values = [v for v in values if v is not None]
        ratios[key] = {
            "median": round(statistics.median(values), 3) if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
            "n": len(values),
        }
    return {
        "method": (
            f"{settings.paired_rounds} alternating rounds, each contestant in its own worker "
            f"per round ({settings.warmup} warmup + {settings.iterations} timed steps); "
            "ratio per round = median step over ONNX Runtime's median in that round"
        ),
        "rounds": rounds,
        "step_ms": {key: summarize(values) for key, values in samples.items()},
        "over_onnxruntime": ratios,
        "errors": errors,
        "status": "ok" if not errors and rounds else "error",
    }


def speed_targets(
    paper: dict[str, Any], extra: dict[str, Any] | None, paired: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Issue "Export": LiteRT int8 UNet step <= 0.4x ORT fp32; LiteRT fp32 <= ORT fp32.

    From the paired rounds when there are any (the median of the per-round ratios, with
    their range); otherwise from the one measurement of each in the host run.
    """
    rows = {(r["backend"], r["component"]): r for r in paper.get("components", [])}
    precision = (rows.get(("litert", "unet")) or {}).get("precision")
    if paired and paired.get("rounds"):
        steps, over = paired["step_ms"], paired["over_onnxruntime"]

        def ms(key: str) -> float | None:
            return (steps.get(key) or {}).get("median")

        litert, ort, fp32 = ms("litert"), ms("onnxruntime"), ms("litert_fp32")
        int8_ratio = (over.get("litert") or {}).get("median")
        fp32_ratio = (over.get("litert_fp32") or {}).get("median")
        ranges = {
            "int8_over_ort_range": _range(over.get("litert")),
            "fp32_over_ort_range": _range(over.get("litert_fp32")),
        }
        method = "paired"
    else:
        litert = (rows.get(("litert", "unet")) or {}).get("warm_ms", {}).get("median")
        ort = (rows.get(("onnxruntime", "unet")) or {}).get("warm_ms", {}).get("median")
        fp32 = _median(extra) if extra else None
        int8_ratio, fp32_ratio = _ratio(litert, ort), _ratio(fp32, ort)
        ranges = {}
        method = "single"
    return {
        "method": method,
        "litert_unet_ms": litert,
        "litert_unet_precision": precision,
        "onnxruntime_fp32_unet_ms": ort,
        "litert_fp32_unet_ms": fp32,
        "int8_over_ort": int8_ratio,
        "int8_target": 0.4,
        "int8_met": None if int8_ratio is None else int8_ratio <= 0.4,
        "fp32_over_ort": fp32_ratio,
        "fp32_target": 1.0,
        "fp32_met": None if fp32_ratio is None else fp32_ratio <= 1.0,
        **ranges,
    }


def _range(ratio: dict[str, Any] | None) -> list[float] | None:
    if not ratio or ratio.get("min") is None:
        return None
    return [ratio["min"], ratio["max"]]


# ---------------------------------------------------------------------------- all


def _paper_part(
    settings: PaperSettings, variants: _Variants, result: dict[str, Any], log: Log
) -> None:
    """Export (or reuse) the paper-size bundle, bench it, and read off the speed targets."""
    bundle = settings.bundle or export_paper_bundle(settings, log)
    log(f"bench {bundle} at steps {settings.steps}")
    host = bench_host(
        [bundle],
        HostSettings(
            threads=settings.threads,
            steps=settings.steps,
            warmup=settings.warmup,
            iterations=settings.iterations,
            pipeline_warmup=1,
            pipeline_iterations=settings.pipeline_iterations,
            timeout_s=settings.timeout_s,
            lock=settings.lock,
        ),
        log=log,
    )
    result["matmul_peak"] = host["matmul_peak"]
    result["paper"] = {k: host[k] for k in ("bundles", "components", "pipelines", "status")}
    extra = None
    if settings.paper_fp32_litert:
        extra = variants.measure(
            f"{settings.paper_model}-unet-litert-fp32",
            f"ours:{settings.paper_model}",
            "litert",
            "paper UNet, LiteRT fp32, default rewrites",
            recipe="fp32",
        )
        result["paper"]["litert_fp32_unet"] = extra
    paired = None
    if settings.paired_rounds > 0:
        fp32_entry = None
        if extra and extra.get("status") == "ok":
            fp32_entry = variants.cache[f"{settings.paper_model}-unet-litert-fp32"]["entry"]
        paired = paired_unet_rounds(settings, variants, bundle, fp32_entry, log)
        result["paper"]["paired"] = paired
    result["speed_targets"] = speed_targets(result["paper"], extra, paired)


def run_paper_scale(
    settings: PaperSettings,
    command: str,
    log: Log | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> dict:
    """All parts in order; ``checkpoint`` gets the result so far (status ``incomplete``)."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))

    def save(result: dict[str, Any]) -> None:
        if checkpoint is not None:
            checkpoint({**result, "finished": utc_now(), "status": "incomplete"})

    settings.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "schema_version": 1,
        "kind": "paper_scale",
        "created": utc_now(),
        "command": command,
        "host": host_facts(settings.threads),
        "matmul_peak": None,
        "paper": {},
        "peers": {},
        "rewrites": {},
        "notes": list(settings.notes),
    }
    variants = _Variants(settings, log)
    if settings.convert_only:
        if settings.paper:
            export_paper_bundle(settings, log)
        if settings.paper and settings.paper_fp32_litert:
            variants.convert(
                f"{settings.paper_model}-unet-litert-fp32",
                f"ours:{settings.paper_model}",
                "litert",
                recipe="fp32",
            )
        if settings.peers:
            run_peers(variants)
        if settings.rewrites:
            run_rewrites(variants)
        return {"converted": variants.cache}
    if settings.paper:
        _paper_part(settings, variants, result, log)
        save(result)
    if settings.peers:

        def publish(part: dict[str, Any]) -> None:
            result["peers"] = part
            save(result)

        result["peers"] = run_peers(variants, publish)
    if settings.rewrites:
        result["rewrites"] = run_rewrites(variants)
    result["finished"] = utc_now()
    result["host"]["load_average_end"] = load_average()
    parts_ok = [result["paper"].get("status") == "complete"] if settings.paper else []
    if settings.peers:
        parts_ok.append(result["peers"].get("status") == "ok")
    if settings.rewrites:
        rows = result["rewrites"]["rewrite_rows"] + result["rewrites"]["recipe_rows"]
        parts_ok.append(all(r["status"] == "ok" for r in rows))
    result["status"] = "complete" if all(parts_ok) else "incomplete"
    return result
