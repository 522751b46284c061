"""Our UNet and its building blocks: shapes, the MobileDiffusion knobs, export-friendliness.

Equivalence with diffusers' UNet2DConditionModel is in test_import_diffusers.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from mobilediff_export.config import UNetConfig
from mobilediff_export.errors import ConfigError
from mobilediff_export.models.layers import (
    Attention,
    GLUFeedForward,
    SeparableConv2d,
    TransformerBlock,
    timestep_embedding,
)
from mobilediff_export.models.unet import UNet

TINY = UNetConfig(
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=(1, 1),
    transformer_depth=(1, 1),
    self_attention=(True, True),
    num_heads=(2, 4),
    separable_conv=(False, False),
    cross_attention_dim=32,
    norm_num_groups=8,
)

# A MobileDiffusion-shaped UNet in miniature: no attention at the top level, cross-only
# attention in the middle, full transformers inside; every knob away from its default.
MOBILE = UNetConfig(
    sample_size=16,
    block_out_channels=(32, 32, 64),
    layers_per_block=(1, 1, 2),
    up_layers_per_block=(2, 1, 3),
    transformer_depth=(0, 1, 2),
    up_transformer_depth=(0, 1, 1),
    self_attention=(False, False, True),
    num_heads=(1, 2, 4),
    shared_kv=True,
    ff_mult=3,
    ff_activation="swish",
    attention_activation="relu",
    separable_conv=(False, True, True),
    cross_attention_dim=48,
    use_linear_projection=True,
    norm_num_groups=8,
    time_embed_dim=96,
)


def _inputs(config: UNetConfig, batch: int = 2, size: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, config.in_channels, size, size, generator=g)
    timestep = torch.tensor([981.0, 1.0][:batch])
    context = torch.randn(batch, 7, config.cross_attention_dim, generator=g)
    return sample, timestep, context


def _run(config: UNetConfig, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    model = UNet(config).eval()
    with torch.no_grad():
        return model(*_inputs(config))


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        MOBILE,
        dataclasses.replace(TINY, mid_block=False),
        dataclasses.replace(TINY, mid_transformer_depth=0),
        dataclasses.replace(TINY, mid_self_attention=False),
        dataclasses.replace(TINY, up_layers_per_block=(1, 1), out_channels=8),
        dataclasses.replace(TINY, up_layers_per_block=(3, 4), up_transformer_depth=(0, 2)),
    ],
    ids=["tiny", "mobile", "no-mid", "mid-no-attn", "mid-cross-only", "lean-up", "deep-up"],
)
def test_output_keeps_the_sample_shape(config: UNetConfig) -> None:
    out = _run(config)
    assert out.shape == (2, config.out_channels, 16, 16)
    assert torch.isfinite(out).all()


def test_scalar_timestep_broadcasts_over_the_batch() -> None:
    torch.manual_seed(0)
    model = UNet(TINY).eval()
    sample, _, context = _inputs(TINY)
    with torch.no_grad():
        scalar = model(sample, torch.tensor(500.0), context)
        batched = model(sample, torch.tensor([500.0, 500.0]), context)
    torch.testing.assert_close(scalar, batched)


@pytest.mark.parametrize(("flip", "shift", "dim"), [(True, 0, 32), (False, 1, 32), (True, 1, 33)])
def test_timestep_embedding_matches_diffusers(flip: bool, shift: int, dim: int) -> None:
    t = torch.tensor([0.0, 1.0, 250.5, 999.0])
    ours = timestep_embedding(t, dim, flip_sin_to_cos=flip, freq_shift=shift)
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_shared_kv_has_one_projection_for_keys_and_values() -> None:
    shared = UNet(dataclasses.replace(TINY, shared_kv=True))
    plain = UNet(TINY)
    attentions = [m for m in shared.modules() if isinstance(m, Attention)]
    assert attentions
    for attn in attentions:
        assert hasattr(attn, "to_kv") and not hasattr(attn, "to_k") and not hasattr(attn, "to_v")
    keys = shared.state_dict().keys()
    assert not any(".to_k." in k or ".to_v." in k for k in keys)
    saved = sum(a.to_kv.weight.numel() for a in attentions)
    assert _params(plain) - _params(shared) == saved


def test_shared_kv_uses_the_projection_as_both_keys_and_values() -> None:
    torch.manual_seed(0)
    attn = Attention(8, 6, heads=2, head_dim=4, shared_kv=True)
    x, ctx = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    kv = attn.to_kv(ctx).reshape(1, 3, 2, 4).transpose(1, 2)
    q = attn.to_q(x).reshape(1, 5, 2, 4).transpose(1, 2)
    w = torch.softmax(q @ kv.transpose(-1, -2) / 2.0, dim=-1)
    expected = attn.to_out((w @ kv).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(attn(x, ctx), expected)


def test_relu_attention_is_relu_scores_over_key_length() -> None:
    torch.manual_seed(0)
    attn = Attention(8, 6, heads=2, head_dim=4, activation="relu")
    x, ctx = torch.randn(1, 5, 8), torch.randn(1, 3, 6)
    q = attn.to_q(x).reshape(1, 5, 2, 4).transpose(1, 2)
    k = attn.to_k(ctx).reshape(1, 3, 2, 4).transpose(1, 2)
    v = attn.to_v(ctx).reshape(1, 3, 2, 4).transpose(1, 2)
    w = torch.relu(q @ k.transpose(-1, -2) / 2.0) / 3
    expected = attn.to_out((w @ v).transpose(1, 2).reshape(1, 5, 8))
    torch.testing.assert_close(attn(x, ctx), expected)


def test_relu_attention_differs_from_softmax_with_the_same_weights() -> None:
    torch.manual_seed(0)
    softmax = UNet(TINY).eval()
    relu = UNet(dataclasses.replace(TINY, attention_activation="relu")).eval()
    relu.load_state_dict(softmax.state_dict())
    args = _inputs(TINY)
    with torch.no_grad():
        diff = (softmax(*args) - relu(*args)).abs().max()
    assert diff > 1e-3


def test_swish_glu_differs_from_gelu_glu() -> None:
    torch.manual_seed(0)
    gelu = GLUFeedForward(8, 2, "gelu")
    swish = GLUFeedForward(8, 2, "swish")
    swish.load_state_dict(gelu.state_dict())
    x = torch.randn(1, 4, 8)
    a, g = swish.proj(x).chunk(2, dim=-1)
    torch.testing.assert_close(swish(x), swish.out(a * torch.nn.functional.silu(g)))
    assert (gelu(x) - swish(x)).abs().max() > 1e-4
    assert gelu.proj.out_features == 2 * 16 and gelu.out.in_features == 16


def test_separable_convs_reduce_parameters_where_asked() -> None:
    config = dataclasses.replace(TINY, separable_conv=(False, True))
    model = UNet(config)
    assert _params(model) < _params(UNet(TINY))
    # Level 1 (down and its mirror up level 0) and the mid block use separable convs...
    for resnet in [*model.down_levels[1].resnets, *model.up_levels[0].resnets, *model.mid.resnets]:
        assert isinstance(resnet.conv1, SeparableConv2d)
        assert isinstance(resnet.conv2, SeparableConv2d)
        assert resnet.conv1.depthwise.groups == resnet.conv1.depthwise.in_channels
    # ... level 0 and the stem, head and resampling convs stay plain.
    for resnet in [*model.down_levels[0].resnets, *model.up_levels[1].resnets]:
        assert isinstance(resnet.conv1, torch.nn.Conv2d)
    assert isinstance(model.down_levels[0].downsample.conv, torch.nn.Conv2d)
    assert isinstance(model.up_levels[0].upsample.conv, torch.nn.Conv2d)


def test_self_attention_off_removes_attn1_at_that_level_only() -> None:
    config = dataclasses.replace(TINY, self_attention=(False, True))
    model = UNet(config)
    for block in _blocks(model.down_levels[0]) + _blocks(model.up_levels[1]):
        assert isinstance(block, TransformerBlock)
        assert block.attn1 is None and block.norm1 is None
    for block in _blocks(model.down_levels[1]) + _blocks(model.up_levels[0]):
        assert block.attn1 is not None
    keys = model.state_dict().keys()
    assert not any(k.startswith("down_levels.0.") and ".attn1." in k for k in keys)
    assert any(k.startswith("mid.") and ".attn1." in k for k in keys)


def test_up_levels_consume_skips_last_produced_first() -> None:
    # Level 0's skip group: [conv_in output (32), resnet output (32)];
    # level 1's: [downsampled level-0 output (32), resnet output (64)].
    default = UNet(TINY)
    assert default.up_levels[0].skip_channels == [64, 32]
    assert default.up_levels[1].skip_channels == [32, 32]
    lean = UNet(dataclasses.replace(TINY, up_layers_per_block=(1, 1)))
    assert lean.up_levels[0].skip_channels == [64]  # the level's input goes unused
    assert lean.up_levels[1].skip_channels == [32]
    deep = UNet(dataclasses.replace(TINY, up_layers_per_block=(3, 2)))
    assert deep.up_levels[1].skip_channels == [32, 32, 0]  # the extra resnet takes no skip
    assert deep.up_levels[1].resnets[2].norm1.num_channels == 32


def test_transformer_depth_zero_means_no_attention() -> None:
    model = UNet(dataclasses.replace(TINY, transformer_depth=(0, 1), mid_transformer_depth=0))
    assert len(model.down_levels[0].attentions) == 0
    assert len(model.up_levels[1].attentions) == 0
    assert model.mid.attention is None
    assert len(model.mid.resnets) == 2


@pytest.mark.parametrize("change", [{"layers_per_block": (0, 1)}, {"up_layers_per_block": (1, 0)}])
def test_levels_without_resnets_are_refused(change: dict) -> None:
    with pytest.raises(ConfigError, match="layers_per_block"):
        UNet(dataclasses.replace(TINY, **change))


def test_exports_to_a_static_graph_without_sdpa() -> None:
    torch.manual_seed(0)
    model = UNet(MOBILE).eval()
    args = _inputs(MOBILE)
    exported = torch.export.export(model, args, strict=False)
    targets = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert not any("scaled_dot_product" in t for t in targets)
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(*args), model(*args))


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks(level: torch.nn.Module) -> list[TransformerBlock]:
    return [block for attn in level.attentions for block in attn.transformer_blocks]
