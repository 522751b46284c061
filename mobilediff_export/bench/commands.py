"""``mobilediff bench`` and ``mobilediff check``: parse, call the bench library, print.

``add_bench_commands(subparsers)`` adds both to the ``mobilediff`` parser; each command
returns an exit status (the CLI turns ``MobileDiffError`` into one line and status 1):

    bench BUNDLE...            host mode: 0, or 4 when a measurement failed
    bench BUNDLE --phone       0 within budget, 3 a phone over --budget-ms, 4 incomplete
    bench --devices            list phones over adb
    check BUNDLE --device N    0 the estimate fits memory and budget, 3 it does not
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import MobileDiffError

EXIT_OVER_BUDGET = 3
EXIT_INCOMPLETE = 4

_EPILOG_BENCH = """\
exit status: 0 ok; 1 error; 3 a phone over --budget-ms; 4 results incomplete (a device
disconnected or filled up, a delegate or backend failed; what was measured is kept).
"""


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _steps(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps must be integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("steps must be at least 1")
    return values


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.devices:
        return _list_devices(args)
    if not args.bundle:
        raise MobileDiffError("give a bundle to benchmark (or --devices to list phones)")
    if args.phone:
        return _bench_phone(args)
    return _bench_host(args)


def _bench_host(args: argparse.Namespace) -> int:
    from .host import HostSettings, bench_host
    from .report import write_host_results

    settings = HostSettings(
        backends=args.backend,
        components=args.component or HostSettings.components,
        warmup=args.warmup,
        iterations=args.iterations,
        pipeline_warmup=min(args.warmup, 1),
        pipeline_iterations=args.pipeline_iterations,
        steps=args.steps,
        prompt=args.prompt,
        measure_peak=not args.no_peak,
        pipelines=not args.no_pipeline,
    )
    if args.threads:
        settings.threads = args.threads
    out = Path(args.output or f"bench-results/{Path(args.bundle[0]).resolve().name}-host")
    result = bench_host(args.bundle, settings, log=_log if not args.quiet else None)
    written = write_host_results(result, out)
    for row in result["pipelines"]:
        if row["status"] == "ok":
            print(
                f"{row['bundle']} {row['backend']}: {row['steps']} steps, "
                f"{row['total_ms']['median']:.0f} ms median end to end "
                f"(UNet {row['stages_ms']['unet']:.0f} ms, load {row['load_ms']:.0f} ms, "
                f"peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB)"
            )
        else:
            print(f"{row['bundle']} {row['backend']}: {row['status']}: {row.get('error')}")
    failed = [r for r in result["components"] if r["status"] != "ok"]
    for row in failed:
        print(f"{row['bundle']} {row['backend']} {row['component']}: {row.get('error')}")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0 if result["status"] == "complete" else EXIT_INCOMPLETE


def _bench_phone(args: argparse.Namespace) -> int:
    from .adb import list_devices
    from .phone import AppSpec, PhoneSettings, bench_phones, phone_exit_code
    from .report import write_phone_results

    if len(args.bundle) != 1:
        raise MobileDiffError("phone mode takes one bundle")
    settings = PhoneSettings(
        mode="benchmark_model" if args.benchmark_model else "app",
        benchmark_model=args.benchmark_model,
        delegates=args.delegate,
        prompt=args.prompt,
        steps=args.steps[0] if args.steps else None,
        iterations=args.iterations,
        warmup=args.warmup,
        threads=args.threads or 4,
        cooldown_s=args.cooldown,
        budget_ms=args.budget_ms,
        run_timeout_s=args.run_timeout,
        app=AppSpec(package=args.package),
    )
    serials = args.serial or [d.serial for d in list_devices(args.adb) if d.state == "device"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.output or f"bench-results/phone-{stamp}")

    def log(serial: str, message: str) -> None:
        if not args.quiet:
            _log(f"[{serial}] {message}")

    result = bench_phones(args.bundle[0], serials, settings, out, args.adb, log)
    written = write_phone_results(result, out)
    for device in result["devices"]:
        budget = device["budget"]
        verdict = {True: "within budget", False: "OVER BUDGET", None: "not judged"}[
            budget["within_budget"]
        ]
        e2e = budget["end_to_end_ms"]
        print(
            f"{device['serial']}: {device['status']}"
            + (f" ({device['error']})" if device.get("error") else "")
            + (f"; best {budget['best_delegate']} {e2e:.0f} ms" if e2e is not None else "")
            + f"; {verdict} ({budget['budget_ms']:g} ms)"
        )
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return phone_exit_code(result)


def _list_devices(args: argparse.Namespace) -> int:
    from .adb import Adb, list_devices
    from .devicestate import describe_device

    entries = list_devices(args.adb)
    if not entries:
        print("no phones attached (adb devices -l lists none)")
        return 0
    print(f"{'serial':<22}{'state':<14}{'model':<24}{'SoC':<26}android")
    for entry in entries:
        info: dict = {}
        if entry.state == "device":
            try:
                info = describe_device(Adb(entry.serial, args.adb))
            except MobileDiffError as exc:
                info = {"model": f"({exc})"}
        print(
            f"{entry.serial:<22}{entry.state:<14}"
            f"{info.get('model') or entry.details.get('model', '?'):<24}"
            f"{info.get('soc') or '?':<26}{info.get('android_version') or '?'}"
        )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .fit import estimate_fit, fit_exit_code, format_fit, load_profiles

    profiles = load_profiles([Path(p) for p in args.profiles or []])
    if args.list_devices:
        for name, p in sorted(profiles.items()):
            print(f"{name:<20}{p['display_name']:<28}{p['platform']:<9}{p.get('soc', '')}")
        return 0
    if not args.bundle or not args.device:
        raise MobileDiffError("give a bundle and --device NAME (--list-devices shows the names)")
    if args.device not in profiles:
        raise MobileDiffError(
            f"no device profile {args.device!r} (known: {', '.join(sorted(profiles))})"
        )
    fit = estimate_fit(args.bundle, profiles[args.device], args.steps, args.budget_ms)
    print(json.dumps(fit, indent=2) if args.json else format_fit(fit))
    return fit_exit_code(fit)


def add_bench_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and ``check`` to the ``mobilediff`` parser's subcommands."""
    from .phone import DELEGATES

    bench = subparsers.add_parser(
        "bench",
        help="per-stage latency of a bundle on this host or on phones over adb",
        description="Host mode (default): every backend the bundle runs on here, per component "
        "and end to end, each in its own process. --phone: push the bundle over adb and run the "
        "Android demo app's benchmark (or --benchmark-model) per delegate.",
        epilog=_EPILOG_BENCH,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("bundle", nargs="*", help="bundle folder(s); several compare precisions")
    bench.add_argument("-o", "--output", help="results folder (default: bench-results/...)")
    bench.add_argument("--iterations", type=_positive, default=10, help="timed runs (default 10)")
    bench.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    bench.add_argument(
        "--steps", type=_steps, help="steps end to end, e.g. 1,8 (default: manifest)"
    )
    bench.add_argument("--threads", type=_positive, help="CPU threads (default: all)")
    bench.add_argument("--prompt", default="a photo of an astronaut riding a horse on mars")
    bench.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    host = bench.add_argument_group("host mode")
    host.add_argument("--backend", type=_csv, help="pytorch,litert,onnxruntime (default: all)")
    host.add_argument("--component", type=_csv, help="text_encoder,unet,vae_decoder")
    host.add_argument(
        "--pipeline-iterations", type=_positive, default=3, help="timed end-to-end runs (default 3)"
    )
    host.add_argument("--no-peak", action="store_true", help="skip the matmul peak measurement")
    host.add_argument("--no-pipeline", action="store_true", help="components only")
    phone = bench.add_argument_group("phone mode (adb)")
    phone.add_argument("--phone", action="store_true", help="run on phones over adb")
    phone.add_argument("--devices", action="store_true", help="list attached phones and exit")
    phone.add_argument("--serial", action="append", help="phone serial (repeat; default: all)")
    phone.add_argument("--adb", help="adb executable (default: $ADB, then PATH)")
    phone.add_argument(
        "--benchmark-model",
        metavar="PATH",
        help="use this LiteRT benchmark_model binary instead of the app",
    )
    phone.add_argument("--delegate", type=_csv, default=DELEGATES, help="cpu,gpu,npu (default all)")
    phone.add_argument(
        "--cooldown", type=float, default=30.0, help="seconds between delegate runs (default 30)"
    )
    phone.add_argument(
        "--budget-ms",
        type=float,
        default=1000.0,
        help="end-to-end budget; over it exits 3 (default 1000)",
    )
    phone.add_argument(
        "--run-timeout",
        type=float,
        default=1800.0,
        help="seconds to wait for one delegate's result (default 1800)",
    )
    phone.add_argument("--package", default="dev.mobilediff.app", help="the demo app's package")
    bench.set_defaults(func=cmd_bench)

    check = subparsers.add_parser(
        "check",
        help="estimate whether a bundle fits a phone and meets the budget (no phone needed)",
        description="An ESTIMATE from device profiles (RAM, accelerator throughput, with "
        "sources) and the bundle's FLOPs and sizes; exits 3 when it does not fit or is over "
        "budget.",
    )
    check.add_argument("bundle", nargs="?", help="bundle folder")
    check.add_argument("--device", help="device profile name (--list-devices)")
    check.add_argument("--list-devices", action="store_true", help="list device profiles")
    check.add_argument("--profiles", action="append", help="extra folder of device profiles")
    check.add_argument("--steps", type=_positive, help="sampler steps (default: the manifest's)")
    check.add_argument("--budget-ms", type=float, default=1000.0)
    check.add_argument("--json", action="store_true", help="print the estimate as JSON")
    check.set_defaults(func=cmd_check)
