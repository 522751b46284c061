"""Import of diffusers checkpoints: configs, key mapping, and equality with diffusers itself.

Every equivalence test builds a random diffusers model from a small config, nudges every
parameter (so zero-initialised layers such as proj_out cannot hide a mapping mistake),
goes through config.json and the state dict exactly as a checkpoint on disk would, and
compares outputs in fp32.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from mobilediff_export.checkpoints.hf_diffusers import (
    unet_config_from_diffusers,
    unet_state_dict_from_diffusers,
    vae_decoder_config_from_diffusers,
    vae_decoder_state_dict_from_diffusers,
)
from mobilediff_export.config import UNetConfig, VAEDecoderConfig
from mobilediff_export.errors import CheckpointError, ConfigError
from mobilediff_export.models.unet import UNet
from mobilediff_export.models.vae_decoder import VAEDecoder

TOLERANCE = 1e-4

_CROSS_DOWN, _DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
_CROSS_UP, _UP = "CrossAttnUpBlock2D", "UpBlock2D"

# Small stand-ins for the UNets people bring, in diffusers' own config vocabulary.
UNET_CASES: dict[str, dict[str, Any]] = {
    "sd15-like": {
        "block_out_channels": [32, 64, 64, 64],
        "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _DOWN],
        "up_block_types": [_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP],
        "layers_per_block": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 32,
    },
    "bk-sdm-like": {
        "block_out_channels": [32, 64, 64, 64],
        "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _DOWN],
        "up_block_types": [_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP],
        "layers_per_block": 1,
        "mid_block_type": None,
        "attention_head_dim": 4,
        "cross_attention_dim": 32,
    },
    "per-level-heads": {
        "block_out_channels": [32, 64, 64],
        "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN],
        "up_block_types": [_CROSS_UP, _CROSS_UP, _CROSS_UP],
        "layers_per_block": [1, 2, 1],
        "attention_head_dim": [2, 4, 8],
        "cross_attention_dim": 32,
    },
    "deep-transformers": {
        "block_out_channels": [32, 64, 64],
        "down_block_types": [_DOWN, _CROSS_DOWN, _CROSS_DOWN],
        "up_block_types": [_CROSS_UP, _CROSS_UP, _UP],
        "layers_per_block": 1,
        "transformer_layers_per_block": [1, 2, 3],
        "attention_head_dim": 4,
        "cross_attention_dim": 32,
    },
    "asymmetric-transformers": {
        "block_out_channels": [32, 64, 64],
        "down_block_types": [_DOWN, _CROSS_DOWN, _CROSS_DOWN],
        "up_block_types": [_CROSS_UP, _CROSS_UP, _UP],
        "layers_per_block": 1,
        "transformer_layers_per_block": [1, [2], [1]],
        "reverse_transformer_layers_per_block": [[3, 3], [1, 1], [1, 1]],
        "attention_head_dim": 4,
        "cross_attention_dim": 32,
    },
    "other-context-width": {
        "block_out_channels": [32, 64, 64, 64],
        "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _DOWN],
        "up_block_types": [_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP],
        "layers_per_block": 1,
        "attention_head_dim": 2,
        "cross_attention_dim": 48,
        "time_embedding_dim": 64,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
    },
    "3-levels": {
        "block_out_channels": [32, 32, 64],
        "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _DOWN],
        "up_block_types": [_UP, _CROSS_UP, _CROSS_UP],
        "layers_per_block": 2,
        "attention_head_dim": 4,
        "cross_attention_dim": 32,
    },
    "linear-projection": {
        "block_out_channels": [32, 64, 64],
        "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _DOWN],
        "up_block_types": [_UP, _CROSS_UP, _CROSS_UP],
        "layers_per_block": 1,
        "attention_head_dim": [2, 4, 8],
        "use_linear_projection": True,
        "cross_attention_dim": 32,
        "in_channels": 8,
        "out_channels": 3,
    },
}

VAE_CASES: dict[str, dict[str, Any]] = {
    "3-levels": {"block_out_channels": [16, 32, 32], "layers_per_block": 1},
    "4-levels-sd-like": {"block_out_channels": [16, 32, 64, 64], "layers_per_block": 2},
    "2-levels-lean": {
        "block_out_channels": [32, 32],
        "layers_per_block": 1,
        "latent_channels": 8,
        "out_channels": 1,
        "mid_block_add_attention": False,
        "use_post_quant_conv": False,
    },
}

# Tiny diffusers UNet config for the strictness tests.
SMALL_UNET = UNET_CASES["3-levels"]


def _nudge(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random-init weights plus noise everywhere: no layer stays at zero or identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def _diffusers_unet(kwargs: dict[str, Any], seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return _nudge(UNet2DConditionModel(norm_num_groups=8, sample_size=16, **kwargs), seed)


def _diffusers_vae(kwargs: dict[str, Any], seed: int = 0) -> AutoencoderKL:
    levels = len(kwargs["block_out_channels"])
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        norm_num_groups=8,
        **kwargs,
    )
    return _nudge(vae, seed)


def _config_json(model: UNet2DConditionModel | AutoencoderKL) -> dict[str, Any]:
    """The model's config exactly as config.json on disk holds it."""
    return json.loads(model.to_json_string())


def _import_unet(ref: UNet2DConditionModel) -> UNet:
    config = unet_config_from_diffusers(_config_json(ref))
    ours = UNet(config).eval()
    ours.load_state_dict(unet_state_dict_from_diffusers(ref.state_dict(), config), strict=True)
    return ours


# --- equivalence --------------------------------------------------------------------------


@pytest.mark.parametrize("case", UNET_CASES)
def test_unet_matches_diffusers(case: str) -> None:
    ref = _diffusers_unet(UNET_CASES[case])
    ours = _import_unet(ref)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(2, ref.config.in_channels, 16, 16, generator=g)
    timestep = torch.tensor([981.0, 1.0])
    context = torch.randn(2, 77, ref.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        expected = ref(sample, timestep, context).sample
        got = ours(sample, timestep, context)
    err = (got - expected).abs().max().item()
    print(f"unet {case}: max abs error {err:.3g}")
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # not a degenerate (constant) output
    assert err < TOLERANCE


@pytest.mark.parametrize("case", VAE_CASES)
def test_vae_decoder_matches_diffusers(case: str) -> None:
    ref = _diffusers_vae(VAE_CASES[case])
    config = vae_decoder_config_from_diffusers(_config_json(ref))
    ours = VAEDecoder(config).eval()
    ours.load_state_dict(vae_decoder_state_dict_from_diffusers(ref.state_dict(), config))
    latent = torch.randn(
        2, ref.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        expected = ref.decode(latent).sample
        got = ours(latent)
    err = (got - expected).abs().max().item()
    print(f"vae {case}: max abs error {err:.3g}")
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1  # not a degenerate (constant) output
    assert err < TOLERANCE


def test_vae_decoder_loads_the_old_attention_key_names() -> None:
    ref = _diffusers_vae(VAE_CASES["3-levels"])
    config = vae_decoder_config_from_diffusers(_config_json(ref))
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in ref.state_dict().items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        state[key] = value
    assert "decoder.mid_block.attentions.0.query.weight" in state
    ours = VAEDecoder(config).eval()
    ours.load_state_dict(vae_decoder_state_dict_from_diffusers(state, config))
    latent = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(ours(latent), ref.decode(latent).sample, atol=TOLERANCE, rtol=0)


def test_unet_accepts_conv_shaped_projections_for_a_linear_projection_config() -> None:
    ref = _diffusers_unet(UNET_CASES["linear-projection"])
    config = unet_config_from_diffusers(_config_json(ref))
    state = {
        k: v[:, :, None, None] if (".proj_in.weight" in k or ".proj_out.weight" in k) else v
        for k, v in ref.state_dict().items()
    }
    converted = unet_state_dict_from_diffusers(state, config)
    key = "down_levels.0.attentions.0.proj_in.weight"
    assert converted[key].shape == (32, 32)
    torch.testing.assert_close(
        converted[key], ref.state_dict()[key.replace("down_levels", "down_blocks")]
    )


# --- configs ------------------------------------------------------------------------------

SD15_CONFIG_JSON = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [_CROSS_DOWN, _CROSS_DOWN, _CROSS_DOWN, _DOWN],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": [_UP, _CROSS_UP, _CROSS_UP, _CROSS_UP],
}

SD_VAE_CONFIG_JSON = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def test_sd15_config_is_our_default_unet() -> None:
    assert unet_config_from_diffusers(SD15_CONFIG_JSON) == UNetConfig()


def test_sd_vae_config_is_our_default_decoder() -> None:
    assert vae_decoder_config_from_diffusers(SD_VAE_CONFIG_JSON) == VAEDecoderConfig()


def test_attention_head_dim_is_the_head_count() -> None:
    # diffusers' quirk: without num_attention_heads, attention_head_dim counts heads.
    config = unet_config_from_diffusers({**SD15_CONFIG_JSON, "attention_head_dim": [5, 10, 20, 20]})
    assert config.num_heads == (5, 10, 20, 20)
    config = unet_config_from_diffusers({**SD15_CONFIG_JSON, "num_attention_heads": 4})
    assert config.num_heads == (4, 4, 4, 4)


def test_bk_sdm_style_config() -> None:
    config = unet_config_from_diffusers(
        {**SD15_CONFIG_JSON, "layers_per_block": 1, "mid_block_type": None}
    )
    assert config.layers_per_block == (1, 1, 1, 1)
    assert config.resolved_up_layers_per_block == (2, 2, 2, 2)
    assert config.mid_block is False


def test_asymmetric_transformer_depths_go_to_up_transformer_depth() -> None:
    config = unet_config_from_diffusers(
        {**SD15_CONFIG_JSON, **UNET_CASES["asymmetric-transformers"]}
    )
    assert config.transformer_depth == (0, 2, 1)
    assert config.up_transformer_depth == (0, 1, 3)
    assert config.mid_transformer_depth == 1


def test_metadata_keys_are_ignored_and_a_square_sample_size_list_accepted() -> None:
    config = unet_config_from_diffusers(
        {**SD15_CONFIG_JSON, "_name_or_path": "x", "_whatever": [1], "sample_size": [32, 32]}
    )
    assert config.sample_size == 32


# (option, value, what the message must show besides the option's name)
UNSUPPORTED_UNET_OPTIONS: list[tuple[str, Any, str]] = [
    ("class_embed_type", "timestep", "'timestep'"),
    ("addition_embed_type", "text_time", "'text_time'"),
    ("encoder_hid_dim", 32, "=32"),
    ("time_cond_proj_dim", 256, "=256"),
    ("dual_cross_attention", True, "=True"),
    ("only_cross_attention", True, "=True"),
    ("only_cross_attention", [False, True, False, False], "[False, True, False, False]"),
    ("resnet_time_scale_shift", "scale_shift", "'scale_shift'"),
    ("conv_in_kernel", 1, "=1"),
    ("conv_out_kernel", 5, "=5"),
    ("center_input_sample", True, "=True"),
    ("attention_type", "gated", "'gated'"),
    ("time_embedding_type", "fourier", "'fourier'"),
    ("act_fn", "gelu", "'gelu'"),
    ("num_class_embeds", 10, "=10"),
    ("class_embeddings_concat", True, "=True"),
    ("downsample_padding", 0, "=0"),
    ("mid_block_scale_factor", 1.5, "=1.5"),
    ("timestep_post_act", "silu", "'silu'"),
    ("time_embedding_act_fn", "silu", "'silu'"),
    ("cross_attention_norm", "group_norm", "'group_norm'"),
    ("norm_num_groups", None, "=None"),
    ("mid_block_type", "UNetMidBlock2D", "'UNetMidBlock2D'"),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "'UNetMidBlock2DSimpleCrossAttn'"),
    (
        "down_block_types",
        [_CROSS_DOWN, "SimpleCrossAttnDownBlock2D", _CROSS_DOWN, _DOWN],
        "'SimpleCrossAttnDownBlock2D'",
    ),
    ("up_block_types", ["AttnUpBlock2D", _CROSS_UP, _CROSS_UP, _CROSS_UP], "'AttnUpBlock2D'"),
    ("up_block_types", [_CROSS_UP] * 4, "up_block_types[0]='CrossAttnUpBlock2D'"),
    ("cross_attention_dim", [768, 768, 1024, 1024], "[768, 768, 1024, 1024]"),
    ("transformer_layers_per_block", [[1, 2], 1, 1, 1], "[0]=[1, 2]"),
    ("transformer_layers_per_block", [0, 1, 1, 1], "[0]=0"),
    ("layers_per_block", [2, 2], "[2, 2]"),
    ("some_future_option", 3, "=3"),
]


@pytest.mark.parametrize(("option", "value", "shown"), UNSUPPORTED_UNET_OPTIONS)
def test_unsupported_unet_options_are_named(option: str, value: Any, shown: str) -> None:
    with pytest.raises(ConfigError, match=option) as info:
        unet_config_from_diffusers({**SD15_CONFIG_JSON, option: value})
    assert shown in str(info.value)


def test_unet_config_for_another_model_class_is_refused() -> None:
    with pytest.raises(ConfigError, match="_class_name"):
        unet_config_from_diffusers({**SD15_CONFIG_JSON, "_class_name": "UNet2DModel"})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("act_fn", "relu"),
        ("up_block_types", ["AttnUpDecoderBlock2D"] * 4),
        ("up_block_types", ["UpDecoderBlock2D"] * 3),
        ("norm_type", "spatial"),
        ("_class_name", "AutoencoderTiny"),
    ],
)
def test_unsupported_vae_options_are_named(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        vae_decoder_config_from_diffusers({**SD_VAE_CONFIG_JSON, option: value})


# --- strictness of the weight mapping -----------------------------------------------------


@pytest.fixture(scope="module")
def small_unet() -> tuple[dict[str, torch.Tensor], UNetConfig]:
    ref = _diffusers_unet(SMALL_UNET)
    return dict(ref.state_dict()), unet_config_from_diffusers(_config_json(ref))


def test_missing_unet_key_is_named(small_unet: tuple[dict, UNetConfig]) -> None:
    state, config = small_unet
    state = dict(state)
    del state["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"]
    with pytest.raises(CheckpointError, match=r"missing down_blocks\.1\.attentions\.0\.") as info:
        unet_state_dict_from_diffusers(state, config)
    assert "more" not in str(info.value)
    del state["conv_out.bias"]
    with pytest.raises(CheckpointError, match=r"and 1 more"):
        unet_state_dict_from_diffusers(state, config)


def test_extra_unet_key_is_named(small_unet: tuple[dict, UNetConfig]) -> None:
    state, config = small_unet
    state = {**state, "down_blocks.0.resnets.0.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected key down_blocks\.0\.resnets\.0\.extra"):
        unet_state_dict_from_diffusers(state, config)


def test_checkpoint_with_more_levels_than_the_config_is_refused(
    small_unet: tuple[dict, UNetConfig],
) -> None:
    state, config = small_unet
    state = {**state, "down_blocks.2.downsamplers.0.conv.weight": torch.zeros(64, 64, 3, 3)}
    with pytest.raises(CheckpointError, match=r"down_blocks\.2\.downsamplers"):
        unet_state_dict_from_diffusers(state, config)


def test_wrong_unet_shape_is_named(small_unet: tuple[dict, UNetConfig]) -> None:
    state, config = small_unet
    state = {**state, "conv_in.weight": torch.zeros(32, 4, 1, 1)}
    with pytest.raises(CheckpointError, match=r"conv_in\.weight has shape \[32, 4, 1, 1\]"):
        unet_state_dict_from_diffusers(state, config)


@pytest.mark.parametrize(
    "change",
    [{"separable_conv": (True, False, False)}, {"shared_kv": True}],
    ids=["separable", "shared-kv"],
)
def test_knobs_diffusers_has_no_weights_for_are_refused(
    small_unet: tuple[dict, UNetConfig], change: dict
) -> None:
    state, config = small_unet
    with pytest.raises(CheckpointError, match=next(iter(change))):
        unet_state_dict_from_diffusers(state, dataclasses.replace(config, **change))


def test_vae_mapping_skips_the_encoder_and_is_strict_otherwise() -> None:
    ref = _diffusers_vae(VAE_CASES["3-levels"])
    state = dict(ref.state_dict())
    config = vae_decoder_config_from_diffusers(_config_json(ref))
    converted = vae_decoder_state_dict_from_diffusers(state, config)
    assert not any(k.startswith(("encoder", "quant_conv")) for k in converted)
    assert "post_quant_conv.weight" in converted

    no_pqc = dataclasses.replace(config, use_post_quant_conv=False)
    with pytest.raises(CheckpointError, match=r"unexpected key post_quant_conv\.bias"):
        vae_decoder_state_dict_from_diffusers(state, no_pqc)
    missing = {k: v for k, v in state.items() if k != "decoder.conv_out.weight"}
    with pytest.raises(CheckpointError, match=r"missing decoder\.conv_out\.weight"):
        vae_decoder_state_dict_from_diffusers(missing, config)
    wrong = {**state, "decoder.up_blocks.0.upsamplers.0.conv.bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"upsamplers\.0\.conv\.bias has shape \[3\]"):
        vae_decoder_state_dict_from_diffusers(wrong, config)
