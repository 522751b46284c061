"""Golden vectors for the samplers, written from diffusers (the oracle), not from our code.

    .venv/bin/python tests/vectors/generate.py

DDIM and Euler cases run diffusers' ``DDIMScheduler`` and ``EulerDiscreteScheduler``; the
one-step cases are the closed-form x0 / re-noise formulas written out below on diffusers'
``alphas_cumprod``. Each case holds the pipeline config, the explicit timestep list, the
per-step schedule values an app would read from the manifest, and a short chained run on
eight floats (a 2x2x2 latent, flattened): per step the input sample, the model output,
the noise (one-step only), the scaled model input and the sample after the step. Inputs
are float32-exact; outputs are float64, written with ``repr`` (shortest round-trip).

Deterministic: no random generator is involved, so regenerating gives the same file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from mobilediff_export.config import PipelineConfig

SIZE = 8
# |ours - expected| <= atol + rtol * |expected|, elementwise (numpy.allclose).
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}
# (sampler, prediction_type, spacing, steps): every combination at 1, 4 and 8 steps, and
# two 25-step runs per sampler.
CASES = [
    (sampler, prediction, spacing, steps)
    for sampler in ("ddim", "euler")
    for prediction in ("epsilon", "v_prediction")
    for spacing in ("leading", "trailing", "linspace")
    for steps in (1, 4, 8)
] + [
    ("ddim", "epsilon", "leading", 25),
    ("ddim", "v_prediction", "trailing", 25),
    ("euler", "epsilon", "linspace", 25),
    ("euler", "v_prediction", "leading", 25),
]
# (prediction_type, timesteps): one-step and few-step distilled sampling.
ONESTEP_CASES = [
    ("epsilon", [999]),
    ("v_prediction", [999]),
    ("epsilon", [999, 749, 499, 249]),
    ("v_prediction", [999, 499]),
]


def values(seed: int, scale: float = 1.7) -> np.ndarray:
    """Eight float32-exact numbers in [-scale, scale], from integer arithmetic only."""
    k = np.arange(SIZE)
    u = (((k + 1) * (k + 3 + seed) * 7919 + seed * 104729) % 65521) / 32760.0 - 1.0
    return (u * scale).astype(np.float32).astype(np.float64)


def clean_sample() -> np.ndarray:
    """The x0 the fake denoiser believes in."""
    return values(1, scale=1.0)


def fake_model_output(x_in: np.ndarray, alpha: float, step: int, prediction: str) -> np.ndarray:
    """A denoiser that knows ``clean_sample()``, with a small deterministic error per step.

    Keeps a chained run realistic: the x0 it implies stays bounded, as a trained UNet's.
    """
    x0 = clean_sample()
    eps = (x_in - math.sqrt(alpha) * x0) / math.sqrt(1.0 - alpha) + 0.1 * values(100 + step)
    if prediction == "v_prediction":
        eps = math.sqrt(alpha) * eps - math.sqrt(1.0 - alpha) * x0
    return eps.astype(np.float32).astype(np.float64)


def config_dict(config: PipelineConfig) -> dict:
    return dataclasses.asdict(config)


def diffusers_case(sampler: str, prediction: str, spacing: str, steps: int) -> dict:
    config = PipelineConfig(
        sampler=sampler,
        prediction_type=prediction,
        timestep_spacing=spacing,
        num_inference_steps=steps,
    )
    common = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=prediction,
        timestep_spacing=spacing,
        steps_offset=config.steps_offset,
    )
    if sampler == "ddim":
        ref = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, **common)
    else:
        ref = EulerDiscreteScheduler(**common)
    ref.set_timesteps(steps)
    timesteps = ref.timesteps.numpy()
    case: dict = {
        "name": f"{sampler}-{prediction}-{spacing}-{steps}",
        "sampler": sampler,
        "config": config_dict(config),
        "num_inference_steps": steps,
        "explicit_timesteps": False,
        "timesteps": [int(t) if sampler == "ddim" else float(t) for t in timesteps],
        "init_noise_sigma": float(ref.init_noise_sigma),
    }
    if sampler == "ddim":
        ac = ref.alphas_cumprod.numpy().astype(np.float64)
        ratio = config.num_train_timesteps // steps
        prev = [int(t) - ratio for t in timesteps]
        case["set_alpha_to_one"] = False
        case["prev_timesteps"] = [p if p >= 0 else -1 for p in prev]
        case["alphas_cumprod"] = [float(ac[int(t)]) for t in timesteps]
        case["alphas_cumprod_prev"] = [
            float(ac[p]) if p >= 0 else float(ref.final_alpha_cumprod) for p in prev
        ]
    else:
        case["sigmas"] = [float(s) for s in ref.sigmas.numpy()]

    x = (values(0) * float(ref.init_noise_sigma)).astype(np.float32).astype(np.float64)
    records = []
    for i, t in enumerate(ref.timesteps):
        sample = torch.from_numpy(x.copy())
        model_input = ref.scale_model_input(sample, t).numpy()
        if sampler == "ddim":
            alpha = float(ref.alphas_cumprod[int(t)])
            scale = 1.0
        else:
            alpha = 1.0 / (1.0 + float(ref.sigmas[i]) ** 2)
            scale = 1.0 / float((ref.sigmas[i] ** 2 + 1) ** 0.5)  # diffusers' divisor
        out = fake_model_output(model_input, alpha, i, prediction)
        prev = ref.step(torch.from_numpy(out), t, sample).prev_sample.numpy()
        records.append(
            {
                "index": i,
                "timestep": case["timesteps"][i],
                "model_input_scale": scale,
                "sample": x.tolist(),
                "model_output": out.tolist(),
                "noise": None,
                "model_input": model_input.astype(np.float64).tolist(),
                "prev_sample": prev.astype(np.float64).tolist(),
            }
        )
        x = prev.astype(np.float32).astype(np.float64)
    case["steps"] = records
    return case


def onestep_case(prediction: str, timesteps: list[int]) -> dict:
    """x0 from the model output; re-noised to the next timestep, x0 after the last."""
    config = PipelineConfig(
        sampler="onestep",
        prediction_type=prediction,
        timestep_spacing="trailing",
        num_inference_steps=len(timesteps),
    )
    ref = DDIMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
    )
    ac = ref.alphas_cumprod.numpy().astype(np.float64)
    alphas = [float(ac[t]) for t in timesteps]
    x = values(0).copy()
    records = []
    for i, alpha in enumerate(alphas):
        out = fake_model_output(x, alpha, i, prediction)
        if prediction == "epsilon":
            x0 = (x - math.sqrt(1.0 - alpha) * out) / math.sqrt(alpha)
        else:
            x0 = math.sqrt(alpha) * x - math.sqrt(1.0 - alpha) * out
        last = i == len(alphas) - 1
        noise = None if last else values(200 + i)
        if last:
            result = x0
        else:
            a_next = alphas[i + 1]
            result = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * noise
        records.append(
            {
                "index": i,
                "timestep": timesteps[i],
                "model_input_scale": 1.0,
                "sample": x.tolist(),
                "model_output": out.tolist(),
                "noise": None if noise is None else noise.tolist(),
                "model_input": x.tolist(),
                "prev_sample": result.tolist(),
            }
        )
        x = result.astype(np.float32).astype(np.float64)
    return {
        "name": f"onestep-{prediction}-{len(timesteps)}",
        "sampler": "onestep",
        "config": config_dict(config),
        "num_inference_steps": len(timesteps),
        "explicit_timesteps": True,
        "timesteps": timesteps,
        "init_noise_sigma": 1.0,
        "alphas_cumprod": alphas,
        "steps": records,
    }


def build() -> dict:
    return {
        "about": (
            "Sampler golden vectors. DDIM/Euler from diffusers DDIMScheduler "
            "(clip_sample=False, set_alpha_to_one=False, eta=0) and EulerDiscreteScheduler "
            "(defaults, s_churn=0); one-step from the closed-form x0 / re-noise formulas. "
            "Arrays are a 2x2x2 latent flattened. Per step: feed model_input to the model "
            "(here model_output is given), step(model_output, index, sample, noise) must "
            "give prev_sample, within |got - want| <= atol + rtol * |want|. "
            "Regenerate with tests/vectors/generate.py; never edit."
        ),
        "oracle": f"diffusers {diffusers.__version__}, torch {torch.__version__.split('+')[0]}",
        "tolerance": TOLERANCE,
        "cases": [diffusers_case(*c) for c in CASES] + [onestep_case(*c) for c in ONESTEP_CASES],
    }


def _compact(text: str) -> str:
    """Put every list of plain numbers on one line, so a step reads as a few lines."""
    return re.sub(
        r"\[\s*([-+0-9.eE]+(?:,\s*[-+0-9.eE]+)*)\s*\]",
        lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]",
        text,
    )


def generate(out_path: Path) -> None:
    data = build()
    out_path.write_text(_compact(json.dumps(data, indent=2)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    generate(Path(__file__).resolve().parent / "samplers.json")
