"""The model card of a trained model, written from the run folder's records.

Nothing in it is typed by hand: sizes are measured on the written folders, times come
from each stage's ``done.json``, the evaluation table from ``eval.json``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..analysis import count_parameters
from ..checkpoints import load_model
from .data import KINDS, is_held_out
from .evaluate import format_table
from .vae import make_data

SAMPLE_PROMPTS: tuple[str, ...] = (
    "a red circle on a blue background",
    "a big yellow triangle on a purple background",
    "a white square on a black background",
    "a green circle left of an orange square",
    "a blue triangle above a yellow circle",
    "three red squares on a white background",
)

STAGE_TEXT = {
    "vae": "autoencoder (encoder for training; the decoder ships): L1 + L2 + tiny KL",
    "teacher": "text encoder (CLIP architecture, real CLIP BPE vocabulary) + UNet from scratch, "
    "v-prediction{snr}, CFG dropout, EMA",
    "distill": "progressive distillation to 8 steps, guided teacher folded into the student",
    "gan": "DiffusionGAN (UFOGen-style) fine-tuning to 1 step, discriminator = UNet encoder "
    "half + head",
    "classifier": "evaluation classifier (colour, shape, relation, count, size heads)",
}


def sample_name(prompt: str, label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-") + f"-{label}.png"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def _components(out: Path) -> str:
    loaded = load_model(out)
    rows = ["| component | parameters | weights on disk |", "| --- | --- | --- |"]
    for name, module in loaded.modules.items():
        size = (out / name / "model.safetensors").stat().st_size
        rows.append(f"| {name} | {count_parameters(module):,} | {_mb(size)} (float16) |")
    return "\n".join(rows)


def _stages_table(ctx: dict[str, Any]) -> str:
    recipe = ctx["recipe"]
    rows = [
        "| stage | what | steps | batch | lr | wall time | CPU time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    wall = cpu = 0.0
    for name, text in STAGE_TEXT.items():
        done = ctx["stages"].get(name) or {}
        section = getattr(recipe, name)
        if name == "teacher":
            gamma = section.min_snr_gamma
            text = text.format(snr=f", Min-SNR weighting (gamma {gamma:g})" if gamma else "")
        steps = str(done.get("steps", section.steps))
        if name == "distill":
            grids = " -> ".join(str(section.start_steps >> r) for r in range(section.rounds + 1))
            per = " + ".join(map(str, section.steps_per_round))
            steps += f" ({per} in {section.rounds} rounds: {grids} sampling steps)"
        wall += done.get("seconds") or 0.0
        cpu += done.get("cpu_seconds") or 0.0
        rows.append(
            f"| {name} | {text} | {steps} | {section.batch_size} | {section.lr:g} | "
            f"{_minutes(done.get('seconds'))} | {_minutes(done.get('cpu_seconds'))} |"
        )
    rows.append(f"| **all** | | | | | **{_minutes(wall)}** | **{_minutes(cpu)}** |")
    return "\n".join(rows)


def _samples(ctx: dict[str, Any], prefix: str = "") -> str:
    data = make_data(ctx["recipe"])
    steps = ctx["recipe"].distill.student_steps
    rows = [
        f"| prompt | held out of training? | {steps} steps (DDIM) | 1 step (DiffusionGAN) |",
        "| --- | --- | --- | --- |",
    ]
    for s in ctx["samples"]:
        held = {True: "yes", False: "no", None: "-"}[is_held_out(data, s["prompt"])]
        student, onestep = (
            f'<img src="{prefix}{s[k]}" width="96">' for k in ("student", "onestep")
        )
        rows.append(f"| {s['prompt']} | {held} | {student} | {onestep} |")
    return "\n".join(rows)


def model_card(ctx: dict[str, Any]) -> str:
    recipe = ctx["recipe"]
    out, one = Path(ctx["out"]), Path(ctx["onestep_out"])
    data = make_data(recipe)
    keys = {split: {k: len(v) for k, v in data.keys[split].items()} for split in data.keys}
    rows = ctx["eval"]["rows"]
    student, onestep = rows.get("student", {}), rows.get("onestep", {})
    vae = (ctx["stages"].get("vae") or {}).get("outputs", {})
    p = recipe.model.pipeline
    n = recipe.distill.student_steps
    example = '*"a red circle on a blue background"*'
    folders = "\n".join(
        [
            "| folder | sampler | size |",
            "| --- | --- | --- |",
            f"| `models/{out.name}/` | DDIM, {n} steps, trailing timesteps, no classifier-free "
            f"guidance (folded into the distilled student) | {_mb(folder_size(out))} |",
            f"| `models/{one.name}/` | one step (`onestep` sampler at t=999), no guidance | "
            f"{_mb(folder_size(one))} |",
        ]
    )
    command = ctx["command"] or (
        f"mobilediff train all --config {recipe.name} -o models/{out.name} "
        f"--one-step-output models/{one.name}"
    )
    return f"""# {out.name}: {recipe.model.description}

A text-to-image model small enough to ship inside the repository, trained on this CPU
with MobileDiffusion's recipe at toy scale: a teacher, progressive distillation to {n}
steps, DiffusionGAN fine-tuning to 1 step. It draws flat coloured shapes on flat
backgrounds at {p.image_size}x{p.image_size}, from captions like {example}
or *"a green circle left of an orange square"*. It is the model `generate` and `export`
use when none is named; it is a demo of the whole path, not a general image model.

```bash
mobilediff generate --model {out.name} "a red circle on a blue background" -o out.png
mobilediff generate --model {one.name} "a red circle on a blue background" -o out-1step.png
```

{folders}

Both folders are in the native format (`checkpoints.save_native`) with float16 weights
(`load_model` reads them into float32 modules); they share the text encoder, the VAE
decoder and the tokenizer, and differ in the UNet.

{_components(out)}

The networks are the paper's design scaled down (see `models/training/{recipe.name}.json`):
the UNet has no self-attention at its outer level (cross-attention only), shared
key/value projections, Swish GLU feed-forwards with expansion 6, depthwise-separable
convolutions inside and plain ones at the outer level; v-prediction on a linear noise
schedule (beta 1e-4 to 0.02, 1000 steps). {p.image_size}x{p.image_size} images from
{recipe.model.latent_size}x{recipe.model.latent_size}x4 latents; the latent scale
(`vae_scaling_factor` {vae.get("scaling_factor", p.vae_scaling_factor):.4f}) is 1 / std of the
trained encoder's latents.

## Data

`mobilediff_export/training/data.py` draws every image on the fly from a seeded scene
description, no downloads: circles, squares and triangles in red, green, blue, yellow,
white, black, orange and purple (with a little colour jitter), small or big, anywhere
in the frame, on a background of another colour; single objects ("a small yellow
triangle on a black background"), relations ("a red circle left of a blue square", left
of / right of / above / below, the background named half the time) and counts ("three
orange circles on a green background"). Preview: `mobilediff train data -o preview.png`.

Held out: {recipe.data.holdout_fraction:.0%} of the caption combinations of each kind
(single: colour, shape, background; relation: the two objects and the axis; count:
number, colour, shape, background) never appear in training. Train split: {keys["train"]};
validation: {keys["val"]}. Every evaluation below is on held-out captions.

## Training

One command, from scratch (it resumes wherever it was stopped):

```bash
{command}
```

{_stages_table(ctx)}

Machine: {ctx["machine"]}. The machine was shared with other jobs while this ran:
wall times are upper bounds, CPU time (all threads of the training process) is what the
work itself cost. Evaluation, samples and this card take a few more minutes. Each stage
is also its own command (`mobilediff train vae|teacher|distill|gan|classifier --config
{recipe.name}`) with checkpoints every few hundred steps and exact resume.

## Evaluation

```bash
mobilediff train eval --config {recipe.name} --student models/{out.name} --onestep models/{one.name}
```

{ctx["eval"]["num_captions"]} held-out captions, one image each (seed {ctx["eval"]["seed"]} + i).
A small classifier trained on the same generator reads every image; *caption accuracy* is
the share of images in which everything the caption claims is seen (colours, shapes,
the relation, the count, the size). *FD* is the Fréchet distance between the
classifier's 128-d features of the images and of as many real held-out images (lower is
better; the real-images row is the noise floor of two independent real sets).

{format_table(ctx["eval"])}

The 8-step student keeps **{100 * student.get("kept_of_teacher", 0):.1f}%** of the teacher's
caption accuracy; the 1-step model keeps **{100 * onestep.get("kept_of_teacher", 0):.1f}%**.

## Samples

Seed 0, exactly what `mobilediff generate --model {out.name} PROMPT` writes (32x32; view
them enlarged). All of them side by side: [samples/sheet.png](samples/sheet.png).

{_samples(ctx)}

## Limits

- It knows the data set's grammar and nothing else: other words are tokens it never saw.
- 32x32 pixels; edges are soft, and relations and counts fail more often than colours.
- The 1-step model trades accuracy and sharpness for an 8x cheaper UNet.
"""


def onestep_card(ctx: dict[str, Any]) -> str:
    out, one = Path(ctx["out"]), Path(ctx["onestep_out"])
    row = ctx["eval"]["rows"].get("onestep", {})
    return f"""# {one.name}: the one-step (DiffusionGAN) version of `{out.name}`

The UNet of `models/{out.name}` (the 8-step distilled student) fine-tuned as a
DiffusionGAN (UFOGen-style) to make an image in one step from pure noise; the text
encoder, VAE decoder and tokenizer are the same. Sampler: `onestep`, one step at t=999,
no guidance.

```bash
mobilediff generate --model {one.name} "a red circle on a blue background" -o out.png
```

Held-out caption accuracy {100 * row.get("caption", 0):.1f}% (FD {row.get("fd", 0):.2f}),
{100 * row.get("kept_of_teacher", 0):.1f}% of the teacher's. Data, training, the full
evaluation table and samples: [../{out.name}/MODEL_CARD.md](../{out.name}/MODEL_CARD.md).
"""


__all__ = ["KINDS", "SAMPLE_PROMPTS", "model_card", "onestep_card", "sample_name"]
