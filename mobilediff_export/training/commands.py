"""``mobilediff train ...``: the training recipe's commands (parse, call the library, print).

    mobilediff train data     [-o preview.png] [--split val] [-n 32]   look at the data set
    mobilediff train vae      --config demo                            stage (a)
    mobilediff train teacher  --config demo                            stage (b)
    mobilediff train distill  --config demo                            stage (c)
    mobilediff train gan      --config demo                            stage (d)
    mobilediff train classifier --config demo                          the evaluation classifier
    mobilediff train eval     --config demo [--student DIR --onestep DIR]
    mobilediff train all      --config demo -o models/demo --one-step-output models/demo-1step

Every stage writes under ``--run-dir`` (default ``runs/<recipe name>``) and resumes from
its checkpoint when run again; ``--restart`` starts it over. ``--ddp`` (under torchrun)
and ``--amp bf16|fp16`` are the scale path; ``--threads`` caps CPU threads.

``cli.py`` adds these with ``add_train_commands(sub)``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import MobileDiffError

STAGE_HELP = {
    "vae": "stage (a): train the autoencoder (its decoder ships)",
    "teacher": "stage (b): train text encoder + UNet as the guided teacher",
    "distill": "stage (c): progressive distillation to 8 steps, guidance folded in",
    "gan": "stage (d): DiffusionGAN fine-tuning to 1 step",
    "classifier": "train the evaluation classifier",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default="demo",
        help="recipe name in models/training/ or a recipe JSON (default: demo)",
    )
    p.add_argument("--run-dir", help="checkpoints and stage outputs (default: runs/<recipe>)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument(
        "--ddp", action="store_true", help="DistributedDataParallel; launch with torchrun"
    )
    p.add_argument("--amp", choices=("bf16", "fp16"), help="mixed precision (autocast)")


def add_train_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and its sub-commands to the ``mobilediff`` parser."""
    train = subparsers.add_parser(
        "train",
        help="train the demo model: data, vae, teacher, distill, gan, eval, all",
        description="MobileDiffusion's training recipe at small scale (see MODEL_CARD.md).",
    )
    sub = train.add_subparsers(dest="train_command", required=True)

    data = sub.add_parser("data", help="preview the synthetic captioned data set")
    data.add_argument("--config", default="demo", help="recipe name or JSON")
    data.add_argument("--split", choices=("train", "val"), default="train")
    data.add_argument("-n", "--count", type=int, default=32, help="how many scenes")
    data.add_argument("-o", "--output", help="write a contact sheet PNG here")
    data.set_defaults(func=cmd_data)

    for name, text in STAGE_HELP.items():
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--restart", action="store_true", help="discard this stage's progress")
        p.set_defaults(func=cmd_stage, stage=name)

    ev = sub.add_parser("eval", help="caption accuracy and FD of teacher, student, one-step")
    _common(ev)
    for role in ("teacher", "student", "onestep"):
        ev.add_argument(f"--{role}", help=f"{role} model folder (default: from the run dir)")
    ev.add_argument("-o", "--output", help="folder for eval.json, table.md (default: <run>/eval)")
    ev.set_defaults(func=cmd_eval)

    al = sub.add_parser("all", help="every stage, then the shipped models, samples and card")
    _common(al)
    al.add_argument("-o", "--output", required=True, help="model folder for the 8-step student")
    al.add_argument(
        "--one-step-output", help="model folder for the one-step model (default: <output>-1step)"
    )
    al.add_argument("--force", action="store_true", help="replace existing output folders")
    al.set_defaults(func=cmd_all)


def _setup(args: argparse.Namespace):
    from .config import load_recipe
    from .runtime import make_runtime

    recipe = load_recipe(args.config)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / recipe.name
    runtime = make_runtime(args.ddp, args.amp, args.device, args.threads)
    return recipe, run_dir, runtime


def cmd_data(args: argparse.Namespace) -> int:
    from .config import load_recipe
    from .data import preview_grid
    from .vae import make_data

    recipe = load_recipe(args.config)
    if args.count < 1:
        raise MobileDiffError("--count must be at least 1")
    data = make_data(recipe)
    sheet, captions = preview_grid(data, args.split, args.count)
    for i, caption in enumerate(captions):
        print(f"{i:3d}  {caption}")
    train, val = (sum(len(v) for v in data.keys[s].values()) for s in ("train", "val"))
    print(f"{train} caption combinations for training, {val} held out for validation")
    if args.output:
        sheet.save(args.output)
        print(f"wrote {args.output} ({sheet.width}x{sheet.height}, row by row)")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from .stages import train_stage

    recipe, run_dir, runtime = _setup(args)
    record = train_stage(args.stage, recipe, run_dir, runtime, restart=args.restart)
    if runtime.is_main:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
        print(f"{args.stage}: {record['steps']} steps, {record['seconds'] / 60:.1f} min; {shown}")
        print(f"outputs in {run_dir / args.stage}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import default_models, evaluate, format_table
    from .stages import train_stage

    recipe, run_dir, runtime = _setup(args)
    train_stage("classifier", recipe, run_dir, runtime)
    models = default_models(run_dir)
    for role in models:
        if getattr(args, role):
            models[role] = Path(getattr(args, role))
    out = Path(args.output) if args.output else None
    result = evaluate(recipe, run_dir, runtime, models=models, out_dir=out)
    if runtime.is_main:
        print(format_table(result))
        print(f"wrote {(out or run_dir / 'eval') / 'eval.json'}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    from .recipe import run_all

    recipe, run_dir, runtime = _setup(args)
    out = Path(args.output)
    onestep = (
        Path(args.one_step_output) if args.one_step_output else out.with_name(out.name + "-1step")
    )
    command = "mobilediff " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if not sys.argv[0].endswith("mobilediff"):
        command = ""
    summary = run_all(recipe, run_dir, runtime, out, onestep, args.force, command)
    if runtime.is_main:
        from .evaluate import format_table

        print(format_table({"rows": summary["eval"]}))
        print(f"wrote {out} and {onestep} (model cards, samples); run records in {run_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mobilediff_export.training.commands train ...``: the same commands as
    ``mobilediff train``, importable by path (what ``torchrun`` launches)."""
    parser = argparse.ArgumentParser(prog="mobilediff")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MobileDiffError as exc:
        print(f"mobilediff train: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mobilediff train: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
