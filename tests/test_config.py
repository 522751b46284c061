"""Configs: strict JSON round trips and clear errors that name the bad field."""

import json

import pytest

from mobilediff_export.checkpoints import model_names, models_dir
from mobilediff_export.config import ModelConfig, UNetConfig
from mobilediff_export.errors import ConfigError


@pytest.mark.parametrize("name", ["tiny", "mobilediffusion-lite", "mobilediffusion"])
def test_shipped_configs_round_trip(name):
    config = ModelConfig.from_json_file(models_dir() / f"{name}.json")
    assert config.name == name
    again = ModelConfig.from_dict(json.loads(config.to_json()))
    assert again == config


def test_named_models_are_listed():
    assert {"tiny", "mobilediffusion", "mobilediffusion-lite"} <= set(model_names())


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"unknown config key unet\.attention_heads"):
        ModelConfig.from_dict({"unet": {"attention_heads": 8}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"unet": {"layers_per_block": [1, 2]}}, r"unet\.layers_per_block has 2 entries"),
        ({"unet": {"ff_activation": "tanh"}}, r"unet\.ff_activation must be one of"),
        ({"unet": {"shared_kv": "yes"}}, r"unet\.shared_kv must be true or false"),
        ({"pipeline": {"num_inference_steps": 0}}, r"num_inference_steps must be at least 1"),
        ({"pipeline": {"sampler": "plms"}}, r"pipeline\.sampler must be one of"),
        ({"text_encoder": {"hidden_size": 384}}, r"cross_attention_dim 768 does not match"),
        ({"pipeline": {"image_size": 500}}, r"not a multiple"),
        ({"tokenizer": {"max_length": 100}}, r"exceeds the text encoder's"),
        ({"tokenizer": {"max_length": 1}}, r"room for bos and eos"),
        ({"text_encoder": {"vocab_size": 1000}}, r"do not fit text_encoder\.vocab_size"),
        ({"pipeline": {"beta_start": 0.02}}, r"beta_start < beta_end"),
        ({"unet": {"block_out_channels": [320, 650, 1280, 1280]}}, r"not divisible"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_up_path_defaults_mirror_stable_diffusion():
    config = UNetConfig()
    assert config.resolved_up_layers_per_block == (3, 3, 3, 3)
    assert config.resolved_up_transformer_depth == config.transformer_depth
    assert config.resolved_time_embed_dim == 1280


def test_latent_shape_follows_decoder_upscale():
    config = ModelConfig()
    assert config.latent_shape == (4, 64, 64)


def test_unreadable_config_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json_file(bad)
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_json_file(tmp_path / "missing.json")
