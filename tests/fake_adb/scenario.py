"""The test side of the fake adb: scenarios, PATH set-up, and a bundle with placeholder models.

``use_fake_adb(monkeypatch, tmp_path, scenario)`` writes the scenario, points
``$FAKE_ADB_SCENARIO`` / ``$FAKE_ADB_ROOT`` at it and puts ``tests/fake_adb`` first on
PATH, so ``adb`` is the scripted stand-in. ``stub_bundle`` writes a real, verifying bundle
whose model files are placeholder bytes: enough for pushing, hashing and fit estimates,
which never run a model.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

PIXEL = {
    "props": {
        "ro.product.manufacturer": "Google",
        "ro.product.model": "Pixel 8 Pro",
        "ro.soc.manufacturer": "Google",
        "ro.soc.model": "Tensor G3",
        "ro.build.version.release": "15",
        "ro.build.version.sdk": "35",
        "ro.product.cpu.abi": "arm64-v8a",
    },
    "mem_total_kb": 11_700_000,
    "free_bytes": 20 << 30,
    "app_installed": True,
    "delegates": {
        "cpu": {"text_encoder_ms": 40.0, "unet_ms": 180.0, "vae_decoder_ms": 120.0},
        "gpu": {"text_encoder_ms": 12.0, "unet_ms": 60.0, "vae_decoder_ms": 80.0},
        "npu": {"error": "npu refused unet: NNAPI delegate could not be created"},
    },
}


def device(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(PIXEL)
    spec.update(changes)
    return spec


def use_fake_adb(monkeypatch, tmp_path: Path, devices: dict[str, dict[str, Any]]) -> Path:
    """Install the fake adb for this test; returns its state folder (``adb.log`` inside)."""
    scenario = tmp_path / "scenario.json"
    scenario.write_text(json.dumps({"devices": devices}))
    root = tmp_path / "devices"
    monkeypatch.setenv("FAKE_ADB_SCENARIO", str(scenario))
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("PATH", f"{HERE}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("ADB", raising=False)
    return root


def bench_main(argv: list[str]) -> int:
    """``mobilediff ARGV``; through the real CLI once ``bench``/``check`` are wired into it."""
    import argparse
    import sys

    from mobilediff_export import cli
    from mobilediff_export.errors import MobileDiffError

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if argv[0] in sub.choices:
        return cli.main(argv)
    from mobilediff_export.bench.commands import add_bench_commands

    parser = argparse.ArgumentParser(prog="mobilediff")
    add_bench_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MobileDiffError as exc:
        print(f"mobilediff {args.command}: error: {exc}", file=sys.stderr)
        return 1


def stub_bundle(out: Path, model: str = "tiny", targets: tuple[str, ...] = ("tflite",)) -> Path:
    """A verifying bundle of ``model`` with placeholder bytes for each model file."""
    from mobilediff_export.bundle import write_bundle
    from mobilediff_export.checkpoints import load_model
    from mobilediff_export.config import ModelConfig
    from mobilediff_export.export.artifacts import COMPONENTS, ComponentArtifact
    from mobilediff_export.export.quantize import resolve_recipe
    from mobilediff_export.export.signatures import component_io
    from mobilediff_export.schedulers import make_sampler
    from mobilediff_export.tokenizer import CLIPTokenizer

    if model == "tiny":
        loaded = load_model("tiny")
        config, tokenizer = loaded.config, loaded.tokenizer
    else:
        from mobilediff_export.checkpoints import models_dir

        config = ModelConfig.from_json_file(models_dir() / f"{model}.json")
        tokenizer = CLIPTokenizer.from_dir(models_dir() / "tokenizer", config.tokenizer)
    sampler = make_sampler(config.pipeline)
    with write_bundle(
        out, config=config, tokenizer=tokenizer, sampler=sampler, source=f"config:{model}"
    ) as writer:
        for target in targets:
            for component in COMPONENTS:
                path = writer.path_for(target, component)
                path.write_bytes(f"placeholder {target} {component}\n".encode() * 64)
                io = component_io(config, component, target)
                recipe = resolve_recipe(target, component)
                writer.add(
                    ComponentArtifact(
                        target=target,
                        component=component,
                        path=path,
                        precision=recipe.precision,
                        recipe=recipe.name,
                        inputs=io.inputs,
                        outputs=io.outputs,
                    )
                )
    return out
