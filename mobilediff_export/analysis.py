"""Sizes and costs of a model: parameters and FLOPs per component at its static shapes.

FLOPs are counted by tracing one forward pass on the ``meta`` device (no memory, no
compute) with torch's FlopCounterMode: matmuls and convolutions, 2 FLOPs per
multiply-accumulate. Norms, activations and softmax are not counted; they are a few
percent of a diffusion UNet and nothing a mobile accelerator spends its time on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import ModelConfig
from .models.text_encoder import CLIPTextEncoder
from .models.unet import UNet
from .models.vae_decoder import VAEDecoder


@dataclass(frozen=True)
class ComponentCost:
    name: str
    parameters: int
    flops: int
    """Per forward pass at batch 1."""
    input_shapes: tuple[tuple[int, ...], ...]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def example_inputs(config: ModelConfig, name: str, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """The static-shape inputs of a component, as export traces them."""
    c, h, w = config.latent_shape
    if name == "text_encoder":
        return (torch.zeros((batch, config.tokenizer.max_length), dtype=torch.int64),)
    if name == "unet":
        context = (batch, config.tokenizer.max_length, config.unet.cross_attention_dim)
        return (
            torch.zeros((batch, c, h, w)),
            torch.full((batch,), 999.0),
            torch.zeros(context),
        )
    if name == "vae_decoder":
        return (torch.zeros((batch, c, h, w)),)
    raise KeyError(name)


def _build(config: ModelConfig, name: str) -> nn.Module:
    if name == "text_encoder":
        return CLIPTextEncoder(config.text_encoder)
    if name == "unet":
        return UNet(config.unet)
    return VAEDecoder(config.vae_decoder)


def component_costs(config: ModelConfig) -> list[ComponentCost]:
    """Parameters and batch-1 FLOPs of the three networks, without allocating weights."""
    costs = []
    for name in ("text_encoder", "unet", "vae_decoder"):
        with torch.device("meta"):
            module = _build(config, name).eval()
            inputs = tuple(t.to("meta") for t in example_inputs(config, name))
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(*inputs)
        costs.append(
            ComponentCost(
                name=name,
                parameters=count_parameters(module),
                flops=int(counter.get_total_flops()),
                input_shapes=tuple(tuple(t.shape) for t in inputs),
            )
        )
    return costs


def image_flops(config: ModelConfig, costs: list[ComponentCost], steps: int, guided: bool) -> int:
    """FLOPs of one image: text encoder (x2 with guidance), UNet per step (x2), decoder once."""
    by_name = {c.name: c.flops for c in costs}
    batch = 2 if guided else 1
    return batch * (by_name["text_encoder"] + steps * by_name["unet"]) + by_name["vae_decoder"]
