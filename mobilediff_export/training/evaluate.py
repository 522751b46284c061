"""Evaluation on held-out captions: caption accuracy and a Fréchet distance per model.

For the first ``eval.num_captions`` validation scenes (captions no model trained on),
each model makes one image per caption from the noise ``Pipeline`` would draw for seed
``eval.seed + i``, with its own sampler:

    teacher     guided DDIM on the explicit ``eval.teacher_steps``-step grid
    student     the distilled model's pipeline config (DDIM, 8 steps, no guidance)
    onestep     the DiffusionGAN model's pipeline config (one step)

The evaluation classifier (``classifier.py``) then reads each image: *caption accuracy*
is the share of images in which every attribute the caption claims is seen, with
per-group shares (colour, shape, relation, count, size). *FD* is the Fréchet distance
between the classifier's 128-d features of the generated images and of as many real
held-out images (other validation scenes), like FID with a domain-specific feature
extractor. The teacher is also sampled with the student's step count (guided DDIM), the
baseline distillation has to beat. Two reference rows bound the numbers: real images of
the same captions (the classifier's own accuracy: the ceiling) and their VAE
reconstructions (what the decoder allows), with the FD between two independent real sets
(the floor).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints import load_model
from ..fileio import atomic_write_text
from ..schedulers import make_sampler
from .classifier import caption_accuracy, classify, load_classifier
from .config import Recipe
from .data import contact_sheet
from .diffusion import generate_latents, initial_noise, step_grid
from .runtime import Runtime
from .vae import LatentEncoder, load_decoder, make_data

ROLES = ("teacher", "student", "onestep")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2)`` for two feature sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a = np.cov(a, rowvar=False).astype(np.float64)
    cov_b = np.cov(b, rowvar=False).astype(np.float64)
    # tr((S_a S_b)^1/2) = sum of sqrt(eigenvalues) of S_a^1/2 S_b S_a^1/2, which is symmetric.
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def default_models(run_dir: Path) -> dict[str, Path]:
    return {
        "teacher": run_dir / "teacher" / "model",
        "student": run_dir / "distill" / "model",
        "onestep": run_dir / "gan" / "model",
    }


def generate_images(
    model_dir: Path,
    captions: list[str],
    seeds: list[int],
    role: str,
    recipe: Recipe,
    runtime: Runtime,
    batch_size: int,
    teacher_steps: int | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 images ``(N, S, S, 3)`` for ``captions`` and how they were sampled.

    The teacher is sampled on the distillation grid of ``teacher_steps`` (default
    ``eval.teacher_steps``) with its guidance; other roles with their own pipeline config.
    """
    loaded = load_model(model_dir)
    config = loaded.config
    te, unet, dec = (
        loaded.modules[k].to(runtime.device) for k in ("text_encoder", "unet", "vae_decoder")
    )
    pipe = config.pipeline
    if role == "teacher":
        grid = step_grid(
            pipe.num_train_timesteps,
            recipe.distill.student_steps,
            teacher_steps or recipe.eval.teacher_steps,
        )
        sampler = make_sampler(pipe, timesteps=grid[:-1])
        guidance = pipe.guidance_scale
    else:
        sampler = make_sampler(pipe)
        guidance = pipe.guidance_scale
    with torch.inference_mode():
        uncond = te(torch.from_numpy(loaded.tokenizer.tokenize([""])).to(runtime.device))
    images = []
    t0 = time.perf_counter()
    for start in range(0, len(captions), batch_size):
        chunk = slice(start, start + batch_size)
        ids = torch.from_numpy(loaded.tokenizer.tokenize(captions[chunk])).to(runtime.device)
        with torch.inference_mode():
            context = te(ids)
        noise = initial_noise(seeds[chunk], config.latent_shape)
        latents = generate_latents(unet, sampler, context, uncond, noise, guidance, seeds[chunk])
        with torch.inference_mode():
            decoded = dec(torch.from_numpy(latents / pipe.vae_scaling_factor).to(runtime.device))
        unit = (decoded.float().cpu().clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1)
        images.append((unit * 255.0).round().to(torch.uint8).numpy())
    seconds = time.perf_counter() - t0
    info = {
        "model": str(model_dir),
        "sampler": sampler.name,
        "steps": len(sampler.timesteps),
        "guidance_scale": guidance,
        "seconds_per_image": round(seconds / len(captions), 4),
    }
    return np.concatenate(images), info


def evaluate(
    recipe: Recipe,
    run_dir: Path,
    runtime: Runtime,
    models: dict[str, Path] | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Score each model (role -> model folder); writes ``eval.json``, ``table.md`` and sheets."""
    cfg = recipe.eval
    data = make_data(recipe)
    models = models or default_models(run_dir)
    out_dir = out_dir or run_dir / "eval"
    classifier = load_classifier(run_dir, runtime.device)
    n = cfg.num_captions
    scenes = data.scenes("val", range(n))
    captions = [s.caption for s in scenes]
    seeds = [cfg.seed + i for i in range(n)]
    real = np.stack([data.render(s) for s in scenes])
    reference = np.stack([data.render(s) for s in data.scenes("val", range(n, 2 * n))])
    ref_features, _ = classify(classifier, reference)

    rows: dict[str, Any] = {}
    feats, preds = classify(classifier, real)
    rows["real images"] = {
        **caption_accuracy(preds, scenes),
        "fd": frechet_distance(feats, ref_features),
    }
    encoder = LatentEncoder.load(run_dir, recipe.model.vae_decoder, runtime.device)
    decoder = load_decoder(run_dir, recipe.model.vae_decoder).to(runtime.device)
    with torch.inference_mode():
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float().to(runtime.device) / 127.5 - 1
        recon = decoder(encoder(x.cpu().numpy()) / encoder.scale).clamp(-1, 1)
    recon_u8 = ((recon.cpu() / 2 + 0.5).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    feats, preds = classify(classifier, recon_u8)
    rows["VAE reconstructions"] = {
        **caption_accuracy(preds, scenes),
        "fd": frechet_distance(feats, ref_features),
    }
    sheets = {"real": real[:32]}
    for role in ROLES:
        path = models.get(role)
        if path is None or not Path(path).exists():
            continue
        images, info = generate_images(
            Path(path), captions, seeds, role, recipe, runtime, cfg.batch_size
        )
        feats, preds = classify(classifier, images)
        rows[role] = {
            **caption_accuracy(preds, scenes),
            "fd": frechet_distance(feats, ref_features),
            **info,
        }
        sheets[role] = images[:32]
        if role == "teacher":  # the baseline distillation beats: the teacher at few steps
            steps = recipe.distill.student_steps
            images, info = generate_images(
                Path(path), captions, seeds, role, recipe, runtime, cfg.batch_size, steps
            )
            feats, preds = classify(classifier, images)
            rows["teacher-short"] = {
                **caption_accuracy(preds, scenes),
                "fd": frechet_distance(feats, ref_features),
                **info,
            }
    if "teacher" in rows:
        for role in ("teacher-short", "student", "onestep"):
            if role in rows:
                rows[role]["kept_of_teacher"] = round(
                    rows[role]["caption"] / max(rows["teacher"]["caption"], 1e-9), 4
                )
    result = {
        "num_captions": n,
        "seed": cfg.seed,
        "rows": rows,
        "captions": captions[:32],
    }
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(out_dir / "table.md", format_table(result) + "\n")
        for name, imgs in sheets.items():
            contact_sheet(list(imgs), scale=3, columns=8).save(out_dir / f"samples-{name}.png")
    return result


LABELS = {
    "real images": "real images (classifier ceiling)",
    "VAE reconstructions": "VAE reconstructions",
    "teacher": "teacher",
    "teacher-short": "teacher, few steps (no distillation)",
    "student": "distilled student",
    "onestep": "DiffusionGAN one-step",
}


def format_table(result: dict[str, Any]) -> str:
    """The evaluation as a Markdown table."""
    head = (
        "| model | sampler | caption acc. | colour | shape | relation | count | FD | "
        "kept of teacher | s / image |"
    )
    lines = [head, "|" + " --- |" * 10]
    for key, row in result["rows"].items():
        sampler = "-"
        if "sampler" in row:
            g = row["guidance_scale"]
            sampler = f"{row['sampler']} x{row['steps']}" + (f", CFG {g:g}" if g > 1 else "")
        kept = f"{100 * row['kept_of_teacher']:.1f}%" if "kept_of_teacher" in row else "-"
        spi = f"{row['seconds_per_image']:.3f}" if "seconds_per_image" in row else "-"
        cells = [
            f"{100 * row[k]:.1f}%" if k in row else "-"
            for k in ("caption", "colour", "shape", "relation", "count")
        ]
        lines.append(
            f"| {LABELS.get(key, key)} | {sampler} | "
            + " | ".join(cells)
            + f" | {row['fd']:.2f} | {kept} | {spi} |"
        )
    return "\n".join(lines)
