"""The reference pipeline against diffusers' StableDiffusionPipeline on the same folder.

Same weights (imported from the saved diffusers folder), same scheduler, same initial
latents: the images must agree to a mean absolute difference below 1e-3 (on [0, 1]).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from mobilediff_export import load_pipeline

PROMPT = "a red circle left of a blue square"


def _reference_scheduler(pipe, kind: str, prediction_type: str):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    cls = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}[kind]
    return cls.from_config(pipe.scheduler.config, prediction_type=prediction_type)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "prediction_type", "guidance", "steps"),
    [
        ("ddim", "epsilon", 7.5, 4),
        ("euler", "epsilon", 7.5, 4),
        ("ddim", "v_prediction", 1.0, 3),
        ("euler", "v_prediction", 3.0, 2),
    ],
)
def test_image_matches_stable_diffusion_pipeline(
    sd_pipeline, sd_folder, tmp_path, kind, prediction_type, guidance, steps
):
    folder = tmp_path / "model"
    shutil.copytree(sd_folder, folder)
    scheduler = _reference_scheduler(sd_pipeline, kind, prediction_type)
    scheduler.save_config(folder / "scheduler")
    sd_pipeline.scheduler = scheduler

    latents = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(7))
    expected = sd_pipeline(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents,
        height=32,
        width=32,
        output_type="np",
    ).images[0]

    ours = load_pipeline(folder)
    assert ours.config.pipeline.sampler == kind
    assert ours.config.pipeline.prediction_type == prediction_type
    got = ours(
        PROMPT, steps=steps, guidance_scale=guidance, latents=latents.numpy(), output_type="np"
    )
    assert got.shape == expected.shape == (32, 32, 3)
    # The picture is not flat: a pipeline that lost its inputs could not pass by accident.
    assert expected.std() > 0.05
    diff = np.abs(got - expected).mean()
    print(f"{kind}/{prediction_type}/g={guidance}: mean abs pixel diff {diff:.3e}")
    assert diff < 1e-3

    other = ours(
        "a green triangle",
        steps=steps,
        guidance_scale=guidance,
        latents=latents.numpy(),
        output_type="np",
    )
    assert np.abs(other - expected).mean() > 10 * max(diff, 1e-5)


@pytest.mark.slow
def test_seeded_generation_is_deterministic(sd_folder):
    pipe = load_pipeline(sd_folder)
    a = np.asarray(pipe(PROMPT, steps=2, seed=3))
    b = np.asarray(pipe(PROMPT, steps=2, seed=3))
    c = np.asarray(pipe(PROMPT, steps=2, seed=4))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_scheduler_config_sets_the_sampler(sd_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(sd_folder, folder)
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config["_class_name"] = "EulerDiscreteScheduler"
    config["prediction_type"] = "v_prediction"
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    pipe = load_pipeline(folder)
    assert pipe.config.pipeline.sampler == "euler"
    assert pipe.config.pipeline.prediction_type == "v_prediction"
    assert pipe.config.pipeline.image_size == 32
