"""The denoising UNet: Stable Diffusion's layout with MobileDiffusion's knobs.

Same structure and math as diffusers' ``UNet2DConditionModel`` with cross-attention
blocks, so SD-1.5-family checkpoints load unchanged; the ``UNetConfig`` knobs then make
it MobileDiffusion (fewer resnets, no attention at high resolution, self-attention
dropped where only cross-attention pays off, shared K/V, ReLU attention, Swish GLU,
separable convolutions). For ``L`` levels with channels ``c[0..L)``::

    sample [B,in,H,W]         timestep [B] or []          context [B,S,D]
         │                         │                          │ (every transformer)
      conv_in (c0)          sinusoid(c0) ─ time MLP ─ SiLU = temb (every resnet)
         │
         ├──────────────────────────────────── skip group 0: the level's input ─┐
    down_levels[0]: layers_per_block[0] x ( ResnetBlock ─ SpatialTransformer? )   │
         │   each output ────────────────────────────────── skip group 0 ───────┤
      Downsample (3x3, stride 2)                                                 │
         ├──────────────────────────────────── skip group 1 ─────────────┐       │
    down_levels[1] ... down_levels[L-1]  (no Downsample after the last)   │       │
         │                                                                │       │
    mid: ResnetBlock ─ SpatialTransformer ─ ResnetBlock   (optional)      │       │
         │                                                                │       │
    up_levels[0]   mirrors level L-1, consumes skip group L-1 ...         │       │
      ... Upsample (nearest x2, 3x3)                                      │       │
    up_levels[L-2] mirrors level 1, consumes skip group 1 <───────────────┘       │
      Upsample                                                                    │
    up_levels[L-1] mirrors level 0, consumes skip group 0 <───────────────────────┘
         │
    norm_out (GroupNorm) ─ SiLU ─ conv_out ─> [B,out,H,W]

Skip connections. Down level ``i`` produces a *skip group* of ``layers_per_block[i] + 1``
feature maps at its resolution: the level's input (``conv_in``'s output for level 0, the
previous level's Downsample output otherwise), then each resnet(+transformer) output.
Up level ``i`` has ``resolved_up_layers_per_block[i]`` resnets; each concatenates one
skip of group ``i`` to its input, last-produced first (as diffusers does). With the
default ``layers_per_block[i] + 1`` resnets the whole group is consumed, exactly as in
Stable Diffusion. With fewer (MobileDiffusion's lean up path), the earliest-produced maps
of the group go unused (the level's input first); with more, the extra resnets take no
skip. Which skip feeds which resnet is fixed at construction, so the graph is static.

Per-level knobs (index ``i`` in down order) apply to down level ``i`` and its mirror up
level: ``transformer_depth`` / ``up_transformer_depth`` (0 = no attention),
``self_attention``, ``num_heads``, ``separable_conv`` (the resnets' 3x3 convs only;
``conv_in``, ``conv_out`` and the resampling convs stay plain). The mid block takes the
innermost level's ``num_heads`` and ``separable_conv``; with ``mid_transformer_depth ==
0`` it is two resnets without attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import UNetConfig
from ..errors import ConfigError
from .layers import (
    Downsample,
    ResnetBlock,
    SpatialTransformer,
    TimestepEmbedding,
    TransformerOptions,
    Upsample,
    timestep_embedding,
)


def _resnet(
    config: UNetConfig, in_channels: int, out_channels: int, separable: bool
) -> ResnetBlock:
    return ResnetBlock(
        in_channels,
        out_channels,
        temb_dim=config.resolved_time_embed_dim,
        groups=config.norm_num_groups,
        eps=config.norm_eps,
        separable=separable,
    )


class DownLevel(nn.Module):
    """One resolution of the down path::

    x ─ (ResnetBlock ─ SpatialTransformer?) x num_layers ─ Downsample? ─> next level
                      └─ each output is a skip connection
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        depth: int,
        heads: int,
        self_attention: bool,
        separable: bool,
        downsample: bool,
        config: UNetConfig,
        options: TransformerOptions,
    ) -> None:
        super().__init__()
        groups = config.norm_num_groups
        self.resnets = nn.ModuleList(
            _resnet(config, in_channels if k == 0 else out_channels, out_channels, separable)
            for k in range(num_layers)
        )
        self.attentions = nn.ModuleList(
            SpatialTransformer(out_channels, heads, depth, self_attention, groups, options)
            for _ in range(num_layers if depth > 0 else 0)
        )
        self.downsample = Downsample(out_channels) if downsample else None

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> tuple[list[Tensor], Tensor]:
        """Returns the outputs of each resnet(+transformer), and the input of the next level."""
        features = []
        for k, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if len(self.attentions):
                x = self.attentions[k](x, context)
            features.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return features, x


class MidBlock(nn.Module):
    """The bottleneck: ``ResnetBlock ─ SpatialTransformer? ─ ResnetBlock``."""

    def __init__(self, channels: int, config: UNetConfig, options: TransformerOptions) -> None:
        super().__init__()
        groups = config.norm_num_groups
        separable = config.separable_conv[-1]
        self.resnets = nn.ModuleList(
            _resnet(config, channels, channels, separable) for _ in range(2)
        )
        self.attention = (
            SpatialTransformer(
                channels,
                config.num_heads[-1],
                config.mid_transformer_depth,
                config.mid_self_attention,
                groups,
                options,
            )
            if config.mid_transformer_depth > 0
            else None
        )

    def forward(self, x: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)
        if self.attention is not None:
            x = self.attention(x, context)
        return self.resnets[1](x, temb)


class UpLevel(nn.Module):
    """One resolution of the up path::

        x ─ (concat skip? ─ ResnetBlock ─ SpatialTransformer?) x num_layers ─ Upsample? ─>

    ``skip_channels[k]`` is the width of the skip resnet ``k`` concatenates (0: none);
    skips are taken from the level's skip group last-produced first.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        skip_channels: list[int],
        depth: int,
        heads: int,
        self_attention: bool,
        separable: bool,
        upsample: bool,
        config: UNetConfig,
        options: TransformerOptions,
    ) -> None:
        super().__init__()
        groups = config.norm_num_groups
        self.skip_channels = list(skip_channels)
        self.resnets = nn.ModuleList(
            _resnet(
                config, (in_channels if k == 0 else out_channels) + skip, out_channels, separable
            )
            for k, skip in enumerate(self.skip_channels)
        )
        self.attentions = nn.ModuleList(
            SpatialTransformer(out_channels, heads, depth, self_attention, groups, options)
            for _ in range(len(self.skip_channels) if depth > 0 else 0)
        )
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor, temb: Tensor, context: Tensor, skip_group: list[Tensor]) -> Tensor:
        skips = skip_group[::-1]
        for k, resnet in enumerate(self.resnets):
            if self.skip_channels[k]:
                x = torch.cat([x, skips[k]], dim=1)
            x = resnet(x, temb)
            if len(self.attentions):
                x = self.attentions[k](x, context)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


def _check_buildable(config: UNetConfig) -> None:
    for name, values in (
        ("layers_per_block", config.layers_per_block),
        ("up_layers_per_block", config.resolved_up_layers_per_block),
    ):
        for i, n in enumerate(values):
            if n < 1:
                raise ConfigError(f"unet.{name}[{i}] must be at least 1, got {n}")
    for name, values in (
        ("transformer_depth", config.transformer_depth),
        ("up_transformer_depth", config.resolved_up_transformer_depth),
        ("mid_transformer_depth", (config.mid_transformer_depth,)),
    ):
        for n in values:
            if n < 0:
                raise ConfigError(f"unet.{name} must not be negative, got {n}")


class UNet(nn.Module):
    """``forward(sample [B,C,H,W], timestep [B] or [], context [B,S,D]) -> [B,C_out,H,W]``.

    See the module docstring for the structure. ``up_levels[j]`` mirrors down level
    ``L-1-j`` (innermost first, the order the forward pass visits them).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        _check_buildable(config)
        self.config = config
        channels = config.block_out_channels
        levels = config.num_levels
        options = TransformerOptions(
            context_dim=config.cross_attention_dim,
            shared_kv=config.shared_kv,
            ff_mult=config.ff_mult,
            ff_activation=config.ff_activation,
            attention_activation=config.attention_activation,
            use_linear_projection=config.use_linear_projection,
        )

        self.conv_in = nn.Conv2d(config.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], config.resolved_time_embed_dim)

        # Down path; remember the widths of each level's skip group for the up path.
        self.down_levels = nn.ModuleList()
        skip_group_channels: list[list[int]] = []
        for i in range(levels):
            in_ch = channels[max(i - 1, 0)]
            self.down_levels.append(
                DownLevel(
                    in_ch,
                    channels[i],
                    config.layers_per_block[i],
                    config.transformer_depth[i],
                    config.num_heads[i],
                    config.self_attention[i],
                    config.separable_conv[i],
                    downsample=i < levels - 1,
                    config=config,
                    options=options,
                )
            )
            skip_group_channels.append([in_ch] + [channels[i]] * config.layers_per_block[i])

        self.mid = MidBlock(channels[-1], config, options) if config.mid_block else None

        # Up path, innermost level first.
        self.up_levels = nn.ModuleList()
        prev_ch = channels[-1]
        for i in reversed(range(levels)):
            consumed = skip_group_channels[i][::-1]
            num_layers = config.resolved_up_layers_per_block[i]
            skip_channels = [consumed[k] if k < len(consumed) else 0 for k in range(num_layers)]
            self.up_levels.append(
                UpLevel(
                    prev_ch,
                    channels[i],
                    skip_channels,
                    config.resolved_up_transformer_depth[i],
                    config.num_heads[i],
                    config.self_attention[i],
                    config.separable_conv[i],
                    upsample=i > 0,
                    config=config,
                    options=options,
                )
            )
            prev_ch = channels[i]

        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(channels[0], config.out_channels, 3, padding=1)

    def forward(self, sample: Tensor, timestep: Tensor | float, context: Tensor) -> Tensor:
        config = self.config
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32, device=sample.device)
        t = t.reshape(-1).expand(batch)
        features = timestep_embedding(
            t, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift
        )
        temb = F.silu(self.time_embedding(features.to(sample.dtype)))
        return denoise_from_temb(self, sample, temb, context)


def denoise_from_temb(net: nn.Module, sample: Tensor, temb: Tensor, context: Tensor) -> Tensor:
    """Everything of ``UNet.forward`` after the time embedding ``temb`` ([B, D], after the
    SiLU): conv_in, the down levels with their skips, mid, the up levels, the output head.

    ``net`` is a ``UNet`` or a rewrite of one that holds the same children under the same
    names (``rewrite.FoldedTimestepUNet``, whose embedding is a table lookup).
    """
    h = net.conv_in(sample)
    skip_groups: list[list[Tensor]] = []
    for level in net.down_levels:
        level_input = h
        outputs, h = level(h, temb, context)
        skip_groups.append([level_input, *outputs])

    if net.mid is not None:
        h = net.mid(h, temb, context)

    for level, skip_group in zip(net.up_levels, reversed(skip_groups), strict=True):
        h = level(h, temb, context, skip_group)

    return net.conv_out(F.silu(net.norm_out(h)))
