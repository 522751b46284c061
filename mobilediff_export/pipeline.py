"""The PyTorch reference pipeline: prompt -> tokens -> context -> sampler loop -> decoder -> image.

Every exported bundle is checked against this. It follows Stable Diffusion's sampling
loop step for step, so a diffusers checkpoint imported here gives diffusers' picture:

```
prompt ──tokenizer──> ids (1, 77) ──text_encoder──> context (1, 77, D)
   [guidance on: "" as well, batch 2: uncond first, then cond]
latents = randn(seed) * init_noise_sigma                              (1, 4, h, w)
for i, t in enumerate(sampler.timesteps):
    x   = sampler.scale_model_input(latents, i)
    out = unet(x, t, context)                [guidance: uncond + g * (cond - uncond)]
    latents = sampler.step(out, i, latents)
image = vae_decoder(latents / vae_scaling_factor) -> [-1, 1] -> [0, 1] -> uint8 RGB
```
The sampler runs in numpy (as the phone apps run it); the networks run in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from .checkpoints import LoadedModel, load_model
from .config import ModelConfig
from .errors import ConfigError
from .images import to_uint8_image
from .noise import seeded_noise
from .progress import progress_bar
from .schedulers import Sampler, make_sampler
from .tokenizer import CLIPTokenizer


@dataclass
class Pipeline:
    """A loaded model ready to make images; see the module docstring for the loop."""

    config: ModelConfig
    text_encoder: nn.Module
    unet: nn.Module
    vae_decoder: nn.Module
    tokenizer: CLIPTokenizer
    source: str = ""
    source_sha256: str | None = None

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> Pipeline:
        return cls(
            config=loaded.config,
            tokenizer=loaded.tokenizer,
            source=loaded.source,
            source_sha256=loaded.source_sha256,
            **loaded.modules,
        )

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "unet": self.unet,
            "vae_decoder": self.vae_decoder,
        }

    @torch.inference_mode()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.from_numpy(self.tokenizer.tokenize(prompts))
        return self.text_encoder(ids)

    def initial_noise(self, seed: int) -> np.ndarray:
        """Unit Gaussian latents, as ``torch.randn`` draws them from a seeded CPU generator."""
        return seeded_noise((1, *self.config.latent_shape), seed)

    def make_sampler(
        self,
        steps: int | None = None,
        sampler: str | None = None,
        timesteps: list[int] | None = None,
    ) -> Sampler:
        pipeline_config = self.config.pipeline
        if sampler is not None and sampler != pipeline_config.sampler:
            pipeline_config = replace(pipeline_config, sampler=sampler)
        if timesteps is None and steps is None:
            steps = pipeline_config.num_inference_steps
        return make_sampler(pipeline_config, num_inference_steps=steps, timesteps=timesteps)

    @torch.inference_mode()
    def denoise(
        self,
        context: torch.Tensor,
        latents: np.ndarray,
        sampler: Sampler,
        guidance_scale: float,
        seed: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        """The sampler loop; ``context`` is (2, S, D) uncond+cond when guidance is on."""
        guided = guidance_scale > 1.0
        renoise = torch.Generator().manual_seed(seed + 1)
        latents = latents.astype(np.float32)
        steps = list(enumerate(sampler.timesteps))
        for i, t in progress_bar(steps, desc="denoise", enabled=progress):
            x = sampler.scale_model_input(latents, i).astype(np.float32)
            x_t = torch.from_numpy(np.concatenate([x, x]) if guided else x)
            t_t = torch.full((x_t.shape[0],), float(t), dtype=torch.float32)
            out = self.unet(x_t, t_t, context).numpy()
            if guided:
                uncond, cond = out[:1], out[1:]
                out = uncond + guidance_scale * (cond - uncond)
            noise = None
            if sampler.needs_noise and i + 1 < len(sampler.timesteps):
                noise = torch.randn(latents.shape, generator=renoise).numpy()
            latents = sampler.step(out, i, latents, noise=noise).astype(np.float32)
        return latents

    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> decoder output in [-1, 1] (unclamped), (B, 3, H, W) float32."""
        scaled = torch.from_numpy(latents / self.config.pipeline.vae_scaling_factor)
        return self.vae_decoder(scaled.float()).numpy()

    def __call__(
        self,
        prompt: str,
        steps: int | None = None,
        seed: int = 0,
        guidance_scale: float | None = None,
        sampler: str | None = None,
        timesteps: list[int] | None = None,
        negative_prompt: str = "",
        latents: np.ndarray | None = None,
        output_type: Literal["pil", "np"] = "pil",
        progress: bool = False,
    ) -> Image.Image | np.ndarray:
        """Make one image. ``output_type="np"`` gives float RGB in [0, 1], (H, W, 3)."""
        if guidance_scale is None:
            guidance_scale = self.config.pipeline.guidance_scale
        chosen = self.make_sampler(steps, sampler, timesteps)
        prompts = [negative_prompt, prompt] if guidance_scale > 1.0 else [prompt]
        context = self.encode_prompt(prompts)
        if latents is None:
            latents = self.initial_noise(seed)
        expected = (1, *self.config.latent_shape)
        if tuple(latents.shape) != expected:
            raise ConfigError(f"latents must have shape {expected}, got {tuple(latents.shape)}")
        latents = np.asarray(latents, dtype=np.float32) * np.float32(chosen.init_noise_sigma)
        latents = self.denoise(context, latents, chosen, guidance_scale, seed, progress)
        decoded = self.decode(latents)
        if output_type == "np":
            return np.clip(decoded / 2.0 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)[0]
        return Image.fromarray(to_uint8_image(decoded)[0])


def load_pipeline(path_or_name: str | Path, seed: int = 0) -> Pipeline:
    """Load a model by config name (``models/``), native folder or diffusers folder."""
    return Pipeline.from_loaded(load_model(path_or_name, seed=seed))
