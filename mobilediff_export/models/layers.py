"""The building blocks shared by the UNet and the VAE decoder, written for export.

Every block here has static shapes and no data-dependent control flow: whatever a block
does is decided by its constructor arguments, so a trace of it is the whole graph.
Attention is spelled out as matmul / softmax (or relu) / matmul rather than calling
``scaled_dot_product_attention``, so the mobile converters see plain ops they can lower
and quantize. The math of each block is that of its diffusers counterpart (named in its
docstring) so that diffusers checkpoints load into it unchanged.

Blocks, from small to large::

    timestep_embedding   t -> [sin | cos] features                (diffusers get_timestep_embedding)
    TimestepEmbedding    Linear -> SiLU -> Linear                 (diffusers TimestepEmbedding)
    conv3x3              Conv2d 3x3, or SeparableConv2d           (MobileDiffusion)
    ResnetBlock          GN-SiLU-conv (+t) GN-SiLU-conv + skip    (diffusers ResnetBlock2D)
    Attention            multi-head q/k/v attention               (diffusers Attention)
    GLUFeedForward       gated-linear-unit MLP                    (diffusers FeedForward, GEGLU)
    TransformerBlock     self-attn, cross-attn, feed-forward      (diffusers BasicTransformerBlock)
    SpatialTransformer   GN, proj_in, N blocks, proj_out, + x     (diffusers Transformer2DModel)
    Downsample           Conv2d 3x3 stride 2                      (diffusers Downsample2D)
    Upsample             nearest x2 -> Conv2d 3x3                 (diffusers Upsample2D)
    SpatialSelfAttention GN, single-head attention, + x           (the VAE's mid-block attention)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FFActivation = Literal["gelu", "swish"]
AttentionActivation = Literal["softmax", "relu"]


# --- time -------------------------------------------------------------------------------


def timestep_embedding(
    timesteps: Tensor,
    dim: int,
    flip_sin_to_cos: bool,
    freq_shift: float,
    max_period: float = 10000.0,
) -> Tensor:
    """Sinusoidal features of a batch of (possibly fractional) timesteps, shape ``[B, dim]``.

    Frequency ``j`` of the ``dim // 2`` is ``max_period ** (-j / (dim // 2 - freq_shift))``;
    the features are ``[sin(t * f), cos(t * f)]``, or ``[cos, sin]`` with ``flip_sin_to_cos``.
    Computed in float32 whatever the model's dtype: timesteps up to ~1000 times the highest
    frequency lose their phase in float16.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32)
    freqs = torch.exp(exponent / (half - freq_shift)).to(timesteps.device)
    angles = timesteps.to(torch.float32)[:, None] * freqs[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedding(nn.Module):
    """The time MLP: ``linear_1 -> SiLU -> linear_2``."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, embed_dim)
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


# --- convolutions -----------------------------------------------------------------------


class SeparableConv2d(nn.Module):
    """A 3x3 convolution factored MobileNet-style into two cheap ones::

        x --depthwise 3x3 (groups = C_in, no bias)--> --pointwise 1x1 (C_in -> C_out)--> y

    It costs ``9*C_in + C_in*C_out`` weights instead of ``9*C_in*C_out``. The depthwise
    conv has no bias because the pointwise conv that follows is linear: a bias there would
    fold into the pointwise bias anyway.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def conv3x3(in_channels: int, out_channels: int, separable: bool = False) -> nn.Module:
    """A same-padded 3x3 convolution, plain or depthwise-separable."""
    if separable:
        return SeparableConv2d(in_channels, out_channels)
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


# --- residual block ---------------------------------------------------------------------


class ResnetBlock(nn.Module):
    """The residual block of both the UNet and the VAE (diffusers ``ResnetBlock2D``)::

        x ─┬─ norm1 ─ SiLU ─ conv1 ─(+ time_emb_proj(temb))─ norm2 ─ SiLU ─ conv2 ─┐
           └──────────────── conv_shortcut (1x1, only when C_in != C_out) ─────────(+)─> y

    ``temb`` must already have passed through SiLU: the UNet applies that activation once
    for all of its blocks instead of once per block (diffusers does the latter; the result
    is the same). With ``temb_dim=None`` (the VAE) the block has no time projection.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_dim: int | None,
        groups: int,
        eps: float,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = conv3x3(in_channels, out_channels, separable)
        self.time_emb_proj = nn.Linear(temb_dim, out_channels) if temb_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = conv3x3(out_channels, out_channels, separable)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_emb_proj is not None:
            assert temb is not None, "this block was built with a time embedding"
            h = h + self.time_emb_proj(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


# --- attention --------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention of ``x`` over ``context`` (over ``x`` itself when it is None).

    ::

        q = to_q(x)                      [B, N, H*D]
        k = to_k(ctx), v = to_v(ctx)     [B, M, H*D]   (shared_kv: k = v = to_kv(ctx))
        per head: w = act(q k^T / sqrt(D)),  o = w v
        y = to_out(concat heads)         [B, N, query_dim]

    ``activation="softmax"`` is ordinary attention. ``activation="relu"`` is the
    MobileDiffusion variant, ``w = relu(q k^T / sqrt(D)) / M`` with ``M`` the key length:
    no exponent and no row-wise max/sum reduction, which mobile accelerators run much
    faster; dividing by ``M`` keeps the weights' scale near softmax's so a softmax model
    can be fine-tuned into it. ``shared_kv`` uses one projection for keys and values,
    saving a matmul over the (long) context. The q/k/v projections have no bias and
    ``to_out`` has one, as in Stable Diffusion.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None,
        heads: int,
        head_dim: int,
        shared_kv: bool = False,
        activation: AttentionActivation = "softmax",
    ) -> None:
        super().__init__()
        if activation not in ("softmax", "relu"):
            raise ValueError(f"unknown attention activation {activation!r}")
        inner = heads * head_dim
        context_dim = context_dim if context_dim is not None else query_dim
        self.heads = heads
        self.head_dim = head_dim
        self.scale = head_dim**-0.5
        self.activation = activation
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        if shared_kv:
            self.to_kv = nn.Linear(context_dim, inner, bias=False)
        else:
            self.to_k = nn.Linear(context_dim, inner, bias=False)
            self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.shared_kv = shared_kv
        self.to_out = nn.Linear(inner, query_dim)

    def _split_heads(self, t: Tensor) -> Tensor:
        batch, length, _ = t.shape
        return t.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        q = self._split_heads(self.to_q(x) * self.scale)
        if self.shared_kv:
            k = v = self._split_heads(self.to_kv(context))
        else:
            k = self._split_heads(self.to_k(context))
            v = self._split_heads(self.to_v(context))

        scores = torch.matmul(q, k.transpose(-1, -2))  # [B, H, N, M]
        if self.activation == "softmax":
            weights = torch.softmax(scores, dim=-1)
        else:
            weights = F.relu(scores) / k.shape[-2]
        out = torch.matmul(weights, v)  # [B, H, N, D]

        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)
        return self.to_out(out)


class GLUFeedForward(nn.Module):
    """The gated feed-forward of a transformer block::

        x -> proj (dim -> 2*inner) -> split [a | g] -> a * act(g) -> out (inner -> dim)

    ``inner = mult * dim``. ``act`` is exact GELU (Stable Diffusion's GEGLU) or Swish
    (SiLU, as MobileDiffusion uses: cheaper, and no erf to approximate on device).
    """

    def __init__(self, dim: int, mult: int, activation: FFActivation = "gelu") -> None:
        super().__init__()
        if activation not in ("gelu", "swish"):
            raise ValueError(f"unknown feed-forward activation {activation!r}")
        inner = mult * dim
        self.activation = activation
        self.proj = nn.Linear(dim, 2 * inner)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        gate = F.gelu(gate) if self.activation == "gelu" else F.silu(gate)
        return self.out(a * gate)


@dataclass(frozen=True)
class TransformerOptions:
    """The transformer knobs that are the same for every attention level of a UNet."""

    context_dim: int
    shared_kv: bool = False
    ff_mult: int = 4
    ff_activation: FFActivation = "gelu"
    attention_activation: AttentionActivation = "softmax"
    use_linear_projection: bool = False


class TransformerBlock(nn.Module):
    """One pre-norm transformer layer over image tokens (diffusers ``BasicTransformerBlock``)::

        x = x + attn1(norm1(x))              self-attention  (absent when self_attention=False)
        x = x + attn2(norm2(x), context)     cross-attention to the text
        x = x + ff(norm3(x))                 GLU feed-forward

    Without self-attention the block keeps only cross-attention and the feed-forward, as
    MobileDiffusion does at its high-resolution levels where self-attention is the costliest.
    """

    def __init__(
        self, dim: int, heads: int, self_attention: bool, options: TransformerOptions
    ) -> None:
        super().__init__()
        head_dim = dim // heads
        if self_attention:
            self.norm1 = nn.LayerNorm(dim)
            self.attn1 = Attention(
                dim,
                None,
                heads,
                head_dim,
                shared_kv=options.shared_kv,
                activation=options.attention_activation,
            )
        else:
            self.norm1 = None
            self.attn1 = None
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            dim,
            options.context_dim,
            heads,
            head_dim,
            shared_kv=options.shared_kv,
            activation=options.attention_activation,
        )
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GLUFeedForward(dim, options.ff_mult, options.ff_activation)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer layers over the pixels of a feature map (diffusers ``Transformer2DModel``)::

        x [B,C,H,W] ─┬─ norm (GroupNorm, eps 1e-6) ─ proj_in ─ tokens [B,HW,C]
                     │     ─ transformer_blocks[0..depth) (context) ─ proj_out ─┐
                     └─────────────────────────────────────────────────────────(+)─> y

    ``proj_in`` / ``proj_out`` are 1x1 convolutions, or linear layers on the tokens with
    ``use_linear_projection`` (SD 2.x-style checkpoints); the two are the same map, but
    the weights keep the layout of the checkpoint they came from.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        depth: int,
        self_attention: bool,
        groups: int,
        options: TransformerOptions,
    ) -> None:
        super().__init__()
        self.use_linear_projection = options.use_linear_projection
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        if self.use_linear_projection:
            self.proj_in: nn.Module = nn.Linear(channels, channels)
            self.proj_out: nn.Module = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, 1)
            self.proj_out = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, self_attention, options) for _ in range(depth)
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        if self.use_linear_projection:
            h = self.proj_in(h)

        for block in self.transformer_blocks:
            h = block(h, context)

        if self.use_linear_projection:
            h = self.proj_out(h)
        h = h.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        if not self.use_linear_projection:
            h = self.proj_out(h)
        return x + h


# --- resampling -------------------------------------------------------------------------


class Downsample(nn.Module):
    """Halve the resolution: a 3x3 convolution with stride 2 and padding 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# --- the VAE's attention ----------------------------------------------------------------


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over the pixels, as in the VAE's mid block::

        x [B,C,H,W] ─┬─ group_norm ─ tokens [B,HW,C] ─ to_q/to_k/to_v ─ softmax(q k^T / sqrt(C)) v
                     │                                 ─ to_out ─ [B,C,H,W] ─┐
                     └──────────────────────────────────────────────────────(+)─> y

    Unlike the UNet's attention all four projections have a bias.
    """

    def __init__(self, channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.scale = channels**-0.5
        self.group_norm = nn.GroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).reshape(batch, channels, height * width).transpose(1, 2)
        q = self.to_q(h) * self.scale
        k = self.to_k(h)
        v = self.to_v(h)
        weights = torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1)
        h = self.to_out(torch.matmul(weights, v))
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        return x + h
