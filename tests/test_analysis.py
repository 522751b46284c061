"""The shipped configs have the sizes the paper reports, measured, not assumed."""

from __future__ import annotations

import pytest

from mobilediff_export.analysis import component_costs, image_flops
from mobilediff_export.checkpoints import models_dir
from mobilediff_export.config import ModelConfig, VAEDecoderConfig


def costs_of(name: str) -> dict:
    config = ModelConfig.from_json_file(models_dir() / f"{name}.json")
    return {c.name: c for c in component_costs(config)}


@pytest.fixture(scope="module")
def paper():
    return costs_of("mobilediffusion")


def test_paper_unet_is_within_five_percent_of_386m(paper):
    assert abs(paper["unet"].parameters - 386e6) / 386e6 < 0.05


def test_paper_text_encoder_is_the_clip_vit_l14_text_tower(paper):
    # CLIP ViT-L/14's text tower without its projection: 123,060,480 parameters.
    assert paper["text_encoder"].parameters == 123_060_480


def test_paper_decoder_is_light_in_parameters_and_flops(paper):
    sd = ModelConfig(vae_decoder=VAEDecoderConfig())  # Stable Diffusion's decoder
    sd_decoder = {c.name: c for c in component_costs(sd)}["vae_decoder"]
    assert sd_decoder.parameters == 49_490_199
    assert 2.4e12 < sd_decoder.flops < 2.6e12
    assert 8e6 < paper["vae_decoder"].parameters < 11e6
    assert paper["vae_decoder"].flops <= sd_decoder.flops / 5


def test_flops_scale_with_resolution_and_batch():
    config = ModelConfig.from_json_file(models_dir() / "tiny.json")
    costs = component_costs(config)
    by = {c.name: c.flops for c in costs}
    assert image_flops(config, costs, 4, guided=False) == (
        by["text_encoder"] + 4 * by["unet"] + by["vae_decoder"]
    )
    assert image_flops(config, costs, 4, guided=True) == (
        2 * by["text_encoder"] + 8 * by["unet"] + by["vae_decoder"]
    )


def test_lite_is_smaller_than_paper(paper):
    lite = costs_of("mobilediffusion-lite")
    for name in ("text_encoder", "unet"):
        assert lite[name].parameters < paper[name].parameters
        assert lite[name].flops < paper[name].flops
