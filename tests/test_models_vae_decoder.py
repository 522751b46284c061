"""Our VAE decoder: shapes and the light-decoder knobs.

Equivalence with diffusers' AutoencoderKL.decode is in test_import_diffusers.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mobilediff_export.config import VAEDecoderConfig
from mobilediff_export.models.layers import SeparableConv2d, SpatialSelfAttention
from mobilediff_export.models.vae_decoder import VAEDecoder

TINY = VAEDecoderConfig(
    latent_channels=4,
    out_channels=3,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    norm_num_groups=8,
)


def _decode(config: VAEDecoderConfig, size: int = 8) -> torch.Tensor:
    torch.manual_seed(0)
    model = VAEDecoder(config).eval()
    latent = torch.randn(2, config.latent_channels, size, size)
    with torch.no_grad():
        return model(latent)


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        dataclasses.replace(TINY, block_out_channels=(16, 16, 32, 32), layers_per_block=0),
        dataclasses.replace(TINY, block_out_channels=(32,), out_channels=1, latent_channels=8),
        dataclasses.replace(TINY, mid_attention=False, use_post_quant_conv=False),
        dataclasses.replace(TINY, separable_conv=True),
    ],
    ids=["3-level", "4-level-lean", "1-level", "no-attn-no-pqc", "separable"],
)
def test_output_is_upscaled_by_the_config_factor(config: VAEDecoderConfig) -> None:
    image = _decode(config, size=6)
    f = config.upscale_factor
    assert image.shape == (2, config.out_channels, 6 * f, 6 * f)
    assert torch.isfinite(image).all()


def test_level_structure_follows_the_config() -> None:
    model = VAEDecoder(TINY)
    assert len(model.up_levels) == 3
    assert [len(level.resnets) for level in model.up_levels] == [2, 2, 2]
    assert [level.upsample is not None for level in model.up_levels] == [True, True, False]
    # The decoder walks block_out_channels backwards: 32 -> 32 -> 16.
    assert model.conv_in.out_channels == 32
    assert model.up_levels[2].resnets[0].conv_shortcut is not None
    assert model.conv_out.in_channels == 16
    assert isinstance(model.mid.attention, SpatialSelfAttention)
    assert model.post_quant_conv is not None


def test_mid_attention_and_post_quant_conv_can_be_dropped() -> None:
    model = VAEDecoder(dataclasses.replace(TINY, mid_attention=False, use_post_quant_conv=False))
    assert model.mid.attention is None
    assert model.post_quant_conv is None
    keys = model.state_dict().keys()
    assert not any(k.startswith(("mid.attention.", "post_quant_conv.")) for k in keys)


def test_separable_convs_reduce_parameters() -> None:
    plain = VAEDecoder(TINY)
    separable = VAEDecoder(dataclasses.replace(TINY, separable_conv=True))
    assert _params(separable) < _params(plain)
    resnets = [r for level in separable.up_levels for r in level.resnets]
    resnets += list(separable.mid.resnets)
    assert all(isinstance(r.conv1, SeparableConv2d) for r in resnets)
    assert all(isinstance(r.conv2, SeparableConv2d) for r in resnets)
    # The stem, head and upsampling convolutions stay plain.
    assert isinstance(separable.conv_in, torch.nn.Conv2d)
    assert isinstance(separable.conv_out, torch.nn.Conv2d)
    assert isinstance(separable.up_levels[0].upsample.conv, torch.nn.Conv2d)


def test_group_norms_use_the_vae_epsilon() -> None:
    norms = [m for m in VAEDecoder(TINY).modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
