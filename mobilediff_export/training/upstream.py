"""What the distillation and DiffusionGAN stages start from: a finished stage's model.

Both read a trained model folder (the teacher's, the student's), keep its text encoder
and UNet on the training device, and train against latents of the same data set through
the stage (a) encoder, on the model's own noise schedule.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoints import load_model
from .config import Recipe
from .diffusion import Schedule
from .runtime import Runtime
from .vae import LatentEncoder, make_data


class FromUpstream:
    """Mixin: ``load_upstream`` sets the shared parts and returns the upstream UNet."""

    def load_upstream(
        self, recipe: Recipe, run_dir: Path, runtime: Runtime, stage: str
    ) -> nn.Module:
        loaded = load_model(run_dir / stage / "model")
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.text_encoder: nn.Module = loaded.modules["text_encoder"].to(runtime.device)
        self.vae_decoder: nn.Module = loaded.modules["vae_decoder"]
        self.data = make_data(recipe)
        self.latents = LatentEncoder.load(run_dir, recipe.model.vae_decoder, runtime.device)
        self.schedule = Schedule(self.config.pipeline, runtime.device)
        return loaded.modules["unet"].to(runtime.device)
