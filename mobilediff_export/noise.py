"""Seeded starting noise, drawn as ``torch.randn`` draws it from a seeded CPU generator.

Python (PyTorch pipeline and bundle runtime), Kotlin and Swift all follow this rule, so a
seed gives the same starting latents everywhere (the apps port torch's generator).
"""

from __future__ import annotations

import numpy as np


def seeded_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Unit Gaussian float32 noise of ``shape`` from ``torch.Generator().manual_seed(seed)``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).numpy()
