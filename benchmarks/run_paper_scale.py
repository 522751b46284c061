#!/usr/bin/env python
"""Record the paper-scale host run, the peers' ratios and the rewrite/recipe ratios.

Writes ``benchmarks/results/paper_scale.{json,md}`` and its charts. Heavy (tens of minutes
on a 2-core machine, up to ~6 GB RSS per conversion); on a shared machine run it alone:

    .venv/bin/python benchmarks/run_paper_scale.py --lock /tmp/mobilediff-heavy.lock

``--lock`` makes each conversion and each measurement hold that lock, so other heavy jobs
using the same lock never run while something is being timed (and may run in between).

Conversions are cached in ``--work`` (default ``~/.cache/mobilediff/bench-work``): after an
interruption, the same command measures again without converting again. ``--bundle`` reuses
a paper-size bundle exported elsewhere (e.g. by benchmarks/export_paper_scale.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from mobilediff_export.bench.hostinfo import default_threads, load_average
from mobilediff_export.bench.paper import PaperSettings, run_paper_scale
from mobilediff_export.bench.report import write_paper_results

ROOT = Path(__file__).resolve().parents[1]
SMOKE_PEER = {"sample_size": 8, "block_out_channels": [32, 64, 64], "attention_head_dim": 2}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache/mobilediff/bench-work")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--stem", default="paper_scale", help="results file name stem")
    parser.add_argument("--bundle", type=Path, help="reuse this paper-size bundle")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--skip-paper", action="store_true", help="no paper-size bundle run")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--skip-rewrites", action="store_true")
    parser.add_argument(
        "--paper-fp32",
        action="store_true",
        help="also convert the paper UNet to LiteRT fp32 (issue Export's fp32 target; +10 min)",
    )
    parser.add_argument(
        "--rewrite-source",
        default="ours:mobilediffusion-lite",
        help="UNet for the rewrite/recipe ratios (ours:CONFIG)",
    )
    parser.add_argument("--recipes", default="fp32,fp16,int8-weight,int8-dynamic,w8a8")
    parser.add_argument(
        "--paired-rounds",
        type=int,
        default=5,
        help="alternating rounds of the speed-target UNets (LiteRT, LiteRT fp32, ONNX Runtime), "
        "the ratios' source; 0: read the targets off the single measurements",
    )
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument(
        "--lock",
        help="lock file each conversion and measurement holds, e.g. /tmp/mobilediff-heavy.lock "
        "(heavy jobs on a shared machine take turns)",
    )
    parser.add_argument(
        "--convert-only",
        action="store_true",
        help="export and convert everything into --work; measure nothing",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="the whole path at toy size (tiny model, shrunken peer): minutes",
    )
    args = parser.parse_args(argv)
    if args.paired_rounds < 0:
        parser.error("--paired-rounds must be 0 or more")

    load = load_average()
    if load and load[0] > 1.5:
        print(
            f"warning: load average {load} on this machine; the timings will show it "
            "(they are recorded with it)",
            file=sys.stderr,
        )
    settings = PaperSettings(
        work=args.work,
        threads=args.threads,
        bundle=args.bundle,
        iterations=args.iterations,
        paper=not args.skip_paper,
        peers=not args.skip_peers,
        rewrites=not args.skip_rewrites,
        paper_fp32_litert=args.paper_fp32,
        rewrite_source=args.rewrite_source,
        recipes=tuple(r for r in args.recipes.split(",") if r),
        notes=args.note,
        lock=args.lock,
        convert_only=args.convert_only,
        paired_rounds=args.paired_rounds,
    )
    if args.smoke:
        settings.paper_model = "tiny"
        settings.peer_overrides = SMOKE_PEER
        settings.rewrite_source = "ours:tiny"
        settings.rewrite_variants = ("none", "default")
        settings.recipes = ("fp32", "int8-dynamic")
        settings.iterations = 2
        settings.paired_rounds = min(settings.paired_rounds, 2)
        settings.notes.append("SMOKE RUN at toy size: these numbers say nothing about speed")
    command = shlex.join(["python", "benchmarks/run_paper_scale.py", *(argv or sys.argv[1:])])

    def checkpoint(partial: dict) -> None:  # what is measured survives an interruption
        partial["host"] = {**partial["host"], "load_average_end": load_average()}
        write_paper_results(partial, args.out, args.stem)

    result = run_paper_scale(
        settings, command, checkpoint=None if args.convert_only else checkpoint
    )
    if args.convert_only:
        failed = [k for k, v in result["converted"].items() if v.get("status") != "ok"]
        print(
            f"converted into {args.work}: {len(result['converted'])} models"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
        return 1 if failed else 0
    written = write_paper_results(result, args.out, args.stem)
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 0 if result["status"] == "complete" else 4


if __name__ == "__main__":
    sys.exit(main())
