"""The CLIP text transformer, written for export (transformers' ``CLIPTextModel``).

Its output, the last hidden state after the final layer norm, is the context every
cross-attention of the UNet reads. There is no pooled output and no projection head:
Stable Diffusion-style pipelines use neither.

::

    input_ids [B, S] (int64, S = max_position_embeddings, padded by the tokenizer)
      │
      ├─ token_embedding[input_ids] + position_embedding[position_ids]      [B, S, D]
      │
      ├─ layers[0 .. num_layers) ── each a pre-norm transformer layer:
      │      x = x + attn(norm1(x))      causal multi-head self-attention:
      │                                    q, k, v = q_proj(h), k_proj(h), v_proj(h)
      │                                    w = softmax(q k^T / sqrt(D/H) + causal_mask)
      │                                    out_proj(concat heads(w v))
      │      x = x + mlp(norm2(x))       fc1 (D -> I) ─ quick_gelu | gelu ─ fc2 (I -> D)
      │
      └─ final_norm ─────────────────────────────────────────────────────> [B, S, D]

For the mobile converters: every shape is fixed by the config; ``position_ids`` and
``causal_mask`` are precomputed buffers (not built from the input); attention is spelled
out as matmul / add mask / softmax / matmul instead of ``scaled_dot_product_attention``.
The mask holds 0 on and below the diagonal and ``MASK_VALUE`` above it: the most negative
float16 number, so it stays finite after a float16 conversion, and still far enough below
any real score that its softmax weight is exactly 0 in float32 as well as float16. Padding
is not masked, as in CLIP: causal attention already keeps every real token from seeing
the padding after it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TextEncoderConfig

MASK_VALUE = float(torch.finfo(torch.float16).min)  # -65504


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's GELU approximation ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections and an additive mask."""

    def __init__(self, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def _split_heads(self, t: Tensor) -> Tensor:
        batch, length, _ = t.shape
        return t.reshape(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q = self._split_heads(self.q_proj(x) * self.scale)  # [B, H, S, Dh]
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) + mask  # [B, H, S, S]
        weights = torch.softmax(scores, dim=-1)
        out = torch.matmul(weights, v)  # [B, H, S, Dh]
        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """``fc1 -> activation -> fc2``; the activation is CLIP's quick_gelu or exact GELU."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: str) -> None:
        super().__init__()
        if activation not in ("quick_gelu", "gelu"):
            raise ValueError(f"unknown text encoder activation {activation!r}")
        self.activation = activation
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = quick_gelu(h) if self.activation == "quick_gelu" else F.gelu(h)
        return self.fc2(h)


class CLIPEncoderLayer(nn.Module):
    """One pre-norm layer: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = CLIPAttention(config.hidden_size, config.num_heads)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class CLIPTextEncoder(nn.Module):
    """Token ids ``[B, S]`` -> context ``[B, S, hidden_size]``; see the module docstring."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        length = config.max_position_embeddings
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(length, config.hidden_size)
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # Derived from the config alone, so they stay out of the state dict.
        self.register_buffer("position_ids", torch.arange(length), persistent=False)
        causal = torch.full((length, length), MASK_VALUE).triu(diagonal=1)
        self.register_buffer("causal_mask", causal, persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        length = input_ids.shape[-1]
        if input_ids.dim() != 2 or length > self.config.max_position_embeddings:
            raise ValueError(
                f"input_ids must be [batch, <= {self.config.max_position_embeddings}], "
                f"got {list(input_ids.shape)}"
            )
        position_ids, mask = self.position_ids, self.causal_mask
        if length != self.config.max_position_embeddings:  # static: decided by the shape
            position_ids, mask = position_ids[:length], mask[:length, :length]
        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)
