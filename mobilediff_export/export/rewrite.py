"""Mobile graph rewrites: the same networks, restated in the forms each runtime runs best.

Every rewrite is a module swap on a copy of the network, switchable on its own, and keeps
the math (exactly, or within float rounding; the tests measure each one)::

    rewrite          what changes                                       for
    ---------------  -------------------------------------------------  ----------------------
    attention        "default": batched heads, matmul/softmax/matmul    every target
                     "split_heads": one matmul pair per head, no 4-D    Apple Neural Engine
                       head transposes (Apple's SPLIT_EINSUM)
                     "sdpa": the odml.scaled_dot_product_attention      LiteRT GPU delegate
                       composite (softmax attention only; ReLU
                       attention has no SDPA form and stays explicit)
    fuse_qkv         one projection for q|k|v (self-attention) or k|v   fewer, larger GEMMs
                       (cross-attention); q|kv with shared K/V
    group_norm       "decomposed": mean / variance / rsqrt spelled out  targets without a fused
                                                                        GroupNorm kernel
    gelu_tanh        exact GELU -> tanh approximation (GLU gate, CLIP   no erf on device
                       MLP with hidden_act="gelu")
    linear_as_conv   transformers run channels-first, [B, C, 1, N]:     Apple Neural Engine
                       every linear a 1x1 conv, LayerNorm over dim 1,
                       no token-major transposes inside a block
    phase_upsample   nearest x2 + 3x3 conv -> one 2x2 conv on the       CPU (XNNPACK): 2.25x
                       low-resolution map with the four output phases    fewer MACs in the
                       as its channels, interleaved (sub-pixel conv)     costliest convs
    winograd         3x3 convs as Winograd F(2x2, 3x3): 16 GEMMs of     CPU (XNNPACK), fp32:
                       the transformed input, 4 MACs per output pixel    2.25x fewer MACs; on
                       instead of 9; upsamplers as 9 GEMMs at the input   by default for fp32
                       resolution (takes them before phase_upsample)     weights
    split_linear     linear layers with weights past 4.5 MiB as blocks  CPU (XNNPACK), fp32:
                       of 512 output features, concatenated (the same    blocks stay in L2;
                       math, bit for bit)                                on by default for
                                                                         fp32 weights
    fold_timesteps   the time embedding of each timestep of a fixed     one gather instead of
                       list is precomputed; the UNet takes the int32     sin/cos + an MLP
                       step index instead of the timestep

``apply_rewrites`` never touches the module it is given: it returns a new module tree
whose parameters are *shared* with the original wherever a rewrite keeps them (views, no
copies: a paper-size UNet must not be held twice in memory) and new tensors only where a
rewrite builds them (fused projections, the folded time table). Nothing is modified in
place, so the original stays valid.

With ``fold_timesteps`` the UNet's manifest I/O changes: the input ``timestep`` (float32,
(B,)) is replaced by ``step_index`` (int32, (B,), layout N), the position of the current
timestep in the manifest's timestep list; ``rewritten_io`` gives the specs.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..models import layers
from ..models.text_encoder import CLIPMLP, CLIPAttention, CLIPTextEncoder, quick_gelu
from ..models.unet import UNet, denoise_from_temb
from .artifacts import Component, Target, TensorSpec
from .signatures import ComponentIO, component_io

AttentionForm = Literal["default", "split_heads", "sdpa"]
GroupNormForm = Literal["default", "decomposed"]
ATTENTION_FORMS: tuple[str, ...] = ("default", "split_heads", "sdpa")
GROUP_NORM_FORMS: tuple[str, ...] = ("default", "decomposed")


@dataclass(frozen=True)
class RewriteOptions:
    """Which rewrites to apply before conversion; the defaults change nothing."""

    attention: AttentionForm = "default"
    fuse_qkv: bool = False
    group_norm: GroupNormForm = "default"
    gelu_tanh: bool = False
    linear_as_conv: bool = False
    phase_upsample: bool = False
    winograd: bool | None = False
    """None: the converter decides by recipe (``settle_for_weights``): on for fp32 weights."""
    split_linear: bool | None = False
    """Large linear layers as 512-feature column blocks; None: as ``winograd``."""
    fold_timesteps: tuple[float, ...] | None = None
    """The manifest's timestep list; the UNet then takes an int32 index into it."""

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_FORMS:
            raise ConfigError(
                f"rewrite attention must be one of {', '.join(ATTENTION_FORMS)}; "
                f"got {self.attention!r}"
            )
        if self.group_norm not in GROUP_NORM_FORMS:
            raise ConfigError(
                f"rewrite group_norm must be one of {', '.join(GROUP_NORM_FORMS)}; "
                f"got {self.group_norm!r}"
            )
        if self.attention == "sdpa" and self.linear_as_conv:
            raise ConfigError(
                "rewrite attention='sdpa' needs token-major [B, N, C] tensors, but "
                "linear_as_conv runs transformers channels-first; pick one of the two"
            )
        if self.fold_timesteps is not None:
            if not self.fold_timesteps:
                raise ConfigError("rewrite fold_timesteps needs at least one timestep")
            object.__setattr__(self, "fold_timesteps", tuple(float(t) for t in self.fold_timesteps))


DEFAULT_REWRITES: dict[str, RewriteOptions] = {
    # XNNPACK on CPU: fewer, larger GEMMs (one dynamic quantization of each attention
    # input instead of two or three), and GroupNorm without the broadcasts litert-torch
    # wraps its own lowering in (a quarter fewer ops on the tiny decoder). Exact GELU
    # already lowers to TFLite's GELU op: gelu_tanh would cost fp32 parity for nothing.
    # XNNPACK's fp32 3x3 convolution runs at ~60% of ONNX Runtime's on an AVX-512 host, and
    # the upsamplers' convs, at the output resolution, are the costliest in the UNet and
    # the decoder: phase_upsample runs them at the input resolution with 2.25x fewer MACs.
    # With fp32 weights Winograd goes further (4 MACs per output pixel instead of 9 in the
    # 3x3 convs, 2.25 instead of 4 in the upsamplers), as GEMMs XNNPACK runs well; int8
    # recipes keep the direct convs (transformed weights quantize worse) and fp16, the
    # GPU delegate's recipe, keeps the convs the delegate runs natively.
    # XNNPACK's GEMM sweeps all of a layer's weights for every 7 rows of input, so a
    # weight past the L2 cache is read from L3 again and again: the large fp32 linear
    # layers run 10-25% faster as 512-feature column blocks (split_linear, same math).
    "tflite": RewriteOptions(
        fuse_qkv=True,
        group_norm="decomposed",
        phase_upsample=True,
        winograd=None,
        split_linear=None,
    ),
    # The Neural Engine: channels-first transformers and per-head attention (Apple's
    # ml-stable-diffusion layout).
    "coreml": RewriteOptions(attention="split_heads", linear_as_conv=True),
    # The host reference: the network exactly as PyTorch runs it.
    "onnx": RewriteOptions(),
}


def settle_for_weights(options: RewriteOptions, weights: str) -> RewriteOptions:
    """``options`` with the by-recipe rewrites settled for a recipe whose weights are
    ``weights``: ``winograd`` and ``split_linear`` None (the LiteRT defaults) become on
    for fp32 weights and off otherwise.

    An explicit ``winograd`` with int8 weights is refused: the transformed kernels
    G g G^T mix each filter's taps, so their int8 ranges grow and the accuracy of every
    recipe's figure would no longer be the recipe's. ``split_linear`` is exact for every
    recipe (per-channel quantization sees the same rows), so it is never refused.
    """
    fp32 = weights == "fp32"
    if options.winograd is None:
        options = replace(options, winograd=fp32)
    if options.split_linear is None:
        options = replace(options, split_linear=fp32)
    if options.winograd and weights not in ("fp32", "fp16"):
        raise ConfigError(
            f"rewrite winograd is for float weights; this recipe's weights are {weights} "
            "(leave winograd off, or use fp32/fp16)"
        )
    return options


# --- helpers --------------------------------------------------------------------------


def _frozen(t: Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach(), requires_grad=False)


def _conv1x1(linear: nn.Linear | nn.Conv2d) -> nn.Conv2d:
    """A 1x1 convolution computing what ``linear`` computes, sharing its weight storage."""
    if isinstance(linear, nn.Conv2d):
        return linear
    out_features, in_features = linear.weight.shape
    with torch.device("meta"):
        conv = nn.Conv2d(in_features, out_features, 1, bias=linear.bias is not None)
    conv.weight = _frozen(linear.weight[:, :, None, None])
    if linear.bias is not None:
        conv.bias = _frozen(linear.bias)
    return conv


def _fused(parts: list[nn.Linear]) -> nn.Linear:
    """One linear layer whose output is the concatenation of ``parts``' outputs."""
    bias = [p.bias for p in parts]
    with torch.device("meta"):
        fused = nn.Linear(
            parts[0].in_features,
            sum(p.out_features for p in parts),
            bias=bias[0] is not None,
        )
    fused.weight = _frozen(torch.cat([p.weight for p in parts]))
    if bias[0] is not None:
        fused.bias = _frozen(torch.cat(bias))
    return fused


def _share_copy(module: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are the original tensors."""
    memo: dict[int, object] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        memo[id(tensor)] = tensor
    return copy.deepcopy(module, memo)


# --- attention ------------------------------------------------------------------------


def _sdpa_composite(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None):
    """SDPA on [B, N, H, D] tensors, marked as LiteRT's ``odml.scaled_dot_product_attention``.

    The marks are litert-torch's custom ops, so they are only placed when litert-torch is
    loaded (``tflite.convert_tflite`` loads it before rewriting). Otherwise this is plain
    ``F.scaled_dot_product_attention``, which is what the Core ML and ONNX converters
    recognise, and eager PyTorch computes the same numbers either way.
    """
    builder = None
    if "litert_torch" in sys.modules:
        from litert_torch.hlfb import StableHLOCompositeBuilder

        builder = StableHLOCompositeBuilder(
            name="odml.scaled_dot_product_attention", attr={"scale": scale}
        )
        if mask is None:
            q, k, v = builder.mark_inputs(q, k, v)
        else:
            q, k, v, mask = builder.mark_inputs(q, k, v, mask)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    ).transpose(1, 2)
    if builder is not None:
        out = builder.mark_outputs(out)
    return out


def _weights(scores: Tensor, activation: str, keys: int, dim: int) -> Tensor:
    if activation == "softmax":
        return torch.softmax(scores, dim=dim)
    return F.relu(scores) / keys


class MobileAttention(nn.Module):
    """Multi-head attention in a chosen form, layout and projection fusion.

    ``layout="tokens"``: x [B, N, C], context [B, M, C_ctx] (the networks' own layout).
    ``layout="channels_first"``: x [B, C, 1, N], context [B, C_ctx, 1, M]; projections are
    1x1 convolutions. ``mask`` is an additive [N, M] mask (the text encoder's causal mask).
    ``kind`` says whether keys come from x ("self") or from the context ("cross"), which
    decides what ``fuse_qkv`` may fuse. The query is scaled after its projection, as in the
    original modules, except for SDPA, which takes the scale as an argument.
    """

    def __init__(
        self,
        *,
        q: nn.Linear,
        k: nn.Linear,
        v: nn.Linear | None,
        out: nn.Linear,
        heads: int,
        scale: float,
        activation: str,
        kind: Literal["self", "cross"],
        form: str,
        fuse: bool,
        layout: Literal["tokens", "channels_first"],
    ) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = q.out_features // heads
        self.scale = scale
        self.activation = activation
        self.form = form if not (form == "sdpa" and activation != "softmax") else "default"
        self.layout = layout
        self.shared_kv = v is None
        kv = [k] if v is None else [k, v]
        proj = _conv1x1 if layout == "channels_first" else (lambda m: m)
        if fuse and kind == "self":
            self.to_qkv = proj(_fused([q, *kv]))
        elif fuse and kind == "cross" and len(kv) == 2:
            self.to_q = proj(q)
            self.to_kv = proj(_fused(kv))
        else:
            self.to_q = proj(q)
            if len(kv) == 2:
                self.to_k, self.to_v = proj(k), proj(v)
            else:
                self.to_kv = proj(k)
        self.to_out = proj(out)
        self.fused = hasattr(self, "to_qkv") or (fuse and hasattr(self, "to_kv") and v is not None)

    def _project(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        inner = self.heads * self.head_dim
        dim = 1 if self.layout == "channels_first" else -1
        if hasattr(self, "to_qkv"):
            qkv = self.to_qkv(x)
            if self.shared_kv:
                q, k = qkv.split([inner, inner], dim=dim)
                return q, k, k
            q, k, v = qkv.split([inner, inner, inner], dim=dim)
            return q, k, v
        source = x if context is None else context
        q = self.to_q(x)
        if hasattr(self, "to_k"):
            return q, self.to_k(source), self.to_v(source)
        kv = self.to_kv(source)
        if self.shared_kv:
            return q, kv, kv
        k, v = kv.split([inner, inner], dim=dim)
        return q, k, v

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None):
        q, k, v = self._project(x, context)
        if self.layout == "channels_first":
            out = self._channels_first(q * self.scale, k, v, mask)
        elif self.form == "sdpa":
            out = self._sdpa(q, k, v, mask)
        elif self.form == "split_heads":
            out = self._split_heads_tokens(q * self.scale, k, v, mask)
        else:
            out = self._batched_tokens(q * self.scale, k, v, mask)
        return self.to_out(out)

    def _batched_tokens(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        batch, length, _ = q.shape
        keys = k.shape[1]
        if batch * self.heads == 1 and length % 2 == 0:
            return self._query_halves(q, k, v, mask)
        q = q.reshape(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(batch, keys, self.heads, self.head_dim).transpose(1, 2)
        v = v.reshape(batch, keys, self.heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2))
        if mask is not None:
            scores = scores + mask
        out = torch.matmul(_weights(scores, self.activation, keys, -1), v)
        return out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim)

    def _query_halves(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """One head at batch 1, the queries' two halves as a batch of two.

        With nothing to batch over, litert-torch lowers ``q @ k^T`` to a FULLY_CONNECTED
        whose weight is the key tensor; XNNPACK takes only constant weights, so the scores
        run in TFLite's own kernels, outside the delegate (the paper decoder's 4096-token
        attention: 381 ms, against 77 ms in this form). As a batch of two both products
        stay BATCH_MATMULs, the keys and values broadcast over it; every query row still
        meets the same keys, so the result is the same.
        """
        _, length, dim = q.shape
        keys = k.shape[1]
        scores = torch.matmul(q.reshape(2, length // 2, dim), k.transpose(-1, -2))
        if mask is not None:
            scores = scores + mask.reshape(2, length // 2, keys)
        out = torch.matmul(_weights(scores, self.activation, keys, -1), v)
        return out.reshape(1, length, dim)

    def _split_heads_tokens(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        keys = k.shape[1]
        outs = []
        for qh, kh, vh in zip(
            q.split(self.head_dim, -1),
            k.split(self.head_dim, -1),
            v.split(self.head_dim, -1),
            strict=True,
        ):
            scores = torch.matmul(qh, kh.transpose(-1, -2))  # [B, N, M]
            if mask is not None:
                scores = scores + mask
            outs.append(torch.matmul(_weights(scores, self.activation, keys, -1), vh))
        return torch.cat(outs, dim=-1)

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        batch, length, _ = q.shape
        keys = k.shape[1]
        out = _sdpa_composite(
            q.reshape(batch, length, self.heads, self.head_dim),
            k.reshape(batch, keys, self.heads, self.head_dim),
            v.reshape(batch, keys, self.heads, self.head_dim),
            self.scale,
            mask,
        )
        return out.reshape(batch, length, self.heads * self.head_dim)

    def _channels_first(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        keys = k.shape[-1]
        if self.form == "split_heads":
            # Apple's SPLIT_EINSUM: per head, [B, D, 1, N] x [B, D, 1, M] -> [B, M, 1, N];
            # the softmax runs over the key axis, which sits where channels are.
            mask_km = None if mask is None else mask.transpose(0, 1)[None, :, None, :]
            outs = []
            for qh, kh, vh in zip(
                q.split(self.head_dim, 1),
                k.split(self.head_dim, 1),
                v.split(self.head_dim, 1),
                strict=True,
            ):
                scores = torch.einsum("bchq,bchk->bkhq", qh, kh)
                if mask_km is not None:
                    scores = scores + mask_km
                weights = _weights(scores, self.activation, keys, 1)
                outs.append(torch.einsum("bkhq,bchk->bchq", weights, vh))
            return torch.cat(outs, dim=1)
        batch, _, _, length = q.shape
        d = self.head_dim
        qh = q.reshape(batch, self.heads, d, length).transpose(-1, -2)  # [B, H, N, D]
        kh = k.reshape(batch, self.heads, d, keys)  # [B, H, D, M]
        vh = v.reshape(batch, self.heads, d, keys)
        scores = torch.matmul(qh, kh)  # [B, H, N, M]
        if mask is not None:
            scores = scores + mask
        weights = _weights(scores, self.activation, keys, -1)
        out = torch.matmul(vh, weights.transpose(-1, -2))  # [B, H, D, N]
        return out.reshape(batch, self.heads * d, 1, length)


def _from_unet_attention(
    attn: layers.Attention, kind: Literal["self", "cross"], options: RewriteOptions
) -> MobileAttention:
    return MobileAttention(
        q=attn.to_q,
        k=attn.to_kv if attn.shared_kv else attn.to_k,
        v=None if attn.shared_kv else attn.to_v,
        out=attn.to_out,
        heads=attn.heads,
        scale=attn.scale,
        activation=attn.activation,
        kind=kind,
        form=options.attention,
        fuse=options.fuse_qkv,
        layout="channels_first" if options.linear_as_conv else "tokens",
    )


class _CLIPSelfAttention(MobileAttention):
    """``CLIPAttention``'s call signature, ``attn(x, mask)``."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x, None, mask)


def _from_clip_attention(attn: CLIPAttention, options: RewriteOptions) -> _CLIPSelfAttention:
    return _CLIPSelfAttention(
        q=attn.q_proj,
        k=attn.k_proj,
        v=attn.v_proj,
        out=attn.out_proj,
        heads=attn.num_heads,
        scale=attn.scale,
        activation="softmax",
        kind="self",
        form=options.attention,
        fuse=options.fuse_qkv,
        layout="channels_first" if options.linear_as_conv else "tokens",
    )


class MobileSpatialSelfAttention(nn.Module):
    """The VAE's mid-block attention (``layers.SpatialSelfAttention``) around a MobileAttention.

    Channels-first, the feature map is already the [B, C, 1, HW] layout the 1x1
    projections want: no transposes at all.
    """

    def __init__(self, original: layers.SpatialSelfAttention, options: RewriteOptions) -> None:
        super().__init__()
        self.group_norm = original.group_norm
        self.channels_first = options.linear_as_conv
        self.attention = MobileAttention(
            q=original.to_q,
            k=original.to_k,
            v=original.to_v,
            out=original.to_out,
            heads=1,
            scale=original.scale,
            activation="softmax",
            kind="self",
            form=options.attention,
            fuse=options.fuse_qkv,
            layout="channels_first" if options.linear_as_conv else "tokens",
        )

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x).reshape(batch, channels, height * width)
        if self.channels_first:
            h = self.attention(h[:, :, None, :]).reshape(batch, channels, height, width)
        else:
            h = self.attention(h.transpose(1, 2))
            h = h.transpose(1, 2).reshape(batch, channels, height, width)
        return x + h


# --- channels-first transformers (linear_as_conv) -------------------------------------


class ChannelLayerNorm(nn.Module):
    """LayerNorm over dim 1 of a [B, C, 1, N] tensor (the ANE's layout), same weights."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.bias = norm.bias
        self.eps = norm.eps

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=1, keepdim=True)
        centered = x - mean
        var = (centered * centered).mean(dim=1, keepdim=True)
        out = centered * torch.rsqrt(var + self.eps)
        return out * self.weight[None, :, None, None] + self.bias[None, :, None, None]


def _gate(x: Tensor, activation: str) -> Tensor:
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "quick_gelu":
        return quick_gelu(x)
    return F.silu(x)


class ChannelsFirstFeedForward(nn.Module):
    """``GLUFeedForward`` (gated) or ``CLIPMLP`` (plain) as 1x1 convs on [B, C, 1, N]."""

    def __init__(self, first: nn.Linear, second: nn.Linear, activation: str, gated: bool):
        super().__init__()
        self.proj = _conv1x1(first)
        self.out = _conv1x1(second)
        self.activation = activation
        self.gated = gated

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj(x)
        if self.gated:
            a, gate = h.chunk(2, dim=1)
            return self.out(a * _gate(gate, self.activation))
        return self.out(_gate(h, self.activation))


class ChannelsFirstTransformerBlock(nn.Module):
    """``layers.TransformerBlock`` on [B, C, 1, N] with its context as [B, C_ctx, 1, M]."""

    def __init__(self, block: layers.TransformerBlock, options: RewriteOptions) -> None:
        super().__init__()
        if block.attn1 is not None:
            self.norm1 = ChannelLayerNorm(block.norm1)
            self.attn1 = _from_unet_attention(block.attn1, "self", options)
        else:
            self.norm1 = self.attn1 = None
        self.norm2 = ChannelLayerNorm(block.norm2)
        self.attn2 = _from_unet_attention(block.attn2, "cross", options)
        self.norm3 = ChannelLayerNorm(block.norm3)
        self.ff = ChannelsFirstFeedForward(
            block.ff.proj, block.ff.out, block.ff.activation, gated=True
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        if self.attn1 is not None:
            x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class ChannelsFirstSpatialTransformer(nn.Module):
    """``layers.SpatialTransformer`` kept channels-first from input to output::

    x [B,C,H,W] ─ norm ─ proj_in (1x1) ─ [B,C,1,HW] ─ blocks ─ [B,C,H,W] ─ proj_out (1x1) ─ + x
    """

    def __init__(self, original: layers.SpatialTransformer, options: RewriteOptions) -> None:
        super().__init__()
        self.norm = original.norm
        self.proj_in = _conv1x1(original.proj_in)
        self.proj_out = _conv1x1(original.proj_out)
        self.transformer_blocks = nn.ModuleList(
            ChannelsFirstTransformerBlock(b, options) for b in original.transformer_blocks
        )

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        h = self.proj_in(self.norm(x)).reshape(batch, channels, 1, height * width)
        ctx = context.transpose(1, 2)[:, :, None, :]  # [B, C_ctx, 1, M], once for all blocks
        for block in self.transformer_blocks:
            h = block(h, ctx)
        return x + self.proj_out(h.reshape(batch, channels, height, width))


class ChannelsFirstCLIPLayer(nn.Module):
    """``CLIPEncoderLayer`` on [B, D, 1, S]."""

    def __init__(self, layer: nn.Module, options: RewriteOptions) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(layer.norm1)
        self.attn = _from_clip_attention(layer.attn, options)
        self.norm2 = ChannelLayerNorm(layer.norm2)
        mlp = layer.mlp
        self.mlp = ChannelsFirstFeedForward(mlp.fc1, mlp.fc2, mlp.activation, gated=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class ChannelsFirstTextEncoder(nn.Module):
    """``CLIPTextEncoder`` whose layers run on [B, D, 1, S]; input and output are unchanged."""

    def __init__(self, original: CLIPTextEncoder, options: RewriteOptions) -> None:
        super().__init__()
        self.config = original.config
        self.token_embedding = original.token_embedding
        self.position_embedding = original.position_embedding
        self.layers = nn.ModuleList(ChannelsFirstCLIPLayer(la, options) for la in original.layers)
        self.final_norm = original.final_norm
        self.register_buffer("position_ids", original.position_ids, persistent=False)
        self.register_buffer("causal_mask", original.causal_mask, persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[-1]
        position_ids, mask = self.position_ids, self.causal_mask
        if length != self.config.max_position_embeddings:
            position_ids, mask = position_ids[:length], mask[:length, :length]
        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        x = x.transpose(1, 2)[:, :, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x[:, :, 0, :].transpose(1, 2))


# --- norms and activations ------------------------------------------------------------


class DecomposedGroupNorm(nn.Module):
    """``nn.GroupNorm`` as reshape / mean / variance / rsqrt / affine, same weights.

    Rank-4 throughout ([B, G, C/G, H*W], statistics over the last two axes; two-pass, the
    variance of the centred values, as torch computes it). Runtimes without a GroupNorm
    kernel see plain reductions and elementwise ops, and LiteRT loses the broadcasts
    litert-torch wraps its own GroupNorm lowering in: on the tiny decoder 298 ops instead
    of 407, ~4% faster on XNNPACK. (Statistics taken per channel first, then per group, look
    friendlier to a channels-last runtime but convert to more transposes, not fewer.)
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: Tensor) -> Tensor:
        batch, channels = x.shape[:2]
        g = x.reshape(batch, self.num_groups, channels // self.num_groups, -1)
        mean = g.mean(dim=(2, 3), keepdim=True)
        centered = g - mean
        var = (centered * centered).mean(dim=(2, 3), keepdim=True)
        out = (centered * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.weight is None:
            return out
        shape = (1, channels) + (1,) * (x.dim() - 2)
        return out * self.weight.reshape(shape) + self.bias.reshape(shape)


class TanhGLUFeedForward(nn.Module):
    """``GLUFeedForward`` with the tanh approximation of GELU as its gate."""

    def __init__(self, ff: layers.GLUFeedForward) -> None:
        super().__init__()
        self.proj = ff.proj
        self.out = ff.out

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * F.gelu(gate, approximate="tanh"))


class TanhCLIPMLP(nn.Module):
    """``CLIPMLP`` (hidden_act="gelu") with the tanh approximation of GELU."""

    def __init__(self, mlp: CLIPMLP) -> None:
        super().__init__()
        self.fc1 = mlp.fc1
        self.fc2 = mlp.fc2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def _phase_taps(w: Tensor, dim: int, phase: int) -> Tensor:
    """The 3 taps of ``w`` along ``dim`` as the 2 that output phase ``phase`` of a nearest
    x2 upsampling reads: (t0, t1 + t2) for phase 0, (t0 + t1, t2) for phase 1."""
    t0, t1, t2 = w.unbind(dim)
    pair = (t0, t1 + t2) if phase == 0 else (t0 + t1, t2)
    return torch.stack(pair, dim)


class PhaseUpsample(nn.Module):
    """``layers.Upsample`` (nearest x2, then a 3x3 conv) as one 2x2 conv at the input size.

    Output pixel (2i+a, 2j+b) of the original reads the upsampled rows 2i+a-1..2i+a+1,
    which are only two distinct input rows: i-1, i for a=0 and i, i+1 for a=1 (columns
    alike). So each of the four output *phases* (a, b) is a 2x2 conv of the input with
    the 3x3 kernel's taps summed pairwise, and all four are one conv on the input padded
    by 1, with 4*C output channels, whose (H+1)x(W+1) map holds phase (a, b) at offset
    (a, b)::

        x [B,C,H,W] ─ pad 1 ─ conv 2x2 (C -> 4C) ─ [B,4C,H+1,W+1] ─ 4 crops ─ interleave
                                                                   ─> [B,C,2H,2W]

    16 multiply-adds per output pixel pair of channels and four pixels instead of 36: the
    math of the original up to the order of float additions. The fused kernel is new
    memory, 16/9 the size of the original's (the ``conv`` child keeps the original's name,
    so quantization scopes that name it still match).
    """

    def __init__(self, up: layers.Upsample) -> None:
        super().__init__()
        conv = up.conv
        w = conv.weight.detach()  # [C_out, C_in, 3, 3]
        rows = [_phase_taps(w, -2, a) for a in (0, 1)]  # [C_out, C_in, 2, 3]
        kernel = torch.cat([_phase_taps(r, -1, b) for r in rows for b in (0, 1)])  # 00 01 10 11
        self.channels = conv.out_channels
        with torch.device("meta"):
            self.conv = nn.Conv2d(conv.in_channels, 4 * conv.out_channels, 2)
        self.conv.weight = _frozen(kernel.contiguous())
        self.conv.bias = _frozen(conv.bias.detach().repeat(4))

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        c = self.channels
        out = self.conv(F.pad(x, (1, 1, 1, 1)))
        phases = [
            out[:, i * c : (i + 1) * c, a : a + height, b : b + width]
            for i, (a, b) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1)))
        ]
        return _interleave(phases)


def _interleave(phases: list[Tensor]) -> Tensor:
    """Four [B, C, H, W] maps, phases (0,0) (0,1) (1,0) (1,1), as one [B, C, 2H, 2W]."""
    batch, c, height, width = phases[0].shape
    y = torch.stack(phases, 1).reshape(batch, 2, 2, c, height, width)
    return y.permute(0, 3, 4, 1, 5, 2).reshape(batch, c, 2 * height, 2 * width)


def _winograd_taps(t: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The input transform B^T d of F(2, 3) along ``dim`` (size 2n+2) for all n tiles.

    Tile q reads positions 2q..2q+3; as a [.., n+1, 2, ..] reshape these are the even and
    odd planes at q and q+1, so no strided slices are needed.
    """
    shape = list(t.shape)
    pairs = shape[dim] // 2
    shape[dim : dim + 1] = [pairs, 2]
    planes = t.reshape(shape)
    even, odd = planes.select(dim + 1, 0), planes.select(dim + 1, 1)
    d0, d1 = even.narrow(dim, 0, pairs - 1), odd.narrow(dim, 0, pairs - 1)
    d2, d3 = even.narrow(dim, 1, pairs - 1), odd.narrow(dim, 1, pairs - 1)
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


#: F(2, 3)'s kernel transform G (4x3): rows of the transformed 3-tap filter.
_F23_G = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _winograd_kernels(weight: Tensor, G: Tensor) -> nn.Parameter:
    """The transformed kernels G g G^T of a 3x3 conv weight [C_out, C_in, 3, 3], one
    [C_out, C_in] matrix per product (a, b), row-major: [len(G)**2, C_out, C_in]."""
    g = weight.detach()
    G = G.to(g.dtype)
    u = torch.einsum("ak,oikl,bl->aboi", G, g, G)
    return _frozen(u.reshape(-1, *u.shape[2:]).contiguous())


class WinogradConv2d(nn.Module):
    """A 3x3, stride-1, same-padded conv as Winograd F(2x2, 3x3) (Lavin & Gray, 2015).

    Each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A over a 4x4 input tile: the
    16 elementwise products summed over input channels are 16 GEMMs of the transformed
    input, 4 multiply-adds per output pixel and channel pair instead of 9. Everything runs
    channels-last (the layout TFLite and XNNPACK hold): the transforms are slices and adds
    of whole pixels, the GEMMs are fully-connected layers over [tiles, C_in], and the four
    output phases interleave by two stacks and reshapes, no transposes::

        x ─ NHWC ─ pad 1 ─ B^T . B (adds) ─ 16 x [B,H/2,W/2,C] ─ 16 FC ─ A^T . A (adds)
          ─ 4 output phases ─ interleave ─ NCHW ─> [B,C_out,H,W]

    The boundary permutes cancel against the ones the converter puts around every conv.
    Measured on this host for one 320-channel conv at 64x64 (LiteRT fp32, XNNPACK, 2
    threads): 40 ms as a conv, 21-27 ms as this; the first, NCHW form of this rewrite took
    33 ms (its transforms strided through W and transposed eight times).

    The weights G g G^T are new memory, 16/9 the original's. F(2, 3)'s transforms hold
    only 0, +-1 and 1/2, so fp32 keeps the original's accuracy (errors ~1e-6 relative);
    int8 would not (the transformed ranges grow), so this is a float rewrite. Odd sizes
    (no whole 2x2 tiles) run the original conv.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight  # the original, for odd sizes
        self.bias = conv.bias
        self.transformed = _winograd_kernels(conv.weight, _F23_G)  # [16, C_out, C_in]

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            return F.conv2d(x, self.weight, self.bias, padding=1)
        rows = _winograd_taps(F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1)), 1)
        tiles = [v for r in rows for v in _winograd_taps(r, 2)]  # (a, b) row-major
        # The bias goes into product (1, 1): A^T . A adds it to each output phase once.
        m = [
            F.linear(v, self.transformed[i], self.bias if i == 5 else None)
            for i, v in enumerate(tiles)
        ]
        s0 = [m[l] + m[4 + l] + m[8 + l] for l in range(4)]  # noqa: E741
        s1 = [m[4 + l] - m[8 + l] - m[12 + l] for l in range(4)]  # noqa: E741
        return _interleave_nhwc([(s[0] + s[1] + s[2], s[1] - s[2] - s[3]) for s in (s0, s1)])


def _upsample_taps(t: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """F(2, 3)'s input transform along ``dim`` (size n+2) for a nearest x2 upsampled input.

    Output tile q (upsampled positions 2q, 2q+1) reads upsampled positions 2q-1..2q+2,
    which hold the input's x[q-1], x[q], x[q], x[q+1]: B^T d is then
    (x[q-1] - x[q], 2 x[q], 0, x[q] - x[q+1]). The zero drops a product, and the 2 goes
    into the weights; returned are terms 0, 1 and 3 for all n tiles.
    """
    n = t.shape[dim] - 2
    before, here, after = (t.narrow(dim, k, n) for k in range(3))
    return before - here, here, here - after


class WinogradUpsample(nn.Module):
    """``layers.Upsample`` (nearest x2, then a 3x3 conv) as Winograd F(2x2, 3x3) on the
    upsampled map with one output tile per *input* pixel.

    Every 4x4 Winograd input tile of the upsampled map repeats input pixels, so one of
    its four transformed terms per axis is zero (``_upsample_taps``): 9 of the 16
    products remain, each a GEMM over [B*H*W, C_in] at the input resolution. That is 9
    multiply-adds per four output pixels and channel pair, against 36 for the original
    and 16 for ``PhaseUpsample``. Channels-last throughout, like ``WinogradConv2d``; a
    float rewrite (the transformed weights would not quantize as well).
    """

    def __init__(self, up: layers.Upsample) -> None:
        super().__init__()
        G = _F23_G[[0, 1, 3]] * torch.tensor([1.0, 2.0, 1.0])[:, None]  # terms 0 1 3
        self.bias = up.conv.bias
        self.transformed = _winograd_kernels(up.conv.weight, G)  # [9, C_out, C_in]

    def forward(self, x: Tensor) -> Tensor:
        rows = _upsample_taps(F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1)), 1)
        terms = [v for r in rows for v in _upsample_taps(r, 2)]  # (a, b) in {0,1,3}^2
        # Product (1, 1) reaches every output phase with +1: it carries the bias.
        m = [
            F.linear(v, self.transformed[i], self.bias if i == 4 else None)
            for i, v in enumerate(terms)
        ]
        # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]] with term 2 gone: out0 = m0 + m1,
        # out1 = m1 - m3, along rows (s) and then along columns.
        s0 = [m[b] + m[3 + b] for b in range(3)]
        s1 = [m[3 + b] - m[6 + b] for b in range(3)]
        return _interleave_nhwc([(s[0] + s[1], s[1] - s[2]) for s in (s0, s1)])


def _interleave_nhwc(phases: list[tuple[Tensor, Tensor]]) -> Tensor:
    """Output phases [[(0,0), (0,1)], [(1,0), (1,1)]] of [B,H,W,C] as one [B,C,2H,2W].

    Pixel (2i+a, 2j+b) is phase (a, b) at (i, j): stacking the b phases after j and the
    a rows after i puts every pixel in place with reshapes alone, no transposes.
    """
    rows = [torch.stack(pair, 3).flatten(2, 3) for pair in phases]
    return torch.stack(rows, 2).flatten(1, 2).permute(0, 3, 1, 2)


#: A linear layer is split when its fp32 weight is past this size: measured at 2 threads,
#: 640x1920 (4.7 MiB) and larger ran 11-27% faster split, 1024x1024 (4 MiB) 16% slower.
SPLIT_LINEAR_MIN_BYTES = int(4.5 * 2**20)
#: Output features per block: 512 beat 256 and 1024 on every shape measured.
SPLIT_LINEAR_BLOCK = 512


class SplitLinear(nn.Module):
    """``nn.Linear`` as blocks of ``SPLIT_LINEAR_BLOCK`` output features, concatenated.

    Each output is computed exactly as before (same dot product, same order), so the
    result is bit-identical; what changes is the shape of the GEMMs the converter emits.
    XNNPACK's fp32 GEMM walks the whole weight for every 7 rows of input; a block's
    weight stays in L2 across those walks where the whole layer's does not (256 tokens,
    1024 -> 6144: 12.4 ms as one layer, 10.0 ms as 12 blocks with the concatenation).
    The blocks are views of the original weight (no copy).
    """

    def __init__(self, linear: nn.Linear, block: int = SPLIT_LINEAR_BLOCK) -> None:
        super().__init__()
        self.weights = nn.ParameterList(_frozen(w) for w in linear.weight.split(block))
        self.biases = (
            None
            if linear.bias is None
            else nn.ParameterList(_frozen(b) for b in linear.bias.split(block))
        )

    def forward(self, x: Tensor) -> Tensor:
        biases = self.biases if self.biases is not None else [None] * len(self.weights)
        return torch.cat(
            [F.linear(x, w, b) for w, b in zip(self.weights, biases, strict=True)], dim=-1
        )


# --- folded timesteps -----------------------------------------------------------------


class FoldedTimestepUNet(nn.Module):
    """A UNet whose time embedding is a table over a fixed timestep list.

    ``forward(sample [B,C,H,W], step_index [B] int32, context [B,S,D])``:
    ``temb = table[step_index]`` replaces sinusoid -> time MLP -> SiLU; the rest is the
    UNet's own ``denoise_from_temb`` on the same children.
    """

    def __init__(self, unet: UNet, timesteps: tuple[float, ...]) -> None:
        super().__init__()
        config = unet.config
        t = torch.tensor(timesteps, dtype=torch.float32)
        with torch.no_grad():
            features = layers.timestep_embedding(
                t, config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift
            )
            table = F.silu(unet.time_embedding(features))
        self.register_buffer("temb_table", table.detach().contiguous())
        self.timesteps = tuple(timesteps)
        self.conv_in = unet.conv_in
        self.down_levels = unet.down_levels
        self.mid = unet.mid
        self.up_levels = unet.up_levels
        self.norm_out = unet.norm_out
        self.conv_out = unet.conv_out

    def forward(self, sample: Tensor, step_index: Tensor, context: Tensor) -> Tensor:
        temb = torch.index_select(self.temb_table, 0, step_index.reshape(-1))
        temb = temb.expand(sample.shape[0], -1).to(sample.dtype)
        return denoise_from_temb(self, sample, temb, context)


# --- the passes -----------------------------------------------------------------------


def _replace_children(root: nn.Module, swap) -> int:
    """Replace every descendant ``m`` for which ``swap(m)`` is not None; returns the count."""
    count = 0
    for name, child in list(root.named_children()):
        new = swap(child)
        if new is not None:
            setattr(root, name, new)
            count += 1
        else:
            count += _replace_children(child, swap)
    return count


def _attention_pass(root: nn.Module, options: RewriteOptions) -> dict[str, int]:
    """Swap every attention (and, channels-first, every transformer) for its mobile form."""
    counts = {"linear_as_conv": 0, "fuse_qkv": 0, "attention": 0}

    def note(attentions: list[MobileAttention]) -> None:
        for a in attentions:
            counts["fuse_qkv"] += int(a.fused)
            counts["attention"] += int(a.form == options.attention != "default")

    def swap(m: nn.Module) -> nn.Module | None:
        if options.linear_as_conv and isinstance(m, layers.SpatialTransformer):
            new = ChannelsFirstSpatialTransformer(m, options)
        elif options.linear_as_conv and isinstance(m, CLIPTextEncoder):
            new = ChannelsFirstTextEncoder(m, options)
        elif isinstance(m, layers.SpatialSelfAttention):
            new = MobileSpatialSelfAttention(m, options)
        elif isinstance(m, layers.TransformerBlock):
            # Already our copy: swap its two attentions in place, keep norms and FF.
            new = m
            if m.attn1 is not None:
                new.attn1 = _from_unet_attention(m.attn1, "self", options)
            new.attn2 = _from_unet_attention(m.attn2, "cross", options)
        elif isinstance(m, CLIPAttention):
            new = _from_clip_attention(m, options)
        else:
            return None
        note([a for a in new.modules() if isinstance(a, MobileAttention)])
        counts["linear_as_conv"] += int(options.linear_as_conv)
        return new

    _replace_children(root, swap)
    return counts


def _group_norm_pass(root: nn.Module) -> int:
    return _replace_children(
        root, lambda m: DecomposedGroupNorm(m) if isinstance(m, nn.GroupNorm) else None
    )


def _phase_upsample_pass(root: nn.Module) -> int:
    return _replace_children(
        root, lambda m: PhaseUpsample(m) if isinstance(m, layers.Upsample) else None
    )


#: Below this many input or output channels a conv is too thin for 16 GEMMs to pay for
#: the transforms (the UNet's conv_in and conv_out).
WINOGRAD_MIN_CHANNELS = 32


def _winograd_pass(root: nn.Module) -> int:
    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, layers.Upsample):
            return WinogradUpsample(m)
        if not isinstance(m, nn.Conv2d) or m.kernel_size != (3, 3) or m.groups != 1:
            return None
        if m.stride != (1, 1) or m.padding != (1, 1) or m.dilation != (1, 1):
            return None
        if min(m.in_channels, m.out_channels) < WINOGRAD_MIN_CHANNELS:
            return None
        return WinogradConv2d(m)

    return _replace_children(root, swap)


def _split_linear_pass(root: nn.Module) -> int:
    def swap(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, nn.Linear) or m.out_features <= SPLIT_LINEAR_BLOCK:
            return None
        if 4 * m.in_features * m.out_features < SPLIT_LINEAR_MIN_BYTES:
            return None
        return SplitLinear(m)

    return _replace_children(root, swap)


def _gelu_tanh_pass(root: nn.Module) -> int:
    def swap(m: nn.Module) -> nn.Module | None:
        if isinstance(m, layers.GLUFeedForward) and m.activation == "gelu":
            return TanhGLUFeedForward(m)
        if isinstance(m, CLIPMLP) and m.activation == "gelu":
            return TanhCLIPMLP(m)
        if isinstance(m, ChannelsFirstFeedForward) and m.activation == "gelu":
            m.activation = "gelu_tanh"  # our own module, built by the attention pass
            return m
        return None

    return _replace_children(root, swap)


def _find(root: nn.Module, kind: type) -> nn.Module | None:
    return next((m for m in root.modules() if isinstance(m, kind)), None)


def apply_rewrites(
    module: nn.Module, component: Component, options: RewriteOptions
) -> tuple[nn.Module, list[str]]:
    """The rewritten network (a new module tree sharing weights) and the rewrites applied.

    ``module`` is a component as the converters get it: the bare network, or the network
    wrapped by ``signatures.exportable``. A rewrite that has nothing to act on in this
    component (``fold_timesteps`` on the decoder, ``gelu_tanh`` on a Swish GLU) is skipped
    and not listed. Names, in application order: ``linear_as_conv``, ``fuse_qkv``,
    ``attention:split_heads`` / ``attention:sdpa``, ``group_norm:decomposed``,
    ``gelu_tanh``, ``winograd``, ``phase_upsample``, ``split_linear``, ``fold_timesteps``.
    ``winograd`` or ``split_linear`` None (the converter's "by recipe", see
    ``settle_for_weights``) counts as off here.
    """
    if not isinstance(options, RewriteOptions):
        raise ConfigError(f"rewrite options must be RewriteOptions, got {type(options).__name__}")
    was_training = module.training
    holder = nn.ModuleDict({"root": _share_copy(module)})
    applied: list[str] = []

    counts = {"linear_as_conv": 0, "fuse_qkv": 0, "attention": 0}
    if options.linear_as_conv or options.fuse_qkv or options.attention != "default":
        counts = _attention_pass(holder, options)
    if counts["linear_as_conv"]:
        applied.append("linear_as_conv")
    if counts["fuse_qkv"]:
        applied.append("fuse_qkv")
    if counts["attention"]:
        applied.append(f"attention:{options.attention}")
    if options.group_norm == "decomposed" and _group_norm_pass(holder):
        applied.append("group_norm:decomposed")
    if options.gelu_tanh and _gelu_tanh_pass(holder):
        applied.append("gelu_tanh")
    # Winograd takes the upsamplers too (9 GEMMs per output tile where the phase form
    # has 16), so it goes first and leaves phase_upsample nothing to do.
    if options.winograd and _winograd_pass(holder):
        applied.append("winograd")
    if options.phase_upsample and _phase_upsample_pass(holder):
        applied.append("phase_upsample")
    if options.split_linear and _split_linear_pass(holder):
        applied.append("split_linear")
    if options.fold_timesteps is not None and component == "unet":
        unet = holder["root"]
        if not isinstance(unet, UNet):
            raise ConfigError(
                f"fold_timesteps needs the bare UNet module, got {type(unet).__name__}"
            )
        holder["root"] = FoldedTimestepUNet(unet, options.fold_timesteps)
        applied.append("fold_timesteps")
    result = holder["root"]
    result.train(was_training)
    return result, applied


def rewritten_io(
    config: ModelConfig, component: Component, target: Target, options: RewriteOptions | None
) -> ComponentIO:
    """``signatures.component_io`` after the rewrites: what the manifest must promise.

    Only ``fold_timesteps`` changes I/O: the UNet's ``timestep`` input (float32) becomes
    ``step_index`` (int32, (B,), layout N), an index into ``options.fold_timesteps``.
    """
    io = component_io(config, component, target)
    if options is None or options.fold_timesteps is None or component != "unet":
        return io
    batch = io.example_inputs[0].shape[0]
    spec = TensorSpec("step_index", (batch,), "int32", "N")
    inputs = [spec if s.name == "timestep" else s for s in io.inputs]
    example = tuple(
        torch.zeros((batch,), dtype=torch.int32) if s.name == "timestep" else t
        for s, t in zip(io.inputs, io.example_inputs, strict=True)
    )
    return ComponentIO(example, inputs, list(io.outputs))


def with_timesteps(options: RewriteOptions, timesteps: list[float] | None) -> RewriteOptions:
    """``options`` with ``fold_timesteps`` set to the manifest's list (None: unchanged)."""
    if timesteps is None:
        return options
    return replace(options, fold_timesteps=tuple(float(t) for t in timesteps))


__all__ = [
    "DEFAULT_REWRITES",
    "FoldedTimestepUNet",
    "PhaseUpsample",
    "RewriteOptions",
    "SplitLinear",
    "WinogradConv2d",
    "WinogradUpsample",
    "apply_rewrites",
    "rewritten_io",
    "settle_for_weights",
    "with_timesteps",
]
