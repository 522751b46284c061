"""Our own checkpoint format: a folder with one config JSON and one safetensors per part.

```
<model>/
  mobilediff.json                  format tag, name, tokenizer + pipeline config, notes
  text_encoder/config.json         TextEncoderConfig
  text_encoder/model.safetensors   weights, keyed by our module names
  unet/config.json, unet/model.safetensors
  vae_decoder/config.json, vae_decoder/model.safetensors
  tokenizer/vocab.json, tokenizer/merges.txt
```
Safetensors holds the tensors bit for bit and the configs round-trip through JSON, so a
save followed by a load gives back the same model. Writing is atomic: the folder appears
complete or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import (
    ModelConfig,
    PipelineConfig,
    TextEncoderConfig,
    TokenizerConfig,
    UNetConfig,
    VAEDecoderConfig,
    from_dict,
    read_json,
    to_dict,
)
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_dir
from ..tokenizer import CLIPTokenizer

FORMAT = "mobilediff-model"
FORMAT_VERSION = 1
MANIFEST = "mobilediff.json"
COMPONENTS: dict[str, type] = {
    "text_encoder": TextEncoderConfig,
    "unet": UNetConfig,
    "vae_decoder": VAEDecoderConfig,
}
WEIGHTS = "model.safetensors"


def is_native_folder(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning a missing, truncated or corrupt file into one line."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot read {path}: corrupt or truncated safetensors ({exc})"
        ) from None


def load_state_into(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Strictly load ``state`` into ``module``: every key present, no extras, shapes equal."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where}: weight {missing[0]} is missing{more}")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(f"{where}: unexpected weight {extra[0]}{more}")
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"{where}: weight {key} has shape {tuple(state[key].shape)} but the config "
                f"needs {tuple(ref.shape)}"
            )
    module.load_state_dict({k: v.to(ref.dtype) for k, v in state.items()}, strict=True)


def save_native(
    out_dir: str | Path,
    config: ModelConfig,
    modules: dict[str, nn.Module],
    tokenizer: CLIPTokenizer,
    force: bool = False,
) -> Path:
    """Write a model in our format, atomically."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force=force) as tmp:
        top = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": config.name,
            "description": config.description,
            "tokenizer": to_dict(config.tokenizer),
            "pipeline": to_dict(config.pipeline),
            "notes": dict(config.notes),
        }
        (tmp / MANIFEST).write_text(json.dumps(top, indent=2) + "\n", encoding="utf-8")
        for name in COMPONENTS:
            part = tmp / name
            part.mkdir()
            (part / "config.json").write_text(
                json.dumps(to_dict(getattr(config, name)), indent=2) + "\n", encoding="utf-8"
            )
            state = {
                k: v.detach().contiguous().cpu() for k, v in modules[name].state_dict().items()
            }
            save_file(state, str(part / WEIGHTS), metadata={"format": "pt", "component": name})
        tokenizer.save(tmp / "tokenizer")
    return out_dir


def read_native_config(path: Path) -> ModelConfig:
    """The ModelConfig of a native folder, from its manifest and per-part configs."""
    top = read_json(path / MANIFEST)
    if top.get("format") != FORMAT:
        raise ConfigError(f"{path / MANIFEST} is not a {FORMAT} manifest")
    if top.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path / MANIFEST} has format_version {top.get('format_version')!r}; this version "
            f"of mobilediff reads {FORMAT_VERSION}"
        )
    known = {"format", "format_version", "name", "description", "tokenizer", "pipeline", "notes"}
    unknown = sorted(set(top) - known)
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]} in {path / MANIFEST}")
    parts: dict[str, Any] = {}
    for name, cls in COMPONENTS.items():
        parts[name] = from_dict(cls, read_json(path / name / "config.json"), name)
    return ModelConfig(
        name=top.get("name", path.name),
        description=top.get("description", ""),
        tokenizer=from_dict(TokenizerConfig, top.get("tokenizer", {}), "tokenizer"),
        pipeline=from_dict(PipelineConfig, top.get("pipeline", {}), "pipeline"),
        notes=top.get("notes", {}),
        **parts,
    )


def read_native_weights(path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_safetensors(path / name / WEIGHTS)
