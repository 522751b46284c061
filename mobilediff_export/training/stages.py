"""The stages by name, in the order a recipe runs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .classifier import ClassifierTraining
from .config import Recipe
from .distill import Distillation
from .gan import DiffusionGAN
from .loop import CHECKPOINT, check_checkpoint, fingerprint, read_done, run_stage
from .runtime import Runtime
from .teacher import TeacherTraining
from .vae import VAETraining

STAGES: dict[str, type] = {
    "vae": VAETraining,
    "teacher": TeacherTraining,
    "distill": Distillation,
    "gan": DiffusionGAN,
    "classifier": ClassifierTraining,
}


def train_stage(
    name: str,
    recipe: Recipe,
    run_dir: Path,
    runtime: Runtime,
    restart: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Build stage ``name`` and run it to the end (resuming from its checkpoint)."""
    # Cheap checks first, before the stage loads its models: upstream present, already
    # done, a checkpoint from another recipe.
    expected = fingerprint(recipe, run_dir, name)
    if not restart:
        done = read_done(run_dir, name)
        if done is not None and done.get("fingerprint") == expected:
            if runtime.is_main:
                print(f"[{name}] already done ({done['steps']} steps); skipping", flush=True)
            return done
        check_checkpoint(run_dir / name / CHECKPOINT, expected)
    stage = STAGES[name](recipe, run_dir, runtime)
    return run_stage(stage, recipe, run_dir, runtime, restart=restart, stop_after=stop_after)
