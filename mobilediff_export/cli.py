"""The ``mobilediff`` command: a thin layer that parses, calls the library and prints.

Errors the user can fix come out as one line on stderr and exit status 1; usage errors
exit 2 (argparse). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import MobileDiffError


def _fmt_count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def cmd_info(args: argparse.Namespace) -> int:
    from .analysis import component_costs, image_flops
    from .checkpoints import load_model, model_names
    from .config import ModelConfig

    if args.model is None:
        print("named models:", ", ".join(model_names()) or "none")
        return 0
    config = _config_only(args.model) or load_model(args.model).config
    assert isinstance(config, ModelConfig)
    costs = component_costs(config)
    p = config.pipeline
    print(f"model {config.name}: {config.description}".rstrip(": "))
    print(
        f"image {p.image_size}x{p.image_size}, latent {'x'.join(map(str, config.latent_shape))}, "
        f"sampler {p.sampler} x{p.num_inference_steps}, guidance {p.guidance_scale:g}, "
        f"prediction {p.prediction_type}"
    )
    print(f"{'component':<14}{'parameters':>14}{'GFLOP/forward':>16}  inputs (batch 1)")
    for c in costs:
        shapes = ", ".join("x".join(map(str, s)) for s in c.input_shapes)
        print(f"{c.name:<14}{c.parameters:>14,}{c.flops / 1e9:>16.2f}  {shapes}")
    total = sum(c.parameters for c in costs)
    print(f"{'total':<14}{total:>14,}  ({_fmt_count(total)} parameters)")
    flops = image_flops(config, costs, p.num_inference_steps, p.uses_guidance)
    print(
        f"one image, {p.num_inference_steps} steps"
        f"{' with guidance (batch 2)' if p.uses_guidance else ''}: {flops / 1e12:.3f} TFLOP "
        "(matmul + conv, 2 per MAC)"
    )
    return 0


def _config_only(model: str):
    """A config JSON (or name of one) gives sizes and FLOPs without building weights."""
    from .checkpoints import models_dir
    from .config import ModelConfig

    path = Path(model)
    if not path.exists() and "/" not in model:
        path = models_dir() / f"{model}.json"
    if path.is_file() and path.suffix == ".json":
        return ModelConfig.from_json_file(path)
    return None


def _read_prompt(args: argparse.Namespace) -> str:
    from .tokenizer import read_prompt_file

    if args.prompt_file is not None:
        if args.prompt is not None:
            raise MobileDiffError("give either a prompt or --prompt-file, not both")
        return read_prompt_file(Path(args.prompt_file)).strip()
    if args.prompt is None:
        raise MobileDiffError("no prompt: give one as an argument or with --prompt-file")
    return args.prompt


def cmd_generate(args: argparse.Namespace) -> int:
    from .fileio import atomic_write_bytes

    prompt = _read_prompt(args)
    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise MobileDiffError(f"output must be a .png file, got {out}")
    if out.exists() and not args.force:
        raise MobileDiffError(f"{out} already exists; pass --force to replace it")
    started = time.perf_counter()
    if args.bundle is not None:
        image, source, loaded = _generate_from_bundle(args, prompt)
    else:
        from .export import DEFAULT_MODEL
        from .pipeline import load_pipeline

        if args.backend is not None or args.threads is not None:
            raise MobileDiffError("--backend and --threads apply to --bundle only")
        pipe = load_pipeline(args.model or DEFAULT_MODEL)
        loaded = time.perf_counter()
        image = pipe(
            prompt,
            steps=args.steps,
            seed=args.seed,
            guidance_scale=args.guidance,
            sampler=args.sampler,
            progress=True,
        )
        source = pipe.source
    done = time.perf_counter()
    generated = image.size
    if args.upscale > 1:  # pixel-exact enlargement for looking at a small model's output
        from PIL import Image

        size = (image.width * args.upscale, image.height * args.upscale)
        image = image.resize(size, Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(out, buf.getvalue())
    print(
        f"wrote {out} ({generated[0]}x{generated[1]}"
        + (f", shown {args.upscale}x" if args.upscale > 1 else "")
        + f") from {source}: "
        f"load {loaded - started:.2f}s, generate {done - loaded:.2f}s"
    )
    return 0


def _generate_from_bundle(args: argparse.Namespace, prompt: str):
    """The bundle's own models through LiteRT or ONNX Runtime; the manifest fixes sampling."""
    from .runtime import load_bundle

    if args.steps is not None or args.sampler is not None:
        raise MobileDiffError(
            "a bundle fixes its sampler and steps; export it again with --steps/--sampler"
        )
    runtime = load_bundle(args.bundle, backend=args.backend, num_threads=args.threads)
    loaded = time.perf_counter()
    image = runtime(prompt, seed=args.seed, guidance_scale=args.guidance, progress=True)
    return image, f"{args.bundle} ({runtime.backend})", loaded


def cmd_export(args: argparse.Namespace) -> int:
    from .bundle import format_bytes, inspect_bundle
    from .export import DEFAULT_MODEL, export_bundle

    started = time.perf_counter()
    out = export_bundle(
        model=args.model or DEFAULT_MODEL,
        out=args.output,
        targets=args.target,
        recipe=args.recipe,
        overrides=args.override,
        steps=args.steps,
        sampler=args.sampler,
        guidance=args.guidance,
        force=args.force,
        progress=True,
        rewrites=args.rewrite,
        calibration_prompts=args.calibration_prompts,
    )
    summary = inspect_bundle(out)
    for c in summary["components"]:
        print(
            f"{c['target']:<7}{c['component']:<13}{c['precision']:<16}"
            f"{format_bytes(c['size_bytes']):>10}  {c['file']}"
        )
    print(
        f"wrote {out}: {summary['files']} files, {format_bytes(summary['total_size_bytes'])}, "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import json

    from .bundle import BundleError, format_inspect, inspect_bundle

    summary = inspect_bundle(args.bundle)
    print(json.dumps(summary, indent=2) if args.json else format_inspect(summary))
    problems = summary["problems"]
    if problems:
        more = f" (and {len(problems) - 1} more, listed above)" if len(problems) > 1 else ""
        raise BundleError(f"{args.bundle} failed verification: {problems[0]}{more}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .validate import DEFAULT_PROMPT, format_report, validate_bundle

    report = validate_bundle(
        args.bundle,
        prompt=args.prompt or DEFAULT_PROMPT,
        seed=args.seed,
        model=args.model,
        num_threads=args.threads,
        progress=True,
    )
    print(format_report(report))
    if not report["passed"]:
        failures = report["failures"]
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise MobileDiffError(f"{args.bundle} is below its parity thresholds: {failures[0]}{more}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoints import load_model, save_native

    loaded = load_model(args.source)
    out = save_native(args.output, loaded.config, loaded.modules, loaded.tokenizer, args.force)
    print(f"wrote {out} ({loaded.config.name}, from {loaded.source})")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobilediff",
        description="MobileDiffusion models from checkpoint to phone.",
    )
    parser.add_argument("--version", action="version", version=f"mobilediff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="components, parameter counts and FLOPs of a model")
    info.add_argument("model", nargs="?", help="config name, config JSON, or model folder")
    info.set_defaults(func=cmd_info)

    gen = sub.add_parser(
        "generate", help="make an image from a prompt with the PyTorch model or a bundle"
    )
    gen.add_argument("prompt", nargs="?", help="the text prompt")
    gen.add_argument("--prompt-file", help="read the prompt from a UTF-8 text file")
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--model", help="config name or model folder (default: the demo model)")
    source.add_argument("--bundle", help="an exported bundle, run through LiteRT or ONNX Runtime")
    gen.add_argument("-o", "--output", required=True, help="PNG file to write")
    gen.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--guidance", type=float, help="classifier-free guidance scale; <=1 is off")
    gen.add_argument("--sampler", choices=("ddim", "euler", "onestep"))
    gen.add_argument(
        "--backend",
        choices=("tflite", "onnx"),
        help="with --bundle: the runtime (default: tflite if the bundle has it, else onnx)",
    )
    gen.add_argument(
        "--threads", type=_positive_int, help="with --bundle: CPU threads for the runtime"
    )
    gen.add_argument(
        "--upscale",
        type=_positive_int,
        default=1,
        help="enlarge the PNG N times, nearest neighbour (the demo model draws 32x32)",
    )
    gen.add_argument("--force", action="store_true", help="replace an existing output")
    gen.set_defaults(func=cmd_generate)

    exp = sub.add_parser("export", help="export a model to a LiteRT / Core ML / ONNX bundle")
    exp.add_argument("--model", help="config name or model folder (default: the demo model)")
    exp.add_argument(
        "--target",
        action="append",
        help="tflite, coreml or onnx; repeat it or give a comma list (default: tflite,coreml)",
    )
    exp.add_argument("--recipe", help="quantization recipe for every component it applies to")
    exp.add_argument(
        "--override",
        action="append",
        metavar="[TARGET:]COMPONENT=RECIPE",
        help="one component's recipe, e.g. coreml:unet=palettize-4bit (repeatable)",
    )
    exp.add_argument(
        "--rewrite",
        action="append",
        metavar="[TARGET:]NAME[=VALUE]",
        help="change a mobile rewrite, e.g. tflite:attention=sdpa, fuse_qkv=off, "
        "fold_timesteps, coreml:none (repeatable; default: each target's own set)",
    )
    exp.add_argument("--steps", type=int, help="sampler steps recorded in the bundle")
    exp.add_argument("--sampler", choices=("ddim", "euler", "onestep"))
    exp.add_argument(
        "--guidance", type=float, help="guidance scale; > 1 exports the UNet at batch 2"
    )
    exp.add_argument(
        "--calibration-prompts",
        metavar="FILE",
        help="prompts (one a line) that w8a8 calibrates on (default: the model folder's "
        "calibration_prompts.txt, else a few generic prompts)",
    )
    exp.add_argument("-o", "--output", required=True, help="bundle folder to write")
    exp.add_argument("--force", action="store_true", help="replace an existing bundle")
    exp.set_defaults(func=cmd_export)

    ins = sub.add_parser("inspect", help="show a bundle and verify every file's sha256")
    ins.add_argument("bundle", help="bundle folder")
    ins.add_argument("--json", action="store_true", help="print the summary as JSON")
    ins.set_defaults(func=cmd_inspect)

    val = sub.add_parser("validate", help="measure a bundle against its PyTorch original")
    val.add_argument("bundle", help="bundle folder")
    val.add_argument("--prompt", help="prompt of the pipeline check (default: a fixed one)")
    val.add_argument("--seed", type=int, default=0)
    val.add_argument("--model", help="where the PyTorch original is, if it moved since export")
    val.add_argument("--threads", type=_positive_int, help="CPU threads for the runtimes")
    val.set_defaults(func=cmd_validate)

    conv = sub.add_parser("convert", help="write a model (e.g. a diffusers folder) in our format")
    conv.add_argument("source", help="config name, native folder or diffusers folder")
    conv.add_argument("-o", "--output", required=True, help="folder to write")
    conv.add_argument("--force", action="store_true", help="replace an existing output")
    conv.set_defaults(func=cmd_convert)

    from .bench.commands import add_bench_commands
    from .training.commands import add_train_commands

    add_bench_commands(sub)
    add_train_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MobileDiffError as exc:
        print(f"mobilediff {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"mobilediff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
