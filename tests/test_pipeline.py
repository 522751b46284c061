"""The reference pipeline's own behaviour: samplers, guidance, shapes, vector freshness."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilediff_export import load_pipeline
from mobilediff_export.errors import ConfigError

VECTORS = Path(__file__).resolve().parent / "vectors"


@pytest.fixture(scope="module")
def tiny():
    return load_pipeline("tiny")


def test_public_modules_have_the_documented_signatures(tiny):
    import torch

    ids = torch.from_numpy(tiny.tokenizer("a red circle"))[None]
    assert ids.dtype == torch.int64 and ids.shape == (1, 77)
    context = tiny.text_encoder(ids)
    assert context.shape == (1, 77, tiny.config.text_encoder.hidden_size)
    latent = torch.randn(1, *tiny.config.latent_shape)
    out = tiny.unet(latent, torch.tensor([999.0]), context)
    assert out.shape == latent.shape
    image = tiny.vae_decoder(latent)
    size = tiny.config.pipeline.image_size
    assert image.shape == (1, 3, size, size)


@pytest.mark.parametrize("sampler", ["ddim", "euler"])
def test_samplers_and_guidance_change_the_image(tiny, sampler):
    base = np.asarray(tiny("a cat", steps=3, seed=1, sampler=sampler))
    unguided = np.asarray(tiny("a cat", steps=3, seed=1, sampler=sampler, guidance_scale=1.0))
    assert base.shape == (64, 64, 3)
    assert not np.array_equal(base, unguided)


def test_onestep_needs_trailing_or_explicit_timesteps(tiny):
    with pytest.raises(ConfigError, match="trailing"):
        tiny("a cat", sampler="onestep", steps=1)
    one = np.asarray(tiny("a cat", sampler="onestep", timesteps=[999], guidance_scale=1.0))
    two = np.asarray(tiny("a cat", sampler="onestep", timesteps=[999, 499], guidance_scale=1.0))
    again = np.asarray(tiny("a cat", sampler="onestep", timesteps=[999, 499], guidance_scale=1.0))
    assert np.array_equal(two, again)  # the re-noising draws from a seeded generator
    assert not np.array_equal(one, two)


def test_wrong_latent_shape_is_a_clear_error(tiny):
    with pytest.raises(ConfigError, match="latents must have shape"):
        tiny("a cat", latents=np.zeros((1, 4, 8, 8), dtype=np.float32))


def test_pipeline_replay_vectors_are_current():
    """pipeline_tiny.json (replayed by the Kotlin and Swift tests) is what the code gives now."""
    sys.path.insert(0, str(VECTORS))
    import gen_pipeline

    fresh = gen_pipeline.build()
    stored = json.loads((VECTORS / "pipeline_tiny.json").read_text())
    assert fresh["token_ids"] == stored["token_ids"]
    assert fresh["sampler"] == stored["sampler"]

    def close(a, b):
        a, b = np.asarray(a["data"]), np.asarray(b["data"])
        return a.shape == b.shape and np.allclose(a, b, atol=1e-5, rtol=1e-5)

    assert close(fresh["context"], stored["context"])
    for new, old in zip(fresh["steps"], stored["steps"], strict=True):
        for key in ("model_input", "model_output", "latents_after"):
            assert close(new[key], old[key]), key
    pixels = np.asarray(fresh["pixels"]["data"], dtype=int)
    assert np.abs(pixels - np.asarray(stored["pixels"]["data"])).max() <= 1
