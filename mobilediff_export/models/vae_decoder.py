"""The VAE decoder: latents to pixels (the decoder half of diffusers' ``AutoencoderKL``).

``forward(latent)`` equals ``AutoencoderKL.decode(latent).sample``: the caller divides the
latent by the VAE scaling factor first, and the output is in [-1, 1] only approximately
(no clamp here; the pipeline clamps). With ``c = block_out_channels`` (encoder order,
``L`` levels) the decoder walks the channels backwards::

    latent [B,latent,h,w]
       │
    post_quant_conv (1x1, optional)
    conv_in (3x3) ─> c[L-1]
       │
    mid: ResnetBlock ─ SpatialSelfAttention? ─ ResnetBlock        at h x w
       │
    up_levels[0]:   (layers_per_block + 1) x ResnetBlock ─> c[L-1] ─ Upsample (x2)
    up_levels[1]:   (layers_per_block + 1) x ResnetBlock ─> c[L-2] ─ Upsample (x2)
       ...
    up_levels[L-1]: (layers_per_block + 1) x ResnetBlock ─> c[0]   (no Upsample)
       │
    norm_out (GroupNorm) ─ SiLU ─ conv_out (3x3) ─> [B,out,h*2^(L-1),w*2^(L-1)]

All GroupNorms use eps 1e-6, as diffusers' VAE does. ``separable_conv`` makes the
resnets' 3x3 convolutions depthwise-separable; ``conv_in``, ``conv_out`` and the
upsampling convolutions stay plain. At 512x512 the decoder's cost is dominated by the
last (full-resolution) level, which is what a light config must shrink.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from ..config import VAEDecoderConfig
from ..errors import ConfigError
from .layers import ResnetBlock, SpatialSelfAttention, Upsample

VAE_NORM_EPS = 1e-6


def _resnet(config: VAEDecoderConfig, in_channels: int, out_channels: int) -> ResnetBlock:
    return ResnetBlock(
        in_channels,
        out_channels,
        temb_dim=None,
        groups=config.norm_num_groups,
        eps=VAE_NORM_EPS,
        separable=config.separable_conv,
    )


class VAEMidBlock(nn.Module):
    """``ResnetBlock ─ SpatialSelfAttention? ─ ResnetBlock`` at the latent resolution."""

    def __init__(self, channels: int, config: VAEDecoderConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(_resnet(config, channels, channels) for _ in range(2))
        self.attention = (
            SpatialSelfAttention(channels, config.norm_num_groups, VAE_NORM_EPS)
            if config.mid_attention
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class VAEUpLevel(nn.Module):
    """``num_layers x ResnetBlock (in -> out, then out -> out) ─ Upsample?``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        upsample: bool,
        config: VAEDecoderConfig,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            _resnet(config, in_channels if k == 0 else out_channels, out_channels)
            for k in range(num_layers)
        )
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class VAEDecoder(nn.Module):
    """``forward(latent [B,latent_channels,h,w]) -> image [B,out_channels,h*f,w*f]``.

    ``f = config.upscale_factor``. See the module docstring for the structure.
    """

    def __init__(self, config: VAEDecoderConfig) -> None:
        super().__init__()
        if not config.block_out_channels:
            raise ConfigError("vae_decoder.block_out_channels needs at least one level")
        if config.layers_per_block < 0:
            raise ConfigError(
                f"vae_decoder.layers_per_block must not be negative, got {config.layers_per_block}"
            )
        self.config = config
        channels = list(reversed(config.block_out_channels))
        levels = len(channels)

        self.post_quant_conv = (
            nn.Conv2d(config.latent_channels, config.latent_channels, 1)
            if config.use_post_quant_conv
            else None
        )
        self.conv_in = nn.Conv2d(config.latent_channels, channels[0], 3, padding=1)
        self.mid = VAEMidBlock(channels[0], config)

        self.up_levels = nn.ModuleList()
        prev_ch = channels[0]
        for j, ch in enumerate(channels):
            self.up_levels.append(
                VAEUpLevel(prev_ch, ch, config.layers_per_block + 1, j < levels - 1, config)
            )
            prev_ch = ch

        self.norm_out = nn.GroupNorm(config.norm_num_groups, channels[-1], eps=VAE_NORM_EPS)
        self.conv_out = nn.Conv2d(channels[-1], config.out_channels, 3, padding=1)

    def forward(self, latent: Tensor) -> Tensor:
        h = latent
        if self.post_quant_conv is not None:
            h = self.post_quant_conv(h)
        h = self.mid(self.conv_in(h))
        for level in self.up_levels:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
