"""Phone mode: push a bundle over adb, run it per delegate, pull the numbers, judge the budget.

For each phone (several in parallel, one thread per serial)::

    describe (getprop, /proc/meminfo)
    push the bundle  -- only files whose sha256 on the device differs (sha256sum over adb shell)
    for each delegate (cpu = XNNPACK, gpu, npu):
        thermal status before, then one of
          app:             am start BenchmarkActivity with prompt/steps/seed/iterations/
                           warmup/delegate, poll for its JSON result (sampling dumpsys meminfo
                           meanwhile), pull it
          benchmark_model: the LiteRT benchmark binary on each component's .tflite
        thermal status after; cool down before the next delegate
    end-to-end latency = the best delegate's median; over --budget-ms breaks the budget

Cold load (model load and delegate compile) is reported apart from per-step latency. A
device that disconnects, fills up, or lacks the app or binary stops *that* device with a
one-line error: what it measured so far is kept and the result is marked incomplete.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..bundle import MANIFEST, file_sha256, format_bytes, read_manifest
from ..errors import MobileDiffError
from .adb import Adb, AdbError, DeviceFull, MissingOnDevice, quote
from .devicestate import app_memory, describe_device, free_bytes, thermal_state
from .hostinfo import utc_now
from .stats import summarize

DELEGATES = ("cpu", "gpu", "npu")
#: What each delegate is called on the device side.
DELEGATE_LABELS = {"cpu": "CPU (XNNPACK)", "gpu": "GPU", "npu": "NPU"}
#: LiteRT benchmark_model flags per delegate (npu: NNAPI, which routes to the vendor NPU).
BENCHMARK_MODEL_FLAGS = {
    "cpu": "--use_xnnpack=true",
    "gpu": "--use_gpu=true",
    "npu": "--use_nnapi=true",
}
#: Space left free on the device beyond what the push needs.
FREE_MARGIN_BYTES = 64 << 20
PHONE_RESULT_SCHEMA_VERSION = 1

Log = Callable[[str, str], None]


@dataclass(frozen=True)
class AppSpec:
    """The Android demo app (android_app/): its package, benchmark entry, and folders.

    The app reads its bundle from, and writes results to, its external files folder
    (``/sdcard/Android/data/<package>/files``), which adb reaches without root.
    """

    package: str = "dev.mobilediff.app"
    activity: str = ".BenchmarkActivity"

    @property
    def files_dir(self) -> str:
        """Context.getExternalFilesDir(null) of the app."""
        return f"/sdcard/Android/data/{self.package}/files"

    @property
    def bundle_dir(self) -> str:
        """Where the app looks for its bundle when started without ``--es bundle``."""
        return f"{self.files_dir}/bundle"

    @staticmethod
    def result_name(delegate: str) -> str:
        """The ``--es out`` name of one delegate's result (a plain file in files_dir)."""
        return f"bench_result_{delegate}.json"

    def result_path(self, delegate: str) -> str:
        return f"{self.files_dir}/{self.result_name(delegate)}"


@dataclass
class PhoneSettings:
    """How to run: through the app or a benchmark_model binary, and the run parameters."""

    mode: str = "app"
    """app | benchmark_model"""
    benchmark_model: str | None = None
    """Local path of the LiteRT benchmark_model binary (mode benchmark_model)."""
    delegates: tuple[str, ...] = DELEGATES
    prompt: str = "a photo of an astronaut riding a horse on mars"
    steps: int | None = None
    """Sampler steps; None: the manifest's."""
    seed: int = 0
    iterations: int = 10
    warmup: int = 2
    threads: int = 4
    """CPU threads for benchmark_model (the app picks its own)."""
    cooldown_s: float = 30.0
    """Pause between delegate runs, and the most extra wait for a hot phone to cool."""
    budget_ms: float = 1000.0
    run_timeout_s: float = 1800.0
    poll_s: float = 2.0
    device_dir: str = "/data/local/tmp/mobilediff"
    """Where benchmark_model mode puts the bundle and binary."""
    app: AppSpec = field(default_factory=AppSpec)


# ---------------------------------------------------------------------------- bundle


@dataclass(frozen=True)
class BundleFiles:
    name: str
    manifest: dict[str, Any]
    manifest_sha256: str
    files: dict[str, tuple[Path, str, int]]
    """Relative path -> (local path, sha256, size) of what the phone needs."""


def phone_files(bundle: Path, mode: str) -> BundleFiles:
    """The files a phone needs: the manifest, tokenizer and LiteRT models (never Core ML)."""
    manifest = read_manifest(bundle)
    if "tflite" not in manifest["components"]:
        raise MobileDiffError(
            f"{bundle} has no LiteRT (tflite) components; export with --target tflite"
        )
    wanted: dict[str, tuple[Path, str, int]] = {}
    tflite_files = {e["file"] for e in manifest["components"]["tflite"].values()}
    for rel, entry in manifest["files"].items():
        top = PurePosixPath(rel).parts[0]
        if mode == "benchmark_model" and rel not in tflite_files:
            continue
        if top in ("coreml", "onnx"):
            continue
        wanted[rel] = (bundle / rel, entry["sha256"], entry["size_bytes"])
    manifest_file = bundle / MANIFEST
    sha = file_sha256(manifest_file)
    wanted[MANIFEST] = (manifest_file, sha, manifest_file.stat().st_size)
    return BundleFiles(bundle.resolve().name, manifest, sha, wanted)


def remote_sha256(adb: Adb, folder: str, rels: list[str]) -> dict[str, str]:
    """sha256 of the files that exist under ``folder`` on the device (others are absent)."""
    if not rels:
        return {}
    code, _ = adb.shell_status(f"test -d {quote(folder)}")
    if code != 0:
        return {}
    args = " ".join(quote(r) for r in rels)
    _, out = adb.shell_status(f"cd {quote(folder)} && sha256sum {args}")
    found = {}
    for line in out.splitlines():
        match = re.match(r"^([0-9a-f]{64})\s+\*?(.+?)\s*$", line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def push_bundle(adb: Adb, files: BundleFiles, remote: str, log: Log) -> dict[str, Any]:
    """Push what differs; refuse up front (``DeviceFull``) when it cannot fit."""
    started = time.perf_counter()
    on_device = remote_sha256(adb, remote, sorted(files.files))
    todo = {rel: f for rel, f in files.files.items() if on_device.get(rel) != f[1]}
    need = sum(size for _, _, size in todo.values())
    if todo:
        adb.shell(f"mkdir -p {quote(remote)}")
        available = free_bytes(adb, remote)
        if available is not None and need + FREE_MARGIN_BYTES > available:
            raise DeviceFull(
                f"{adb.serial}: not enough space for the bundle: {need / 2**20:.1f} MiB to "
                f"push (+{FREE_MARGIN_BYTES >> 20} MiB margin), {available / 2**20:.1f} MiB "
                f"free at {remote}"
            )
        parents = sorted({str(PurePosixPath(remote, rel).parent) for rel in todo})
        adb.shell("mkdir -p " + " ".join(quote(p) for p in parents))
    for rel, (local, _, size) in sorted(todo.items()):
        log(adb.serial, f"push {rel} ({format_bytes(size)})")
        adb.push(local, f"{remote}/{rel}")
    return {
        "remote_dir": remote,
        "files": len(files.files),
        "pushed": len(todo),
        "skipped_same_sha256": len(files.files) - len(todo),
        "bytes_pushed": need,
        "seconds": round(time.perf_counter() - started, 2),
    }


# ---------------------------------------------------------------------------- cooling


def cool_down(adb: Adb, settings: PhoneSettings, log: Log) -> dict[str, Any]:
    """Sleep ``cooldown_s``; then, while the phone reports more than LIGHT, wait up to as long."""
    if settings.cooldown_s > 0:
        log(adb.serial, f"cool down {settings.cooldown_s:g} s")
        time.sleep(settings.cooldown_s)
    deadline = time.monotonic() + settings.cooldown_s
    state = thermal_state(adb)
    while (state.get("status") or 0) > 1 and time.monotonic() < deadline:
        time.sleep(min(10.0, settings.cooldown_s))
        state = thermal_state(adb)
    return state


# ---------------------------------------------------------------------------- app mode


def _app_finished(data: Any) -> bool:
    """The app writes ``incomplete`` after each run, ``complete`` (or an error) at the end."""
    return isinstance(data, dict) and (data.get("status") == "complete" or bool(data.get("error")))


_UNAVAILABLE = re.compile(
    r"unavailable|not available|not supported|unsupported|no (gpu|npu)|failed to (create|apply)|"
    r"\b(gpu|npu) refused\b",
    re.IGNORECASE,
)


def app_result_problems(data: Any) -> list[str]:
    """How an app's result breaks ``schemas/phone_bench_result.schema.json`` (the contract)."""
    import jsonschema

    schema_path = Path(__file__).parents[1] / "schemas" / "phone_bench_result.schema.json"
    if not schema_path.is_file():
        return []
    schema = json.loads(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"at {'/'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message[:150]}"
        for e in validator.iter_errors(data)
    ]


def summarize_app_result(data: dict[str, Any], steps: int) -> dict[str, Any]:
    """The numbers of one app result JSON (schemas/phone_bench_result.schema.json)."""
    runs = [r for r in data.get("runs") or [] if isinstance(r, dict)]
    load = {k: v for k, v in (data.get("load_ms") or {}).items() if isinstance(v, int | float)}
    step_ms = [float(x) for r in runs for x in (r.get("unet_ms") or [])]
    stages: dict[str, Any] = {}
    for key in ("tokenize_ms", "text_encoder_ms", "sampler_ms", "vae_decoder_ms"):
        values = [float(r[key]) for r in runs if isinstance(r.get(key), int | float)]
        stages[key.removesuffix("_ms")] = summarize(values)["median"]
    unet_totals = [sum(r.get("unet_ms") or []) for r in runs if r.get("unet_ms")]
    stages["unet"] = summarize(unet_totals)["median"]
    totals = [float(r["total_ms"]) for r in runs if isinstance(r.get("total_ms"), int | float)]
    memory = data.get("memory") or {}
    return {
        "cold_load_ms": {**load, "total": round(sum(load.values()), 3)} if load else None,
        "stages_ms": stages,
        "unet_step_ms": summarize(step_ms),
        "end_to_end_ms": summarize(totals),
        "end_to_end_method": "measured by the app: tokenize + text encoder + "
        f"{steps} UNet steps + sampler + decoder",
        "app_peak_rss_bytes": memory.get("peak_rss_bytes"),
    }


def run_app(
    adb: Adb,
    settings: PhoneSettings,
    remote_bundle: str,
    delegate: str,
    steps: int,
    out_dir: Path,
    log: Log,
) -> dict[str, Any]:
    """One delegate through the app's BenchmarkActivity; its result JSON is pulled."""
    app = settings.app
    result_path = app.result_path(delegate)
    adb.shell(f"am force-stop {quote(app.package)}")  # cold start: load and compile counted
    adb.shell(f"rm -f {quote(result_path)}")
    run: dict[str, Any] = {"delegate": delegate, "method": "app", "status": "error"}
    run["thermal_before"] = thermal_state(adb)
    command = (
        f"am start -W -n {quote(app.package + '/' + app.activity)}"
        f" --es prompt {quote(settings.prompt)} --ei steps {steps} --ei seed {settings.seed}"
        f" --ei iterations {settings.iterations} --ei warmup {settings.warmup}"
        f" --es delegate {delegate} --es bundle {quote(remote_bundle)}"
        f" --es out {app.result_name(delegate)}"
    )
    log(adb.serial, f"{delegate}: am start ({settings.iterations} iterations)")
    _, out = adb.shell_status(command)
    if re.search(r"does not exist|unable to resolve intent|Error type", out, re.IGNORECASE):
        raise MissingOnDevice(
            f"{adb.serial}: {app.package}/{app.activity} is not installed: install the "
            "demo app (android_app/README.md)"
        )
    peak = {"total_pss_bytes": None, "total_rss_bytes": None}
    deadline = time.monotonic() + settings.run_timeout_s
    data = None
    while True:
        memory = app_memory(adb, app.package)
        for key, value in (memory or {}).items():
            if value is not None and (peak[key] is None or value > peak[key]):
                peak[key] = value
        code, text = adb.shell_status(f"cat {quote(result_path)}")
        if code == 0:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None  # still being written
            if _app_finished(data):
                break
        if time.monotonic() > deadline:
            run["error"] = f"no result from the app after {settings.run_timeout_s:g} s"
            run["memory"] = peak
            return run
        time.sleep(settings.poll_s)
    local = out_dir / f"{delegate}.json"
    adb.pull(result_path, local)
    run["raw_result"] = local.name
    run["thermal_after"] = thermal_state(adb)
    problems = app_result_problems(data)
    if problems:
        run["app_result_problems"] = problems[:3]
    summary = summarize_app_result(data, steps)
    run["memory"] = {"peak_rss_bytes": summary.pop("app_peak_rss_bytes"), **peak}
    run.update(summary)
    if data.get("status") == "complete":
        run["status"] = "ok"
    else:
        error = str(data.get("error") or f"the app reported status {data.get('status')!r}")
        run["status"] = "unavailable" if _UNAVAILABLE.search(error) else "error"
        run["error"] = error
    return run


# ---------------------------------------------------------------------------- benchmark_model


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings (ms) and memory (bytes) from LiteRT ``benchmark_model`` output."""
    out: dict[str, Any] = {}
    match = re.search(
        r"Init:\s*([\d.e+]+),\s*First inference:\s*([\d.e+]+),\s*Warmup \(avg\):\s*([\d.e+]+),"
        r"\s*Inference \(avg\):\s*([\d.e+]+)",
        text,
    )
    if match:
        init, first, _, avg = (float(x) / 1e3 for x in match.groups())
        out.update(init_ms=init, first_run_ms=first, avg_ms=avg)
    runs = re.findall(r"count=(\d+)([^\n]*)", text)
    if runs:
        count, rest = runs[-1]  # the last: the timed runs (an earlier one is the warm-up)
        fields = dict(re.findall(r"(\w+)=([\d.e+]+)", rest))
        warm = {"n": int(count)}
        for ours, theirs in (
            ("min", "min"),
            ("max", "max"),
            ("mean", "avg"),
            ("median", "median"),
            ("median", "p50"),
            ("p90", "p90"),
        ):
            if theirs in fields:
                warm[ours] = round(float(fields[theirs]) / 1e3, 3)
        if "median" not in warm and "mean" in warm:
            warm["median"] = warm["mean"]
            warm["median_is_mean"] = True
        out["warm_ms"] = warm
    mem = re.search(r"peak memory footprint \(MB\)[^:]*:\s*([\d.]+)", text, re.IGNORECASE)
    if mem:
        out["peak_memory_bytes"] = int(float(mem.group(1)) * 2**20)
    return out


def run_benchmark_model(
    adb: Adb,
    settings: PhoneSettings,
    binary: str,
    files: BundleFiles,
    remote_bundle: str,
    delegate: str,
    steps: int,
    out_dir: Path,
    log: Log,
) -> dict[str, Any]:
    """One delegate: benchmark_model on each component; end-to-end composed from medians."""
    run: dict[str, Any] = {"delegate": delegate, "method": "benchmark_model", "status": "error"}
    run["thermal_before"] = thermal_state(adb)
    components: dict[str, Any] = {}
    run["components"] = components
    for component, entry in files.manifest["components"]["tflite"].items():
        graph = f"{remote_bundle}/{entry['file']}"
        command = (
            f"{quote(binary)} --graph={quote(graph)} --num_threads={settings.threads}"
            f" --warmup_runs={settings.warmup} --num_runs={settings.iterations}"
            f" --report_peak_memory_footprint=true {BENCHMARK_MODEL_FLAGS[delegate]}"
        )
        log(adb.serial, f"{delegate}: benchmark_model {component}")
        code, text = adb.shell_status(command, timeout=settings.run_timeout_s)
        (out_dir / f"{delegate}-{component}.txt").write_text(text, encoding="utf-8")
        if code == 127 or (re.search(r"not found|No such file", text) and "Init:" not in text):
            raise MissingOnDevice(f"{adb.serial}: benchmark_model not runnable at {binary}")
        parsed = parse_benchmark_model(text)
        if code != 0 or "warm_ms" not in parsed:
            last = (text.strip().splitlines() or [f"exit status {code}"])[-1][:200]
            run["status"] = "unavailable" if _UNAVAILABLE.search(text) else "error"
            run["error"] = f"{component}: {last}"
            return run
        components[component] = parsed
    run["thermal_after"] = thermal_state(adb)
    guided = files.manifest["pipeline"]["guidance"]["mode"] == "cfg"
    te_calls = 2 if guided else 1
    median = {c: v["warm_ms"]["median"] for c, v in components.items()}
    total = te_calls * median["text_encoder"] + steps * median["unet"] + median["vae_decoder"]
    run["cold_load_ms"] = {
        **{c: round(v.get("init_ms", 0.0), 3) for c, v in components.items()},
        "total": round(sum(v.get("init_ms", 0.0) for v in components.values()), 3),
    }
    run["stages_ms"] = {
        "text_encoder": round(te_calls * median["text_encoder"], 3),
        "unet": round(steps * median["unet"], 3),
        "vae_decoder": round(median["vae_decoder"], 3),
    }
    run["unet_step_ms"] = components["unet"]["warm_ms"]
    run["end_to_end_ms"] = {"median": round(total, 3)}
    run["end_to_end_method"] = (
        f"composed from benchmark_model medians: {te_calls} x text encoder + {steps} x UNet "
        "+ decoder (tokenizer and sampler not measured)"
    )
    peaks = [v.get("peak_memory_bytes") for v in components.values()]
    run["memory"] = {"peak_rss_bytes": max((p for p in peaks if p), default=None)}
    run["status"] = "ok"
    return run


# ---------------------------------------------------------------------------- one device


def bench_device(
    serial: str,
    bundle: Path,
    settings: PhoneSettings,
    out_dir: Path,
    adb_path: str | None,
    log: Log,
) -> dict[str, Any]:
    """Everything for one phone; never raises for a device problem (see ``status``)."""
    result: dict[str, Any] = {"serial": serial, "status": "incomplete", "error": None, "runs": []}
    device_out = out_dir / _safe_name(serial)
    device_out.mkdir(parents=True, exist_ok=True)
    try:
        adb = Adb(serial, adb_path)
        result["device"] = describe_device(adb)
        files = phone_files(bundle, settings.mode)
        steps = settings.steps or files.manifest["pipeline"]["sampler"]["num_inference_steps"]
        result["steps"] = steps
        if settings.mode == "app":
            code, _ = adb.shell_status(f"pm path {quote(settings.app.package)}")
            if code != 0:
                raise MissingOnDevice(
                    f"{serial}: the demo app {settings.app.package} is not installed: build and "
                    "install it (android_app/README.md)"
                )
            remote = settings.app.bundle_dir
        else:
            remote = f"{settings.device_dir}/{files.name}"
        result["push"] = push_bundle(adb, files, remote, log)
        binary = None
        if settings.mode == "benchmark_model":
            assert settings.benchmark_model is not None
            binary = f"{settings.device_dir}/benchmark_model"
            adb.push(settings.benchmark_model, binary)
            adb.shell(f"chmod 755 {quote(binary)}")
        for i, delegate in enumerate(settings.delegates):
            if i:
                result["runs"][-1]["cooled_to"] = cool_down(adb, settings, log)
            if settings.mode == "app":
                run = run_app(adb, settings, remote, delegate, steps, device_out, log)
            else:
                assert binary is not None
                run = run_benchmark_model(
                    adb, settings, binary, files, remote, delegate, steps, device_out, log
                )
            result["runs"].append(run)
            e2e = (run.get("end_to_end_ms") or {}).get("median")
            log(serial, f"{delegate}: {run['status']}" + (f", {e2e:.0f} ms" if e2e else ""))
        result["status"] = "complete"
    except AdbError as exc:
        result["error"] = str(exc)
        log(serial, f"error: {exc} (partial results kept)")
    except MobileDiffError as exc:
        result["error"] = str(exc)
        log(serial, f"error: {exc}")
    result["budget"] = judge_budget(result, settings.budget_ms)
    return result


def judge_budget(device: dict[str, Any], budget_ms: float) -> dict[str, Any]:
    """The best delegate's median end-to-end time against the budget."""
    best = None
    for run in device.get("runs", []):
        e2e = (run.get("end_to_end_ms") or {}).get("median")
        if run.get("status") == "ok" and e2e is not None and (best is None or e2e < best[1]):
            best = (run["delegate"], e2e)
    if best is None:
        return {
            "budget_ms": budget_ms,
            "best_delegate": None,
            "end_to_end_ms": None,
            "within_budget": None,
        }
    return {
        "budget_ms": budget_ms,
        "best_delegate": best[0],
        "end_to_end_ms": best[1],
        "within_budget": best[1] <= budget_ms,
    }


def _safe_name(serial: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", serial)


# ---------------------------------------------------------------------------- all devices


def bench_phones(
    bundle: str | Path,
    serials: list[str],
    settings: PhoneSettings,
    out_dir: str | Path,
    adb_path: str | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run every phone in parallel; the combined result (also written to ``out_dir``)."""
    bundle = Path(bundle)
    out_dir = Path(out_dir)
    log = log or (lambda serial, message: None)
    binary = settings.benchmark_model
    if settings.mode == "benchmark_model" and (not binary or not Path(binary).is_file()):
        raise MobileDiffError(
            f"benchmark_model binary not found: {binary} (build it from LiteRT: bazel build "
            "-c opt --config=android_arm64 //tflite/tools/benchmark:benchmark_model)"
        )
    unknown = [d for d in settings.delegates if d not in DELEGATES]
    if unknown:
        raise MobileDiffError(f"unknown delegate {unknown[0]!r} (known: {', '.join(DELEGATES)})")
    files = phone_files(bundle, settings.mode)  # a bad bundle fails before any device work
    if not serials:
        raise MobileDiffError("no phone given or connected (adb devices -l lists none)")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = utc_now()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(serials)) as pool:
        futures = [
            pool.submit(bench_device, s, bundle, settings, out_dir, adb_path, log) for s in serials
        ]
        devices = [f.result() for f in futures]
    manifest = files.manifest
    result = {
        "schema_version": PHONE_RESULT_SCHEMA_VERSION,
        "kind": "phone",
        "created": started,
        "finished": utc_now(),
        "bundle": {
            "path": str(bundle),
            "model_name": manifest["model"]["name"],
            "manifest_sha256": files.manifest_sha256,
            "image_size": manifest["pipeline"]["image_size"],
            "steps": manifest["pipeline"]["sampler"]["num_inference_steps"],
            "guidance": manifest["pipeline"]["guidance"]["mode"],
        },
        "settings": {k: v for k, v in asdict(settings).items() if k != "app"}
        | {"app": {"package": settings.app.package, "activity": settings.app.activity}},
        "devices": devices,
        "status": "complete" if all(d["status"] == "complete" for d in devices) else "incomplete",
    }
    result["settings"]["delegates"] = list(settings.delegates)
    return result


def phone_exit_code(result: dict[str, Any]) -> int:
    """0: every phone within budget; 3: a phone over budget; 4: incomplete (no budget break)."""
    if any(d["budget"]["within_budget"] is False for d in result["devices"]):
        return 3
    if result["status"] != "complete" or any(
        d["budget"]["within_budget"] is None for d in result["devices"]
    ):
        return 4
    return 0
