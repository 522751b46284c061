"""Stage (c): progressive distillation to ``student_steps`` DDIM steps, guidance folded in.

Salimans & Ho (2022), with the guided teacher of Meng et al. (2023) in the first round.
Round ``r`` trains a student on the grid of ``n`` steps against a teacher on the grid of
``2n`` (``diffusion.step_grid``: the finer grid has every coarse timestep)::

    x0 (data latent), eps:  x_t = alpha_t x0 + sigma_t eps       t = grid_n[k]
    teacher, two DDIM steps:  t -> m = grid_2n[2k+1] -> s = grid_n[k+1]   => x_s
        round 0: the guided teacher, v = v_u + w (v_c - v_u)   (w = teacher.guidance_scale)
        later:   the previous round's student, unguided
    target x0~ such that ONE DDIM step t -> s lands on x_s:
        x0~ = (x_s - (sigma_s / sigma_t) x_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)
    loss = max(SNR_t, 1) |x0_hat(student) - x0~|^2                  ("truncated SNR")

Each round starts from the previous student (the first from the teacher) and runs
``distill.round_steps[r]`` steps (warm-up and cosine decay per round); the last student
is sampled by the pipeline's DDIM sampler with ``student_steps`` trailing steps and no
classifier-free guidance.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .config import Recipe
from .diffusion import guided, step_grid
from .loop import EMA, adamw, learning_rate, optimizer_step, randn, set_lr
from .outputs import save_model
from .runtime import Runtime, unwrap
from .upstream import FromUpstream
from .vae import batch_indices

STREAM = 3


class Distillation(FromUpstream):
    """Stage (c); see the module docstring."""

    name = "distill"

    def __init__(self, recipe: Recipe, run_dir: Path, runtime: Runtime) -> None:
        self.recipe, self.run_dir, self.runtime = recipe, run_dir, runtime
        self.loop = recipe.distill
        self.teacher = self.load_upstream(recipe, run_dir, runtime, "teacher")
        student = copy.deepcopy(self.teacher).requires_grad_(True).train()
        self.ema = EMA(student, self.loop.ema_decay) if self.loop.ema_decay > 0 else None
        self.student = runtime.wrap(student)
        self.optimizer = adamw(self.student, self.loop)
        self.scaler = runtime.grad_scaler()
        self.round_teacher: nn.Module | None = None  # the previous round's student
        with torch.no_grad():
            self.uncond = self.text_encoder(
                torch.from_numpy(self.tokenizer.tokenize([""])).to(runtime.device)
            )
        T = self.config.pipeline.num_train_timesteps
        base = self.loop.student_steps
        self.grids = [
            step_grid(T, base, self.loop.start_steps >> r) for r in range(self.loop.rounds + 1)
        ]

    @property
    def total_steps(self) -> int:
        return sum(self.loop.steps_per_round)

    def _teacher_v(self, round_: int, x: Tensor, t: Tensor, context: Tensor) -> Tensor:
        if round_ == 0:
            uncond = self.uncond.expand(x.shape[0], -1, -1)
            return guided(
                self.teacher, x, t.float(), context, uncond, self.recipe.teacher.guidance_scale
            )
        assert self.round_teacher is not None
        return self.round_teacher(x, t.float(), context)

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        rt, loop = self.runtime, self.loop
        round_, local = loop.round_of(step)
        if local == 0 and round_ > 0:  # a new round: the student so far becomes the teacher
            self.round_teacher = copy.deepcopy(unwrap(self.student)).eval().requires_grad_(False)
        fine, coarse = self.grids[round_], self.grids[round_ + 1]
        images, captions, _ = self.data.batch(
            "train", batch_indices(step, loop.batch_size, rt), STREAM
        )
        batch = len(captions)
        ids = torch.from_numpy(self.tokenizer.tokenize(captions)).to(rt.device)
        x0 = self.latents(images)
        k = torch.randint(0, len(coarse) - 1, (batch,), generator=generator)
        t = torch.tensor(coarse[:-1], dtype=torch.long)[k].to(rt.device)
        m = torch.tensor(fine[:-1], dtype=torch.long)[2 * k + 1].to(rt.device)
        s = torch.tensor(coarse[1:], dtype=torch.long)[k].to(rt.device)
        noise = randn(tuple(x0.shape), generator, rt.device)
        x_t = self.schedule.add_noise(x0, noise, t)

        sch = self.schedule
        with torch.no_grad(), rt.autocast():
            context = self.text_encoder(ids)
            x_m = sch.ddim_step(x_t, self._teacher_v(round_, x_t, t, context).float(), t, m)
            x_s = sch.ddim_step(x_m, self._teacher_v(round_, x_m, m, context).float(), m, s)
        alpha_t, sigma_t = sch.alpha_sigma(t)
        alpha_s, sigma_s = sch.alpha_sigma(s)
        ratio = sigma_s / sigma_t
        target = (x_s - ratio * x_t) / (alpha_s - ratio * alpha_t)

        set_lr(self.optimizer, learning_rate(loop, local, loop.steps_per_round[round_]))
        with rt.autocast():
            v = self.student(x_t, t.float(), context)
        x0_hat = sch.x0_from_v(x_t, v.float(), t)
        weight = sch.snr(t).clamp(min=1.0)
        per_sample = (x0_hat - target).pow(2).mean(dim=(1, 2, 3))
        loss = (weight * per_sample).mean()
        norm = optimizer_step(
            loss, self.optimizer, list(self.student.parameters()), loop.grad_clip, self.scaler
        )
        if self.ema is not None:
            self.ema.update(unwrap(self.student), local)
        return {
            "loss": loss.item(),
            "x0_mse": per_sample.mean().item(),
            "round": float(round_),
            "grad": norm,
        }

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "student": unwrap(self.student).state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        if self.round_teacher is not None:
            state["round_teacher"] = self.round_teacher.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.student).load_state_dict(state["student"])
        self.optimizer.load_state_dict(state["optimizer"])
        if "round_teacher" in state:
            self.round_teacher = copy.deepcopy(unwrap(self.student)).eval().requires_grad_(False)
            self.round_teacher.load_state_dict(state["round_teacher"])
        if self.ema is not None and "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def final_student(self) -> nn.Module:
        return self.ema.module if self.ema is not None else unwrap(self.student)

    def finish(self) -> dict[str, Any]:
        out = self.run_dir / self.name / "model"
        if self.runtime.is_main:
            modules = {
                "text_encoder": self.text_encoder.cpu(),
                "unet": copy.deepcopy(self.final_student()).cpu().eval(),
                "vae_decoder": self.vae_decoder,
            }
            save_model(out, student_config(self.recipe, self.config), modules)
        return {"model": str(out), "rounds": self.loop.rounds}


def student_config(recipe: Recipe, teacher: ModelConfig) -> ModelConfig:
    """The distilled student: DDIM, ``student_steps`` trailing steps, no guidance."""
    d = recipe.distill
    return replace(
        teacher,
        name=recipe.model.name,
        description=recipe.model.description,
        pipeline=replace(
            teacher.pipeline,
            sampler="ddim",
            num_inference_steps=d.student_steps,
            guidance_scale=1.0,
        ),
        notes=dict(recipe.model.notes),
    )
