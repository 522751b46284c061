"""Peers side by side: one UNet, the same weights, converted and run the ways others do it.

A *variant* is a source network and a way to run it:

    source      diffusers     diffusers' UNet2DConditionModel (the peer), random weights
                              saved once to ``<work>/peer_unet.safetensors``
                ours-peer     our UNet with those same weights (checkpoints.hf_diffusers)
                ours:NAME     our UNet of a named config (models/NAME.json), seeded weights
    runner      eager         PyTorch, fp32
                litert-plain  plain ``litert_torch.convert(module, args).export(path)``
                onnx-plain    plain ``torch.onnx.export(module, args, path, dynamo=True)``
                litert        our converter (export.tflite.convert_tflite): recipe + rewrites
                onnx          our ONNX converter (export.onnx.convert_onnx)

Each conversion and each measurement runs in its own process (``worker``'s ``call``
mode), so peak RSS is that step's and a multi-GB converter frees everything when it ends.
Inputs are one denoising step at batch 1 (no classifier-free guidance: distilled models
run without it): sample (1, 4, h, w), timestep 500, context (1, 77, D).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .stats import summarize, time_ms
from .worker import peak_rss_bytes

#: The peer: BK-SDM-Tiny's UNet layout (Kim et al. 2023, nota-ai/bk-sdm-tiny): SD-1.5's
#: UNet without its innermost stage and mid block, one residual block per down level;
#: 323M parameters, the SD-1.5 family's nearest published size to MobileDiffusion's 386M.
PEER_UNET_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3,
    "up_block_types": ["CrossAttnUpBlock2D"] * 3,
    "mid_block_type": None,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
PEER_NAME = "BK-SDM-Tiny layout (SD-1.5 family, 323M-parameter UNet)"
WEIGHTS = "peer_unet.safetensors"


# ---------------------------------------------------------------------------- sources


def peer_config_dict(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The peer's diffusers config; ``overrides`` shrink it for tests."""
    return {**PEER_UNET_CONFIG, **(overrides or {})}


def make_peer_weights(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the diffusers UNet with seeded random weights and save them (worker call)."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    work = Path(spec["work"])
    work.mkdir(parents=True, exist_ok=True)
    config = peer_config_dict(spec.get("overrides"))
    config_path = work / "peer_unet_config.json"
    made = (work / WEIGHTS).exists() and config_path.exists()
    if made and json.loads(config_path.read_text()) == config:  # same config and seed: reuse
        from safetensors import safe_open

        with safe_open(str(work / WEIGHTS), "pt") as fh:
            n = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118
        return {"parameters": n, "file": WEIGHTS, "cached": True}
    torch.manual_seed(spec.get("seed", 0))
    unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    state = {k: v.contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(work / WEIGHTS))
    (work / "peer_unet_config.json").write_text(json.dumps(config, indent=2))
    return {"parameters": sum(v.numel() for v in state.values()), "file": WEIGHTS}


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _diffusers_unet(work: Path):
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    config = json.loads((work / "peer_unet_config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")})
    unet.load_state_dict(load_file(str(work / WEIGHTS)), assign=True)
    return unet.eval().requires_grad_(False), config


def diffusers_step(unet):
    """diffusers' UNet as a plain (sample, timestep, context) -> tensor module."""
    from torch import nn

    class DiffusersStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, context):
            return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0]

    return DiffusersStep().eval()


def model_config_for(source: str, work: Path):
    """A ``ModelConfig`` whose UNet is the source's, at batch 1 (guidance off), 512x512."""
    from ..checkpoints import models_dir
    from ..checkpoints.hf_diffusers import unet_config_from_diffusers
    from ..config import ModelConfig, PipelineConfig, TextEncoderConfig

    if source.startswith("ours:"):
        config = ModelConfig.from_json_file(models_dir() / f"{source[5:]}.json")
        pipeline = dataclasses.replace(config.pipeline, guidance_scale=1.0)
        return dataclasses.replace(config, pipeline=pipeline)
    diffusers_config = json.loads((work / "peer_unet_config.json").read_text())
    unet = unet_config_from_diffusers(diffusers_config)
    return ModelConfig(
        name="peer",
        text_encoder=TextEncoderConfig(hidden_size=unet.cross_attention_dim),
        unet=unet,
        pipeline=PipelineConfig(image_size=unet.sample_size * 8, guidance_scale=1.0),
    )


def load_source(source: str, work: Path):
    """(torch module taking (sample, timestep, context), ModelConfig) for a source name."""
    import torch

    from ..models.unet import UNet

    config = model_config_for(source, work)
    if source == "diffusers":
        unet, _ = _diffusers_unet(work)
        return diffusers_step(unet), config
    if source == "ours-peer":
        from safetensors.torch import load_file

        from ..checkpoints.hf_diffusers import unet_state_dict_from_diffusers

        state = unet_state_dict_from_diffusers(load_file(str(work / WEIGHTS)), config.unet)
        with torch.device("meta"):
            unet = UNet(config.unet)
        unet.load_state_dict(state, assign=True)
        return unet.eval().requires_grad_(False), config
    if source.startswith("ours:"):
        torch.manual_seed(0)
        return UNet(config.unet).eval().requires_grad_(False), config
    raise ValueError(f"unknown source {source!r}")


def step_inputs(config) -> tuple[Any, ...]:
    """Seeded (sample, timestep, context) at batch 1 for ``config``'s UNet."""
    import torch

    c, h, w = config.latent_shape
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn((1, c, h, w), generator=g),
        torch.full((1,), 500.0),
        torch.randn((1, config.tokenizer.max_length, config.unet.cross_attention_dim), generator=g),
    )


def _entry(config, rel: str, signature: str | None = None) -> dict[str, Any]:
    """A manifest-like component entry for ``runtime.runners.open_runner``."""
    from ..export.signatures import component_io

    io = component_io(config, "unet", "onnx")
    entry = {
        "file": rel,
        "inputs": [s.to_dict() for s in io.inputs],
        "outputs": [s.to_dict() for s in io.outputs],
    }
    if signature:
        entry["signature"] = signature
    return entry


# ---------------------------------------------------------------------------- convert


def convert_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Convert one variant to a file in ``work`` (worker call); returns its runner entry."""
    import torch

    work = Path(spec["work"])
    torch.set_num_threads(spec["threads"])
    module, config = load_source(spec["source"], work)
    runner, name = spec["runner"], spec["name"]
    baseline = peak_rss_bytes()
    started = time.perf_counter()
    details: dict[str, Any] = {}
    if runner == "litert-plain":
        import litert_torch

        rel = f"{name}.tflite"
        litert_torch.convert(module, step_inputs(config)).export(str(work / rel))
        entry = _entry(config, rel)
    elif runner == "onnx-plain":
        rel = f"{name}.onnx"
        with torch.no_grad():
            torch.onnx.export(
                module,
                step_inputs(config),
                str(work / rel),
                dynamo=True,
                input_names=["sample", "timestep", "context"],
                output_names=["model_output"],
            )
        entry = _entry(config, rel)
    elif runner == "litert":
        from ..export.quantize import get_recipe
        from ..export.rewrite import DEFAULT_REWRITES, RewriteOptions
        from ..export.tflite import convert_tflite

        rewrites = spec.get("rewrites")
        options = DEFAULT_REWRITES["tflite"] if rewrites is None else RewriteOptions(**rewrites)
        if options.fold_timesteps is not None:
            options = dataclasses.replace(options, fold_timesteps=tuple(options.fold_timesteps))
        rel = f"{name}.tflite"
        artifact = convert_tflite(
            module,
            config,
            "unet",
            work / rel,
            get_recipe(spec.get("recipe", "int8-dynamic")),
            options,
        )
        entry = {
            "file": rel,
            "signature": artifact.signature,
            "inputs": [s.to_dict() for s in artifact.inputs],
            "outputs": [s.to_dict() for s in artifact.outputs],
        }
        details = {
            "rewrites": artifact.rewrites,
            "recipe": artifact.recipe,
            "precision": artifact.precision,
        }
    elif runner == "onnx":
        from ..export.onnx import convert_onnx
        from ..export.quantize import get_recipe

        rel = f"{name}.onnx"
        artifact = convert_onnx(module, config, "unet", work / rel, get_recipe("fp32"))
        entry = {
            "file": rel,
            "inputs": [s.to_dict() for s in artifact.inputs],
            "outputs": [s.to_dict() for s in artifact.outputs],
        }
    else:
        raise ValueError(f"unknown runner {runner!r}")
    size = sum(p.stat().st_size for p in work.glob(f"{name}.*"))
    return {
        "entry": entry,
        "convert_s": round(time.perf_counter() - started, 1),
        "convert_baseline_rss_bytes": baseline,
        "convert_peak_rss_bytes": peak_rss_bytes(),
        "size_bytes": size,
        **details,
    }


# ---------------------------------------------------------------------------- measure


def measure_variant(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, first and warm step latency of one variant (worker call)."""
    work = Path(spec["work"])
    runner = spec["runner"]
    if runner == "eager":
        import torch

        torch.set_num_threads(spec["threads"])
        baseline = peak_rss_bytes()
        load_ms, (module, config) = time_ms(lambda: load_source(spec["source"], work))
        args = step_inputs(config)

        def step() -> Any:
            with torch.inference_mode():
                return module(*args)
    else:
        from ..runtime.runners import open_runner

        target = "tflite" if runner.startswith("litert") else "onnx"
        entry = spec["entry"]
        baseline = peak_rss_bytes()
        load_ms, run = time_ms(lambda: open_runner(work, target, entry, spec["threads"]))
        rng = np.random.default_rng(0)
        feeds = {}
        for s in entry["inputs"]:
            if s["name"] == "step_index":
                feeds[s["name"]] = np.zeros(s["shape"], dtype=np.int32)
            elif s["layout"] == "N":
                feeds[s["name"]] = np.full(s["shape"], 500.0, dtype=np.float32)
            else:
                feeds[s["name"]] = rng.standard_normal(s["shape"]).astype(np.float32)

        def step() -> Any:
            return run.run(feeds)

    first_ms, _ = time_ms(step)
    for _ in range(spec["warmup"]):
        step()
    samples = [time_ms(step)[0] for _ in range(spec["iterations"])]
    return {
        "load_ms": round(load_ms, 1),
        "first_run_ms": round(first_ms, 1),
        "step_ms": summarize(samples),
        "samples_ms": [round(s, 1) for s in samples],
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak_rss_bytes(),
    }
