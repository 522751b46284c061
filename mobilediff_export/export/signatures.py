"""The static inputs and outputs of each component, per target: names, shapes, dtypes.

These are what the manifest promises the apps, so every converter takes them from here.
Shapes come from the pipeline config: 77 tokens, the latent size, batch 1 for the text
encoder and decoder, and for the UNet batch 2 when classifier-free guidance is on
([unconditional, conditional]) or 1 for distilled models. Token ids are int32 on the
mobile targets (what LiteRT and Core ML gather with) and int64 on ONNX; the wrapper casts
them, so the networks themselves always see int64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ModelConfig
from .artifacts import Component, Target, TensorSpec


@dataclass(frozen=True)
class ComponentIO:
    example_inputs: tuple[torch.Tensor, ...]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def unet_batch(config: ModelConfig) -> int:
    return 2 if config.pipeline.uses_guidance else 1


def component_io(config: ModelConfig, component: Component, target: Target) -> ComponentIO:
    """Example inputs (zeros / a mid timestep) and the specs of one component on one target."""
    c, h, w = config.latent_shape
    tokens = config.tokenizer.max_length
    if component == "text_encoder":
        id_dtype = "int64" if target == "onnx" else "int32"
        ids = torch.zeros((1, tokens), dtype=getattr(torch, id_dtype))
        return ComponentIO(
            (ids,),
            [TensorSpec("input_ids", (1, tokens), id_dtype, "NL")],
            [TensorSpec("context", (1, tokens, config.text_encoder.hidden_size), "float32",
                        "NLC")],
        )  # fmt: skip
    if component == "unet":
        b = unet_batch(config)
        dim = config.unet.cross_attention_dim
        return ComponentIO(
            (torch.zeros((b, c, h, w)), torch.full((b,), 500.0), torch.zeros((b, tokens, dim))),
            [
                TensorSpec("sample", (b, c, h, w), "float32", "NCHW"),
                TensorSpec("timestep", (b,), "float32", "N"),
                TensorSpec("context", (b, tokens, dim), "float32", "NLC"),
            ],
            [TensorSpec("model_output", (b, config.unet.out_channels, h, w), "float32", "NCHW")],
        )
    if component == "vae_decoder":
        size = config.pipeline.image_size
        out = config.vae_decoder.out_channels
        return ComponentIO(
            (torch.zeros((1, c, h, w)),),
            [TensorSpec("latent", (1, c, h, w), "float32", "NCHW")],
            [TensorSpec("image", (1, out, size, size), "float32", "NCHW")],
        )
    raise KeyError(component)


class TokenIdsAsInt64(nn.Module):
    """Lets a text encoder take int32 ids (mobile runtimes) while it computes with int64."""

    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids.to(torch.int64))


def exportable(module: nn.Module, component: Component, target: Target) -> nn.Module:
    """The module as a converter should trace it for ``target`` (eval mode, id dtype fixed)."""
    module = module.eval()
    if component == "text_encoder" and target != "onnx":
        return TokenIdsAsInt64(module).eval()
    return module
