"""Stage (b): the text encoder and the UNet, trained together from scratch as the teacher.

::

    caption ──(dropped to "" with p = cond_dropout)── tokenizer ── CLIPTextEncoder ─┐ context
    image ── VAE encoder (frozen) ── x0 = mean * scale                              │
    t ~ U{0..T-1}, eps ~ N(0, I):  x_t = alpha_t x0 + sigma_t eps ── UNet(x_t, t, ·) ┴─> v_hat
    loss = w(t) |v_hat - (alpha_t eps - sigma_t x0)|^2,  w = min(SNR, gamma) / (SNR + 1)

v-prediction (what progressive distillation needs), Min-SNR weighting for faster
convergence, and an EMA of both networks' weights, which is what the teacher ships.
Dropping captions to the empty prompt teaches the unconditional model that classifier-
free guidance needs: the pipeline's negative prompt is ``""``, so it is the same input.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..models.text_encoder import CLIPTextEncoder
from ..models.unet import UNet
from .config import Recipe
from .diffusion import Schedule
from .loop import EMA, adamw, learning_rate, optimizer_step, randn, set_lr
from .outputs import save_model, tokenizer_for
from .runtime import Runtime, unwrap
from .vae import LatentEncoder, batch_indices, load_decoder, make_data

STREAM = 2


class TextToImage(nn.Module):
    """The text encoder and the UNet as one module: ``forward(ids, x_t, t) -> v``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.text_encoder = CLIPTextEncoder(config.text_encoder)
        self.unet = UNet(config.unet)
        # CLIP's initialisation for the embeddings (torch's default N(0, 1) swamps the
        # residual stream of a small transformer).
        nn.init.normal_(self.text_encoder.token_embedding.weight, std=0.02)
        nn.init.normal_(self.text_encoder.position_embedding.weight, std=0.01)

    def forward(self, ids: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(x_t, t, self.text_encoder(ids))


class TeacherTraining:
    """Stage (b); see the module docstring."""

    name = "teacher"

    def __init__(self, recipe: Recipe, run_dir: Path, runtime: Runtime) -> None:
        self.recipe, self.run_dir, self.runtime = recipe, run_dir, runtime
        self.loop = recipe.teacher
        self.data = make_data(recipe)
        self.tokenizer = tokenizer_for(recipe.model)
        self.latents = LatentEncoder.load(run_dir, recipe.model.vae_decoder, runtime.device)
        self.schedule = Schedule(recipe.model.pipeline, runtime.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.data.seed + 1)
            model = TextToImage(recipe.model)
        self.ema = EMA(model, self.loop.ema_decay)
        self.model = runtime.wrap(model)
        self.optimizer = adamw(self.model, self.loop)
        self.scaler = runtime.grad_scaler()

    @property
    def total_steps(self) -> int:
        return self.loop.steps

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        rt, loop = self.runtime, self.loop
        images, captions, _ = self.data.batch(
            "train", batch_indices(step, loop.batch_size, rt), STREAM
        )
        batch = len(captions)
        drop = torch.rand(batch, generator=generator) < loop.cond_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        ids = torch.from_numpy(self.tokenizer.tokenize(captions)).to(rt.device)
        x0 = self.latents(images)
        t = torch.randint(0, self.schedule.num_train_timesteps, (batch,), generator=generator)
        t = t.to(rt.device)
        noise = randn(tuple(x0.shape), generator, rt.device)
        x_t = self.schedule.add_noise(x0, noise, t)
        target = self.schedule.v_target(x0, noise, t)

        set_lr(self.optimizer, learning_rate(loop, step))
        with rt.autocast():
            v = self.model(ids, x_t, t.float())
        per_sample = (v.float() - target).pow(2).mean(dim=(1, 2, 3))
        weight = torch.ones_like(per_sample)
        if loop.min_snr_gamma > 0:
            snr = self.schedule.snr(t)
            weight = snr.clamp(max=loop.min_snr_gamma) / (snr + 1.0)
        loss = (weight * per_sample).mean()
        norm = optimizer_step(
            loss, self.optimizer, list(self.model.parameters()), loop.grad_clip, self.scaler
        )
        self.ema.update(unwrap(self.model), step)
        return {"loss": loss.item(), "mse": per_sample.mean().item(), "grad": norm}

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": unwrap(self.model).state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def finish(self) -> dict[str, Any]:
        model: TextToImage = self.ema.module  # type: ignore[assignment]
        config = teacher_config(self.recipe, self.latents.scale)
        if self.runtime.is_main:
            modules = {
                "text_encoder": model.text_encoder,
                "unet": model.unet,
                "vae_decoder": load_decoder(self.run_dir, self.recipe.model.vae_decoder),
            }
            save_model(self.run_dir / self.name / "model", config, modules)
        return {"model": str(self.run_dir / self.name / "model"), "ema_decay": self.loop.ema_decay}


def teacher_config(recipe: Recipe, scale: float) -> ModelConfig:
    """The teacher as a model folder: guided DDIM with ``teacher.sample_steps`` steps."""
    model = recipe.model
    steps = recipe.teacher.sample_steps
    return replace(
        model,
        name=f"{recipe.name}-teacher",
        description=f"{recipe.name} teacher (guided, {steps} steps)",
        pipeline=replace(
            model.pipeline,
            sampler="ddim",
            num_inference_steps=steps,
            guidance_scale=recipe.teacher.guidance_scale,
            vae_scaling_factor=scale,
        ),
        notes={"stage": "teacher (recipe stage b): text encoder + UNet trained jointly, EMA"},
    )
