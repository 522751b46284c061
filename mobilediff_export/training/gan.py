"""Stage (d): DiffusionGAN fine-tuning to one step (UFOGen-style), generator and
discriminator both initialised from the distilled UNet.

::

    generator G (the student's UNet, v-prediction), one step from t_g = 999:
        x_tg ── G ── x0' = alpha x_tg - sigma v          (the OneStep sampler's rule)
    discriminator D (the same UNet's encoder half: conv_in, time MLP, down levels, mid
    block, with their cross-attention to the caption) + a head (GN, SiLU, 3x3, SiLU, 1x1)
    giving one logit per low-resolution patch:
        real:  D(alpha_t' x0  + sigma_t' n, t', caption)      t' ~ U{0..disc_max_timestep}
        fake:  D(alpha_t' x0' + sigma_t' n, t', caption)
    D loss:  softplus(-D(real)) + softplus(D(fake))               (non-saturating GAN)
    G loss:  adv_weight * softplus(-D(fake))
             + recon_weight   * |x0' - x0|^2        x_tg made from the data latent x0 (UFOGen)
             + distill_weight * |x0' - y|^2         y: the student's n-step sample from the
                                                    same noise (a pool drawn at the start)

Judging *noised* samples is UFOGen's (and DiffusionGAN's) device: the two distributions
overlap after noising, so the discriminator's gradient stays informative for a generator
that starts far from the data. The reconstruction terms anchor the generator to the
text, the adversarial term sharpens what one step of regression blurs.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..models.layers import timestep_embedding
from ..models.unet import UNet
from ..schedulers import make_sampler
from .config import Recipe
from .diffusion import generate_latents
from .loop import learning_rate, optimizer_step, randn, set_lr
from .outputs import save_model
from .runtime import Runtime, unwrap
from .upstream import FromUpstream
from .vae import batch_indices

STREAM = 4
POOL_STREAM = 40


class UNetDiscriminator(nn.Module):
    """The encoder half of a trained UNet plus a patch head: ``(x, t, context) -> logits``."""

    def __init__(self, unet: UNet) -> None:
        super().__init__()
        self.config = unet.config
        self.conv_in = copy.deepcopy(unet.conv_in)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.down_levels = copy.deepcopy(unet.down_levels)
        self.mid = copy.deepcopy(unet.mid)
        ch = unet.config.block_out_channels[-1]
        self.head = nn.Sequential(
            nn.GroupNorm(unet.config.norm_num_groups, ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(ch, 1, 1),
        )

    def forward(self, sample: Tensor, timestep: Tensor, context: Tensor) -> Tensor:
        cfg = self.config
        t = timestep.reshape(-1).expand(sample.shape[0]).float()
        features = timestep_embedding(
            t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift
        )
        temb = F.silu(self.time_embedding(features.to(sample.dtype)))
        h = self.conv_in(sample)
        for level in self.down_levels:
            _, h = level(h, temb, context)
        if self.mid is not None:
            h = self.mid(h, temb, context)
        return self.head(h).flatten(1)


class DiffusionGAN(FromUpstream):
    """Stage (d); see the module docstring."""

    name = "gan"

    def __init__(self, recipe: Recipe, run_dir: Path, runtime: Runtime) -> None:
        self.recipe, self.run_dir, self.runtime = recipe, run_dir, runtime
        self.loop = recipe.gan
        self.student = self.load_upstream(recipe, run_dir, runtime, "distill")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.data.seed + 4)
            disc = UNetDiscriminator(self.student)
        self.generator = runtime.wrap(copy.deepcopy(self.student).requires_grad_(True).train())
        self.discriminator = runtime.wrap(disc.requires_grad_(True).train())
        self.opt_g = torch.optim.AdamW(
            self.generator.parameters(),
            lr=self.loop.lr,
            betas=(0.0, 0.99),
            weight_decay=self.loop.weight_decay,
        )
        self.opt_d = torch.optim.AdamW(
            self.discriminator.parameters(),
            lr=self.loop.lr_d,
            betas=(0.0, 0.99),
            weight_decay=self.loop.weight_decay,
        )
        self.scaler_g = runtime.grad_scaler()
        self.scaler_d = runtime.grad_scaler()
        self.pool: dict[str, Tensor] | None = None

    @property
    def total_steps(self) -> int:
        return self.loop.steps

    # --- the distillation pool ------------------------------------------------------------

    def _make_pool(self) -> dict[str, Tensor]:
        """``distill_pool`` (noise, student sample, caption ids) triples, this rank's share."""
        rt, n = self.runtime, self.loop.distill_pool
        per = -(-n // rt.world_size)
        indices = range(rt.rank * per, min(n, (rt.rank + 1) * per))
        sampler = make_sampler(self.config.pipeline)  # the student's DDIM schedule
        noise_all, ids_all, y_all = [], [], []
        if rt.is_main and rt.progress:
            print(f"[gan] drawing {n} student samples for the distillation pool", flush=True)
        for start in range(indices.start, indices.stop, 128):
            chunk = range(start, min(indices.stop, start + 128))
            scenes = self.data.scenes("train", chunk, POOL_STREAM)
            ids = torch.from_numpy(self.tokenizer.tokenize([s.caption for s in scenes]))
            with torch.no_grad():
                context = self.text_encoder(ids.to(rt.device))
            seeds = [10_000_000 + i for i in chunk]
            noise = _noise(seeds, self.config.latent_shape)
            y = generate_latents(self.student, sampler, context, None, noise)
            noise_all.append(torch.from_numpy(noise))
            ids_all.append(ids)
            y_all.append(torch.from_numpy(y))
        return {"noise": torch.cat(noise_all), "ids": torch.cat(ids_all), "y": torch.cat(y_all)}

    # --- one step -------------------------------------------------------------------------

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        rt, loop, sch = self.runtime, self.loop, self.schedule
        if self.pool is None and loop.distill_weight > 0:
            self.pool = self._make_pool()
        per = rt.per_rank(loop.batch_size)
        images, captions, _ = self.data.batch(
            "train", batch_indices(step, loop.batch_size, rt), STREAM
        )
        ids = torch.from_numpy(self.tokenizer.tokenize(captions)).to(rt.device)
        x0 = self.latents(images)
        with torch.no_grad():
            context = self.text_encoder(ids)

        # Generator inputs: from the pool (distillation) and/or from the data (reconstruction).
        gen_x, gen_t, gen_ctx, targets = [], [], [], []
        if loop.distill_weight > 0:
            assert self.pool is not None
            pick = torch.randint(0, self.pool["noise"].shape[0], (per,), generator=generator)
            with torch.no_grad():
                pool_ctx = self.text_encoder(self.pool["ids"][pick].to(rt.device))
            last = self.config.pipeline.num_train_timesteps - 1
            gen_x.append(self.pool["noise"][pick].to(rt.device))  # pure noise at t = T - 1
            gen_t.append(torch.full((per,), last, dtype=torch.long, device=rt.device))
            gen_ctx.append(pool_ctx)
            targets.append(("distill", self.pool["y"][pick].to(rt.device)))
        if loop.recon_weight > 0 or loop.distill_weight == 0:
            choice = torch.randint(0, len(loop.generator_timesteps), (per,), generator=generator)
            t_g = torch.tensor(loop.generator_timesteps, dtype=torch.long)[choice].to(rt.device)
            gen_x.append(sch.add_noise(x0, randn(tuple(x0.shape), generator, rt.device), t_g))
            gen_t.append(t_g)
            gen_ctx.append(context)
            targets.append(("recon", x0))
        x_g, t_g, ctx_g = torch.cat(gen_x), torch.cat(gen_t), torch.cat(gen_ctx)

        with rt.autocast():
            v = self.generator(x_g, t_g.float(), ctx_g)
        fake = sch.x0_from_v(x_g, v.float(), t_g)

        # Discriminator: real data latents vs generated ones, both noised to a random t'.
        n_fake = fake.shape[0]
        t_real = torch.randint(0, loop.disc_max_timestep + 1, (per,), generator=generator)
        t_fake = torch.randint(0, loop.disc_max_timestep + 1, (n_fake,), generator=generator)
        t_d = torch.cat([t_real, t_fake]).to(rt.device)
        noise_d = randn((per + n_fake, *x0.shape[1:]), generator, rt.device)
        ctx_d = torch.cat([context, ctx_g])
        real_noisy = sch.add_noise(x0, noise_d[:per], t_d[:per])
        fake_noisy = sch.add_noise(fake.detach(), noise_d[per:], t_d[per:])
        set_lr(self.opt_d, learning_rate(replace(loop, lr=loop.lr_d), step))
        with rt.autocast():
            logits = self.discriminator(torch.cat([real_noisy, fake_noisy]), t_d.float(), ctx_d)
        logits = logits.float()
        d_real, d_fake = logits[:per], logits[per:]
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        optimizer_step(
            loss_d, self.opt_d, list(self.discriminator.parameters()), loop.grad_clip, self.scaler_d
        )

        # Generator: fool the (updated) discriminator, stay near the targets.
        fake_noisy = sch.add_noise(fake, noise_d[per:], t_d[per:])
        with rt.autocast():
            g_logits = self.discriminator(fake_noisy, t_d[per:].float(), ctx_g).float()
        adv = F.softplus(-g_logits).mean()
        loss_g = loop.adv_weight * adv
        metrics: dict[str, float] = {}
        offset = 0
        for kind, target in targets:
            part = fake[offset : offset + target.shape[0]]
            offset += target.shape[0]
            err = (part - target).pow(2).mean()
            weight = loop.distill_weight if kind == "distill" else max(loop.recon_weight, 1e-12)
            loss_g = loss_g + weight * err
            metrics[kind] = err.item()
        set_lr(self.opt_g, learning_rate(loop, step))
        optimizer_step(
            loss_g, self.opt_g, list(self.generator.parameters()), loop.grad_clip, self.scaler_g
        )
        return {
            "d": loss_d.item(),
            "adv": adv.item(),
            **metrics,
            "d_real": d_real.mean().item(),
            "d_fake": d_fake.mean().item(),
        }

    # --- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "generator": unwrap(self.generator).state_dict(),
            "discriminator": unwrap(self.discriminator).state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
        }
        if self.pool is not None and self.runtime.world_size == 1:
            state["pool"] = self.pool
        for name in ("scaler_g", "scaler_d"):
            scaler = getattr(self, name)
            if scaler is not None:
                state[name] = scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.generator).load_state_dict(state["generator"])
        unwrap(self.discriminator).load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if "pool" in state:
            self.pool = state["pool"]
        for name in ("scaler_g", "scaler_d"):
            scaler = getattr(self, name)
            if scaler is not None and name in state:
                scaler.load_state_dict(state[name])

    def finish(self) -> dict[str, Any]:
        out = self.run_dir / self.name / "model"
        if self.runtime.is_main:
            modules = {
                "text_encoder": self.text_encoder.cpu(),
                "unet": copy.deepcopy(unwrap(self.generator)).cpu().eval(),
                "vae_decoder": self.vae_decoder,
            }
            save_model(out, onestep_config(self.recipe, self.config), modules)
        return {"model": str(out)}


def onestep_config(recipe: Recipe, student: ModelConfig) -> ModelConfig:
    """The DiffusionGAN model: the one-step sampler from pure noise at ``T - 1``."""
    notes = dict(recipe.model.notes)
    notes["pipeline"] = (
        "one step with the 'onestep' sampler from pure noise at t=999, no guidance: the "
        "DiffusionGAN (UFOGen-style) fine-tune of the distilled 8-step student"
    )
    return replace(
        student,
        name=f"{recipe.model.name}-1step",
        description=f"{recipe.model.description} (one step, DiffusionGAN)".strip(),
        pipeline=replace(
            student.pipeline, sampler="onestep", num_inference_steps=1, guidance_scale=1.0
        ),
        notes=notes,
    )


def _noise(seeds: list[int], shape: tuple[int, ...]) -> np.ndarray:
    from .diffusion import initial_noise

    return initial_noise(seeds, shape)
