"""``train all``: every stage in order, then the shipped model folders, samples and card.

::

    vae ─ teacher ─ distill ─ gan ─ classifier     (each resumes / skips as run_stage says)
      └─> <out>            the distilled student, DDIM 8 steps, no CFG (float16 weights)
      └─> <out-1step>      the DiffusionGAN model, one step (float16 weights)
      └─> eval             teacher (run folder) vs the two shipped folders, held-out captions
      └─> <out>/samples/   PNGs at 8 and 1 steps for a few prompts, through Pipeline
      └─> calibration_prompts.txt   training captions that `export --recipe w8a8`
                                    calibrates on (both folders)
      └─> MODEL_CARD.md    in both folders

Everything after the stages is derived from the run folder, so ``train all`` run again
after an interruption finishes the job without retraining anything.
"""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import load_model
from ..config import ModelConfig
from ..errors import MobileDiffError
from ..fileio import atomic_write_text
from .card import SAMPLE_PROMPTS, model_card, onestep_card, sample_name
from .config import Recipe
from .data import contact_sheet
from .evaluate import evaluate
from .gan import onestep_config
from .loop import read_done
from .outputs import save_model
from .runtime import Runtime
from .stages import STAGES, train_stage


def export_model(src: Path, out: Path, metadata: ModelConfig) -> Path:
    """A trained model folder as shipped: float16 weights, the recipe's name and notes.

    Names, descriptions and notes are not part of any stage's fingerprint, so they are
    applied here, from the recipe as it is now.
    """
    loaded = load_model(src)
    config = replace(
        loaded.config,
        name=metadata.name,
        description=metadata.description,
        notes=dict(metadata.notes),
    )
    return save_model(out, config, loaded.modules, half=True, force=True)


CALIBRATION_PROMPTS = 32
CALIBRATION_STREAM = 101  # a data stream no training stage draws from


def write_calibration_prompts(out: Path, recipe: Recipe) -> Path:
    """``calibration_prompts.txt``: distinct training captions, the validate prompt left
    out (so the parity check is not also a calibration input); what ``export`` reads
    from a model folder for full-integer (w8a8) calibration."""
    from ..validate import DEFAULT_PROMPT
    from .vae import make_data

    data = make_data(recipe)
    captions: list[str] = []
    index = 0
    while len(captions) < CALIBRATION_PROMPTS:
        caption = data.scene("train", index, stream=CALIBRATION_STREAM).caption
        index += 1
        if caption != DEFAULT_PROMPT and caption not in captions:
            captions.append(caption)
    header = (
        "# Calibration prompts of the demo model (mobilediff export --recipe w8a8): "
        f"{CALIBRATION_PROMPTS} captions of\n# its training split (training/data.py, "
        f'SyntheticShapes().scene("train", i, stream={CALIBRATION_STREAM})).\n'
    )
    path = out / "calibration_prompts.txt"
    atomic_write_text(path, header + "\n".join(captions) + "\n")
    return path


def write_samples(out: Path, onestep_out: Path) -> list[dict[str, Any]]:
    """Images from both models (their own samplers) through ``Pipeline``, seed 0.

    Each record holds the prompt and the image paths under ``student`` and ``onestep``.
    """
    from ..pipeline import load_pipeline

    samples_dir = out / "samples"
    if samples_dir.exists():
        shutil.rmtree(samples_dir)
    samples_dir.mkdir(parents=True)
    student, onestep = load_pipeline(out), load_pipeline(onestep_out)
    records, tiles = [], []
    import numpy as np

    for prompt in SAMPLE_PROMPTS:
        row = {"prompt": prompt}
        for role, pipe in (("student", student), ("onestep", onestep)):
            image = pipe(prompt, seed=0)
            name = sample_name(prompt, f"{pipe.config.pipeline.num_inference_steps}step")
            image.save(samples_dir / name)
            row[role] = f"samples/{name}"
            tiles.append(np.asarray(image))
        records.append(row)
    # One sheet: a row per prompt, student then one-step, upscaled for a quick look.
    contact_sheet(tiles, scale=4, columns=2).save(samples_dir / "sheet.png")
    return records


def run_all(
    recipe: Recipe,
    run_dir: Path,
    runtime: Runtime,
    out: Path,
    onestep_out: Path,
    force: bool = False,
    command: str = "",
) -> dict[str, Any]:
    """Train every stage (resuming), export both models, evaluate, write samples and cards."""
    for folder in (out, onestep_out):
        if folder.exists() and not force:
            raise MobileDiffError(f"{folder} already exists; pass --force to replace it")
    for name in STAGES:
        train_stage(name, recipe, run_dir, runtime)
    if not runtime.is_main:
        return {}
    export_model(run_dir / "distill" / "model", out, recipe.model)
    export_model(run_dir / "gan" / "model", onestep_out, onestep_config(recipe, recipe.model))
    for folder in (out, onestep_out):
        write_calibration_prompts(folder, recipe)
    result = evaluate(
        recipe,
        run_dir,
        runtime,
        models={
            "teacher": run_dir / "teacher" / "model",
            "student": out,
            "onestep": onestep_out,
        },
    )
    samples = write_samples(out, onestep_out)
    stages = {name: read_done(run_dir, name) for name in STAGES}
    context = {
        "recipe": recipe,
        "run_dir": run_dir,
        "out": out,
        "onestep_out": onestep_out,
        "stages": stages,
        "eval": result,
        "samples": samples,
        "command": command,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{runtime.world_size} process(es), {runtime.device.type}",
    }
    atomic_write_text(out / "MODEL_CARD.md", model_card(context))
    atomic_write_text(onestep_out / "MODEL_CARD.md", onestep_card(context))
    summary = {"eval": result["rows"], "stages": {k: v["seconds"] for k, v in stages.items() if v}}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary
