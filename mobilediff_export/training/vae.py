"""Stage (a): a small autoencoder whose decoder is what ships.

The encoder is the other half of an ``AutoencoderKL``, built from the decoder's own
config (as diffusers builds both halves from one), so the trained decoder is an ordinary
``VAEDecoder`` and loads anywhere one does::

    image [B,3,S,S]
      │ conv_in (3x3) ─> c[0]
    down_levels[i]: layers_per_block x ResnetBlock (c[i-1] -> c[i]) ─ Downsample (not last)
      │ mid: ResnetBlock ─ SpatialSelfAttention? ─ ResnetBlock
      │ norm_out ─ SiLU ─ conv_out (3x3) ─> 2 * latent channels
    quant_conv (1x1) ─> mean, logvar                          [B,latent,S/f,S/f] each

Differences from diffusers' encoder: the downsampling convolution pads symmetrically
(``layers.Downsample``), since no diffusers encoder weights are ever loaded into it.

Training: L1 + L2 reconstruction of the posterior sample, ``edge_weight`` times an L1 on
the image gradients (sharp edges), plus ``kl_weight`` times the KL divergence to a unit
Gaussian (tiny, as in Stable Diffusion: the latent only has to
stay smooth). Afterwards the latent scale (the pipeline's ``vae_scaling_factor``) is set
to one over the standard deviation of the posterior means, and the diffusion stages
train on ``mean * scale``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import VAEDecoderConfig
from ..fileio import atomic_write_text
from ..models.layers import Downsample, ResnetBlock
from ..models.vae_decoder import VAE_NORM_EPS, VAEDecoder, VAEMidBlock
from .config import Recipe
from .data import SyntheticShapes, contact_sheet
from .loop import adamw, learning_rate, optimizer_step, randn, set_lr
from .outputs import save_safetensors, to_uint8
from .runtime import Runtime, unwrap

STREAM = 1  # the data stream this stage draws its scenes from


class VAEDownLevel(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, num_layers: int, downsample: bool, cfg: VAEDecoderConfig
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(
                in_ch if k == 0 else out_ch,
                out_ch,
                temb_dim=None,
                groups=cfg.norm_num_groups,
                eps=VAE_NORM_EPS,
                separable=cfg.separable_conv,
            )
            for k in range(num_layers)
        )
        self.downsample = Downsample(out_ch) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsample(x) if self.downsample is not None else x


class VAEEncoder(nn.Module):
    """``forward(image [B,3,S,S] in [-1, 1]) -> (mean, logvar)``; see the module docstring."""

    def __init__(self, config: VAEDecoderConfig, in_channels: int = 3) -> None:
        super().__init__()
        self.config = config
        channels = config.block_out_channels
        levels = len(channels)
        num_layers = max(config.layers_per_block, 1)
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down_levels = nn.ModuleList(
            VAEDownLevel(channels[max(i - 1, 0)], channels[i], num_layers, i < levels - 1, config)
            for i in range(levels)
        )
        self.mid = VAEMidBlock(channels[-1], config)
        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels[-1], eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], 2 * config.latent_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv_in(image)
        for level in self.down_levels:
            h = level(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        mean, logvar = self.quant_conv(h).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class Autoencoder(nn.Module):
    """Encoder + decoder, one module so DDP sees one set of parameters."""

    def __init__(self, config: VAEDecoderConfig) -> None:
        super().__init__()
        self.encoder = VAEEncoder(config)
        self.decoder = VAEDecoder(config)

    def forward(self, image: Tensor, noise: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encoder(image)
        latent = mean + torch.exp(0.5 * logvar) * noise
        return self.decoder(latent), mean, logvar


class LatentEncoder:
    """The trained encoder as the later stages use it: images -> scaled latents."""

    def __init__(self, encoder: VAEEncoder, scale: float, device: torch.device) -> None:
        self.encoder = encoder.to(device).eval().requires_grad_(False)
        self.scale = scale
        self.device = device

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Tensor:
        mean, _ = self.encoder(torch.from_numpy(images).to(self.device))
        return mean * self.scale

    @classmethod
    def load(cls, run_dir: Path, config: VAEDecoderConfig, device: torch.device) -> LatentEncoder:
        encoder = VAEEncoder(config)
        encoder.load_state_dict(load_file(str(run_dir / "vae" / "encoder.safetensors")))
        meta = json.loads((run_dir / "vae" / "vae.json").read_text(encoding="utf-8"))
        return cls(encoder, float(meta["scaling_factor"]), device)


def load_decoder(run_dir: Path, config: VAEDecoderConfig) -> VAEDecoder:
    decoder = VAEDecoder(config)
    decoder.load_state_dict(load_file(str(run_dir / "vae" / "decoder.safetensors")))
    return decoder.eval().requires_grad_(False)


def make_data(recipe: Recipe) -> SyntheticShapes:
    d = recipe.data
    return SyntheticShapes(
        image_size=recipe.image_size,
        seed=d.seed,
        holdout_fraction=d.holdout_fraction,
        kind_weights=tuple(d.kind_weights),  # type: ignore[arg-type]
        colour_jitter=d.colour_jitter,
        supersample=d.supersample,
    )


def batch_indices(step: int, batch_size: int, runtime: Runtime) -> range:
    """This process's scene indices for ``step``: disjoint across steps and processes."""
    per = runtime.per_rank(batch_size)
    start = step * batch_size + runtime.rank * per
    return range(start, start + per)


def _gradient_l1(a: Tensor, b: Tensor) -> Tensor:
    """L1 between the horizontal and vertical pixel differences: rewards sharp edges, which
    plain L1 / L2 reconstruction blurs."""
    dx = (a[..., :, 1:] - a[..., :, :-1]) - (b[..., :, 1:] - b[..., :, :-1])
    dy = (a[..., 1:, :] - a[..., :-1, :]) - (b[..., 1:, :] - b[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


class VAETraining:
    """Stage (a); see the module docstring."""

    name = "vae"

    def __init__(self, recipe: Recipe, run_dir: Path, runtime: Runtime) -> None:
        self.recipe, self.run_dir, self.runtime = recipe, run_dir, runtime
        self.loop = recipe.vae
        self.data = make_data(recipe)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.data.seed)
            model = Autoencoder(recipe.model.vae_decoder)
        self.model = runtime.wrap(model)
        self.optimizer = adamw(self.model, self.loop)
        self.scaler = runtime.grad_scaler()

    @property
    def total_steps(self) -> int:
        return self.loop.steps

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        rt = self.runtime
        images, _, _ = self.data.batch(
            "train", batch_indices(step, self.loop.batch_size, rt), STREAM
        )
        x = torch.from_numpy(images).to(rt.device)
        size = x.shape[-1] // self.recipe.model.vae_decoder.upscale_factor
        noise = randn(
            (x.shape[0], self.recipe.model.vae_decoder.latent_channels, size, size),
            generator,
            rt.device,
        )
        set_lr(self.optimizer, learning_rate(self.loop, step))
        with rt.autocast():
            recon, mean, logvar = self.model(x, noise)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        l2 = (recon - x).pow(2).mean()
        edges = _gradient_l1(recon, x)
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).mean()
        loss = l1 + l2 + self.loop.edge_weight * edges + self.loop.kl_weight * kl
        optimizer_step(
            loss, self.optimizer, list(self.model.parameters()), self.loop.grad_clip, self.scaler
        )
        return {"loss": loss.item(), "l1": l1.item(), "edges": edges.item(), "kl": kl.item()}

    def state_dict(self) -> dict[str, Any]:
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    @torch.no_grad()
    def finish(self) -> dict[str, Any]:
        model: Autoencoder = unwrap(self.model).eval()  # type: ignore[assignment]
        n = self.loop.scale_samples
        means = []
        for start in range(0, n, 64):
            images, _, _ = self.data.batch(
                "train", range(10**9 + start, 10**9 + min(n, start + 64)), STREAM
            )
            means.append(model.encoder(torch.from_numpy(images).to(self.runtime.device))[0].cpu())
        std = float(torch.cat(means).std())
        scale = 1.0 / std
        # Reconstructions of held-out images, for the record (top row real, bottom decoded).
        images, _, _ = self.data.batch("val", range(16), STREAM)
        x = torch.from_numpy(images).to(self.runtime.device)
        recon = model.decoder(model.encoder(x)[0]).clamp(-1, 1)
        mse = float((recon - x).pow(2).mean())
        out = self.run_dir / "vae"
        if self.runtime.is_main:
            save_safetensors(out / "encoder.safetensors", model.encoder.state_dict())
            save_safetensors(out / "decoder.safetensors", model.decoder.state_dict())
            meta = {"scaling_factor": scale, "latent_std": std, "val_mse": mse}
            atomic_write_text(out / "vae.json", json.dumps(meta, indent=2) + "\n")
            pair = [to_uint8(t) for t in torch.cat([x, recon])]
            contact_sheet(pair, scale=4, columns=16).save(out / "reconstructions.png")
        return {"scaling_factor": scale, "val_mse": mse}
