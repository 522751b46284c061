"""What the stages write: weights, native model folders and images.

Stage weights are safetensors (never pickles); a diffusion stage's result is a complete
model folder in our native format (``checkpoints.save_native``), loadable by
``load_pipeline`` like any other. ``half=True`` stores the weights as float16, halving
the folder; ``load_model`` reads them back into float32 modules.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save
from torch import Tensor, nn

from ..checkpoints import models_dir, save_native
from ..config import ModelConfig, TokenizerConfig
from ..fileio import atomic_write_bytes
from ..tokenizer import CLIPTokenizer


def save_safetensors(path: Path, state: dict[str, Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))


def to_uint8(image: Tensor) -> np.ndarray:
    """One decoded image ``(3, H, W)`` in [-1, 1] -> uint8 RGB ``(H, W, 3)``, as the pipeline."""
    unit = (image.detach().float().cpu().clamp(-1, 1) / 2 + 0.5).permute(1, 2, 0)
    return (unit * 255.0).round().to(torch.uint8).numpy()


def tokenizer_for(config: ModelConfig) -> CLIPTokenizer:
    """The real CLIP vocabulary in ``models/tokenizer`` (see scripts/fetch_clip_vocab.py)."""
    return _tokenizer(str(models_dir() / "tokenizer"), config.tokenizer)


@functools.lru_cache(maxsize=4)
def _tokenizer(folder: str, config: TokenizerConfig) -> CLIPTokenizer:
    return CLIPTokenizer.from_dir(folder, config)  # parsing 49k merges takes a moment


def save_model(
    out_dir: Path,
    config: ModelConfig,
    modules: dict[str, nn.Module],
    half: bool = False,
    force: bool = True,
    **pipeline_changes: object,
) -> Path:
    """A native model folder from trained modules, with pipeline settings replaced."""
    if pipeline_changes:
        config = replace(config, pipeline=replace(config.pipeline, **pipeline_changes))
    if half:
        modules = {k: copy.deepcopy(m).half() for k, m in modules.items()}
    return save_native(out_dir, config, modules, tokenizer_for(config), force=force)
