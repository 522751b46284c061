"""Diffusion math for training, in torch, on the pipeline's own noise schedule.

The schedule is ``schedulers.alphas_cumprod(pipeline_config)``, the table every sampler
and app uses, so a model trained here is sampled with exactly the numbers it learned.
With ``a = alphas_cumprod[t]``, ``alpha = sqrt(a)`` and ``sigma = sqrt(1 - a)``::

    x_t = alpha x0 + sigma eps          v = alpha eps - sigma x0        (v-prediction)
    x0  = alpha x_t - sigma v           eps = sigma x_t + alpha v
    DDIM (eta 0) from t to s:  x_s = alpha_s x0 + sigma_s eps

Timestep ``-1`` stands for the end of sampling, where DDIM lands on
``alphas_cumprod[0]`` (``set_alpha_to_one=False``), as the pipeline's sampler does.

``generate_latents`` runs the pipeline's numpy samplers on a whole batch, so evaluation
and the distillation pool see what ``Pipeline.__call__`` would produce image by image.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor, nn

from ..config import PipelineConfig
from ..schedulers import Sampler, alphas_cumprod


class Schedule:
    """``alphas_cumprod`` as a torch table with the v-prediction identities above."""

    def __init__(self, config: PipelineConfig, device: torch.device | str = "cpu") -> None:
        table = np.asarray(alphas_cumprod(config), dtype=np.float64)
        end = 1.0 if config.set_alpha_to_one else float(table[0])
        # Index 0 of the padded table is t = -1 (the end of sampling).
        self.table = torch.tensor(np.concatenate([[end], table]), dtype=torch.float32).to(device)
        self.num_train_timesteps = config.num_train_timesteps

    def alpha_sigma(self, t: Tensor, ndim: int = 4) -> tuple[Tensor, Tensor]:
        """``alpha_t, sigma_t`` for integer timesteps ``t`` (``-1`` allowed), broadcastable."""
        a = self.table[t.long() + 1].reshape(-1, *([1] * (ndim - 1)))
        return a.sqrt(), (1.0 - a).sqrt()

    def snr(self, t: Tensor) -> Tensor:
        a = self.table[t.long() + 1]
        return a / (1.0 - a)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x0.dim())
        return alpha * x0 + sigma * noise

    def v_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x0.dim())
        return alpha * noise - sigma * x0

    def x0_from_v(self, x_t: Tensor, v: Tensor, t: Tensor) -> Tensor:
        alpha, sigma = self.alpha_sigma(t, x_t.dim())
        return alpha * x_t - sigma * v

    def ddim_step(self, x_t: Tensor, v: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """One deterministic DDIM step from ``t`` to ``s`` for a v-prediction output."""
        alpha, sigma = self.alpha_sigma(t, x_t.dim())
        alpha_s, sigma_s = self.alpha_sigma(s, x_t.dim())
        x0 = alpha * x_t - sigma * v
        eps = sigma * x_t + alpha * v
        return alpha_s * x0 + sigma_s * eps


def step_grid(num_train_timesteps: int, base_steps: int, steps: int) -> list[int]:
    """The timesteps of ``steps``-step sampling, trailing (``T - 1`` first), plus the end ``-1``.

    The ``base_steps`` grid is the DDIM sampler's own trailing schedule (``T - 1 - k T / n``,
    each step going back ``T / n``), so a student trained on it is sampled by
    ``DDIMSampler(config, base_steps)`` with no mismatch. Each doubling inserts the
    (rounded down) midpoint of every interval, so the grid of ``2n`` steps contains the
    grid of ``n``: one student step spans exactly two teacher steps.
    """
    if num_train_timesteps % base_steps:
        raise ValueError(f"{base_steps} steps do not divide {num_train_timesteps} timesteps")
    stride = num_train_timesteps // base_steps
    grid = [num_train_timesteps - 1 - k * stride for k in range(base_steps)] + [-1]
    n = base_steps
    while n < steps:
        finer = []
        for a, b in itertools.pairwise(grid):
            finer += [a, (a + b) // 2]
        grid, n = [*finer, -1], 2 * n
    if n != steps:
        raise ValueError(f"{steps} steps is not {base_steps} times a power of two")
    return grid


def guided(unet: nn.Module, x: Tensor, t: Tensor, context: Tensor, uncond: Tensor, scale: float):
    """Classifier-free guidance, ``uncond + scale * (cond - uncond)``, in one batch of 2B."""
    if scale == 1.0:
        return unet(x, t, context)
    out = unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([uncond, context]))
    u, c = out.chunk(2)
    return u + scale * (c - u)


def initial_noise(seeds: list[int], latent_shape: tuple[int, ...]) -> np.ndarray:
    """Per-image starting noise, drawn exactly as ``Pipeline.initial_noise(seed)`` draws it."""
    return np.concatenate(
        [
            torch.randn((1, *latent_shape), generator=torch.Generator().manual_seed(s)).numpy()
            for s in seeds
        ]
    )


@torch.inference_mode()
def generate_latents(
    unet: nn.Module,
    sampler: Sampler,
    context: Tensor,
    uncond: Tensor | None,
    noise: np.ndarray,
    guidance_scale: float = 1.0,
    seeds: list[int] | None = None,
) -> np.ndarray:
    """The pipeline's sampling loop on a batch; ``uncond`` is one context row (or None).

    Re-noising samplers (multi-step one-step sampling) draw from one generator per image
    seeded ``seed + 1``, as the pipeline does, so row ``i`` equals the pipeline's image for
    ``seeds[i]``.
    """
    device = next(unet.parameters()).device
    batch = noise.shape[0]
    latents = noise.astype(np.float32) * np.float32(sampler.init_noise_sigma)
    context = context.to(device)
    use_cfg = guidance_scale > 1.0
    if use_cfg:
        if uncond is None:
            raise ValueError("guidance_scale > 1 needs the unconditional context")
        uncond_batch = uncond.to(device).expand(batch, -1, -1)
    generators = [torch.Generator().manual_seed(s + 1) for s in (seeds or [0] * batch)]
    for i, t in enumerate(sampler.timesteps):
        x = torch.from_numpy(sampler.scale_model_input(latents, i).astype(np.float32)).to(device)
        t_b = torch.full((batch,), float(t), device=device)
        if use_cfg:
            out = guided(unet, x, t_b, context, uncond_batch, guidance_scale)
        else:
            out = unet(x, t_b, context)
        fresh = None
        if sampler.needs_noise and i + 1 < len(sampler.timesteps):
            fresh = np.concatenate(
                [torch.randn((1, *latents.shape[1:]), generator=g).numpy() for g in generators]
            )
        latents = sampler.step(out.float().cpu().numpy(), i, latents, noise=fresh)
        latents = latents.astype(np.float32)
    return latents
