"""Decoder output to pixels: the one rule the PyTorch pipeline, the bundle runtime and the
apps share (the manifest's ``pipeline.output.to_uint8``)."""

from __future__ import annotations

import numpy as np


def to_uint8_image(decoded: np.ndarray) -> np.ndarray:
    """Decoder output in [-1, 1], (B, 3, H, W) -> uint8 RGB (B, H, W, 3), as diffusers rounds."""
    unit = np.clip(decoded / 2.0 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    return (unit * 255.0).round().astype(np.uint8)
