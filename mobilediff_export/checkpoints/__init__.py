"""Find and load a model: a config name from ``models/``, a native folder or a diffusers folder.

``load_model`` is the one entry point; it returns the config, the three torch modules
(in eval mode, fp32) and the tokenizer folder. A config name without weights builds the
networks from the config with seeded random weights, which is what the paper-scale configs
are for (sizes, FLOPs, export and latency), since no official weights exist.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..models.text_encoder import CLIPTextEncoder
from ..models.unet import UNet
from ..models.vae_decoder import VAEDecoder
from ..tokenizer import CLIPTokenizer
from .hf_folder import is_diffusers_folder, read_diffusers_folder
from .native import (
    COMPONENTS,
    WEIGHTS,
    is_native_folder,
    load_state_into,
    read_native_config,
    read_native_weights,
    save_native,
)

__all__ = [
    "LoadedModel",
    "build_modules",
    "load_model",
    "model_names",
    "models_dir",
    "save_native",
]


@dataclass
class LoadedModel:
    config: ModelConfig
    modules: dict[str, nn.Module]
    tokenizer: CLIPTokenizer
    source: str
    """Where it came from: a path, or ``config:NAME`` for random weights."""
    source_sha256: str | None
    """sha256 over the weight files read, in a fixed order; None for random weights."""


def models_dir() -> Path:
    """The folder of named configs and embedded models (``$MOBILEDIFF_MODELS`` overrides)."""
    env = os.environ.get("MOBILEDIFF_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def model_names() -> list[str]:
    root = models_dir()
    if not root.is_dir():
        return []
    names = {p.stem for p in root.glob("*.json")}
    names |= {p.name for p in root.iterdir() if is_native_folder(p)}
    return sorted(names)


def build_modules(config: ModelConfig, seed: int = 0) -> dict[str, nn.Module]:
    """The three networks from a config, with weights drawn from a seeded generator."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules: dict[str, nn.Module] = {
            "text_encoder": CLIPTextEncoder(config.text_encoder),
            "unet": UNet(config.unet),
            "vae_decoder": VAEDecoder(config.vae_decoder),
        }
    for module in modules.values():
        module.eval().requires_grad_(False)
    return modules


def _hash_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _load_states(
    config: ModelConfig, states: dict[str, dict[str, torch.Tensor]], where: Path
) -> dict[str, nn.Module]:
    modules = build_modules(config)
    for name, module in modules.items():
        load_state_into(module, states[name], f"{where} {name}")
    return modules


def _resolve(path_or_name: str | Path) -> Path:
    path = Path(path_or_name)
    if path.exists():
        return path
    if isinstance(path_or_name, str) and "/" not in path_or_name and os.sep not in path_or_name:
        root = models_dir()
        for candidate in (root / path_or_name, root / f"{path_or_name}.json"):
            if candidate.exists():
                return candidate
        known = ", ".join(model_names()) or "none"
        raise ConfigError(
            f"no model named {path_or_name!r} and no such path (known names: {known})"
        )
    raise ConfigError(f"model path not found: {path}")


def load_model(path_or_name: str | Path, seed: int = 0) -> LoadedModel:
    """Load a model from a config name, a config JSON, a native folder or a diffusers folder."""
    path = _resolve(path_or_name)
    if path.is_file():
        if path.suffix != ".json":
            raise ConfigError(
                f"{path} is a file; give a model config (.json), a mobilediff model folder "
                "or a diffusers folder"
            )
        config = ModelConfig.from_json_file(path)
        tokenizer = CLIPTokenizer.from_dir(models_dir() / "tokenizer", config.tokenizer)
        return LoadedModel(
            config, build_modules(config, seed), tokenizer, f"config:{config.name}", None
        )
    if is_native_folder(path):
        config = read_native_config(path)
        states = {name: read_native_weights(path, name) for name in COMPONENTS}
        modules = _load_states(config, states, path)
        digest = _hash_files([path / name / WEIGHTS for name in COMPONENTS])
        tokenizer = CLIPTokenizer.from_dir(path / "tokenizer", config.tokenizer)
        return LoadedModel(config, modules, tokenizer, str(path), digest)
    if is_diffusers_folder(path):
        config, states, tokenizer = read_diffusers_folder(path)
        modules = _load_states(config, states, path)
        weight_files = sorted(
            p
            for part in ("unet", "vae", "text_encoder")
            for p in (path / part).glob("*.safetensors")
        )
        return LoadedModel(config, modules, tokenizer, str(path), _hash_files(weight_files))
    if path.is_dir():
        raise CheckpointError(
            f"{path} is neither a mobilediff model folder (no mobilediff.json) nor a diffusers "
            "pipeline folder (no model_index.json or unet/config.json)"
        )
    raise CheckpointError(f"cannot load {path}")
