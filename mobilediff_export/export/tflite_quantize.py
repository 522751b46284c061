"""LiteRT quantization: a float .tflite in, the recipe's .tflite out (ai_edge_quantizer).

The converter writes the network once in fp32; this module turns that file into what the
recipe asks for, reading it through a memory map and writing the result straight to disk,
so a paper-size UNet never sits in memory as bytes twice::

    recipe         ai_edge_quantizer config                          runs as
    -------------  ------------------------------------------------  -----------------------
    fp16           float casting, fp16 weights + DEQUANTIZE          fp32 compute
    int8-weight    int8 per-channel weights + DEQUANTIZE             fp32 compute
    int8-dynamic   int8 per-channel weights, no DEQUANTIZE           XNNPACK int8 kernels,
                                                                     activations quantized
                                                                     on the fly
    w8a8           int8 weights, int8 activations from calibration   full integer
    mixed          int8-weight, except the layer groups measured
                   most sensitive, which get fp16 weights

Why not ``litert_torch.convert(..., quant_config=...)``: that path serializes the float
model to bytes in memory and then quantizes the bytes, and its int8 recipes die on large
convolutions. ai_edge_quantizer quantizes any weight over 32 MiB by flattening it to 2-D
in chunks while its per-channel scales keep the tensor's rank (4 for a convolution), and
numpy refuses to broadcast them ("input operand has more dimensions than allowed by the
axis remapping"). A paper-size UNet has such a weight (its 1024-channel 3x3 upsampling
convolution, 36 MiB); ``_large_weights_as_2d`` quantizes those weights as a 2-D
[channels, rest] matrix with [channels, 1] scales, which is the same per-channel
arithmetic on the same numbers.

``w8a8`` keeps the signature float (one QUANTIZE after each input, one DEQUANTIZE before
each output) and the UNet's timestep path float (``time_path``: a timestep of 0..999 and
sinusoid angles up to ~1000 rad have no useful per-tensor int8 form); everything else is
int8. The tools handle these graphs, but per-tensor int8 activations cost accuracy: on the
tiny random-weight model, relative L2 error 0.04 (text encoder), 0.08 (decoder) and 0.3
(UNet) even when calibrated on the very input measured. It is there for NPUs that need
full integer, not as a quality recipe; int8-dynamic is the CPU default.

The mixed recipe measures, in PyTorch, how much each layer group (a resnet, an attention,
a feed-forward, a projection) hurts the component's output when only its weights are
int8 (symmetric per-channel, as the quantizer does them), on calibration inputs; the
worst fraction stays fp16. LiteRT names each op after the PyTorch module path it came
from, which is how a group becomes an op scope.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError, MobileDiffError
from ..models import layers
from ..models.text_encoder import CLIPMLP, CLIPAttention
from ..models.unet import UNet
from . import rewrite
from .quantize import Recipe

#: ai_edge_quantizer's threshold for its chunked (and, above rank 2, broken) path.
CHUNKED_BYTES = 32 * 1024 * 1024

#: Share of layer groups the mixed recipe keeps in fp16 (the most sensitive ones).
MIXED_FLOAT_FRACTION = 0.1

#: Calibration samples the mixed recipe measures each group on (each costs a forward).
MIXED_SAMPLES = 2


class QuantizationError(MobileDiffError):
    """A recipe cannot be applied to this graph with the installed tools."""


# --- the quantizer fix for large weights ----------------------------------------------


@contextlib.contextmanager
def _large_weights_as_2d() -> Iterator[None]:
    """Quantize weights over 32 MiB of rank > 2 as [channels, rest] (see the module doc)."""
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uqt

    original = uqt.uniform_quantize

    def uniform_quantize(tensor_data, quantization_params, is_blockwise_quant=False):
        if is_blockwise_quant or tensor_data.ndim <= 2 or tensor_data.nbytes <= CHUNKED_BYTES:
            return original(tensor_data, quantization_params, is_blockwise_quant)
        params = quantization_params
        axis = params.quantized_dimension or 0
        moved = np.moveaxis(tensor_data, axis, 0)
        channels = moved.shape[0]

        def as_2d(values) -> np.ndarray:
            values = np.asarray(values)
            if values.size == channels:
                return values.reshape(channels, 1)
            if values.size == 1:
                return values.reshape(1, 1)
            raise QuantizationError(
                f"cannot quantize a {tensor_data.shape} weight with {values.size} scales"
            )

        flat = dataclasses.replace(
            params,
            scale=as_2d(params.scale),
            zero_point=as_2d(params.zero_point),
            quantized_dimension=0,
        )
        quantized = original(moved.reshape(channels, -1), flat, False)
        return np.moveaxis(quantized.reshape(moved.shape), 0, axis)

    uqt.uniform_quantize = uniform_quantize
    try:
        yield
    finally:
        uqt.uniform_quantize = original


# --- recipes ----------------------------------------------------------------------------


def _fp16_config():
    from ai_edge_quantizer import qtyping

    return qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(
            num_bits=16,
            symmetric=True,
            granularity=qtyping.QuantGranularity.TENSORWISE,
            dtype=qtyping.TensorDataType.FLOAT,
        ),
        compute_precision=qtyping.ComputePrecision.FLOAT,
        explicit_dequantize=True,
    )


def _configure(
    quantizer, recipe: Recipe, float_scopes: Sequence[str], unquantized: Sequence[str]
) -> None:
    """Load ``recipe`` into an ``ai_edge_quantizer.Quantizer``."""
    from ai_edge_quantizer import algorithm_manager, qtyping

    every = qtyping.TFLOperationName.ALL_SUPPORTED
    channelwise = qtyping.QuantGranularity.CHANNELWISE
    fp16 = _fp16_config()
    casting = algorithm_manager.AlgorithmName.FLOAT_CASTING
    if recipe.weights == "fp16":
        quantizer.update_quantization_recipe(".*", every, fp16, casting)
    elif recipe.weights == "int8" and recipe.activations == "int8":
        quantizer.add_static_config(".*", every, 8, 8, channelwise)
        # The signature stays float: one QUANTIZE after each input, one DEQUANTIZE before
        # each output, so the manifest's float32 I/O holds for every recipe.
        for boundary in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            quantizer.update_quantization_recipe(
                ".*",
                boundary,
                qtyping.OpQuantizationConfig(),
                algorithm_manager.AlgorithmName.NO_QUANTIZE,
            )
    elif recipe.weights == "int8" and recipe.activations == "dynamic-int8":
        quantizer.add_dynamic_config(".*", every, 8, channelwise)
    elif recipe.weights == "int8":
        quantizer.add_weight_only_config(".*", every, 8, channelwise)
    else:
        raise ConfigError(f"recipe {recipe.name} has no LiteRT quantization ({recipe.weights})")
    if float_scopes:  # later configs win: these scopes keep fp16 weights
        regex = "^(?:" + "|".join(re.escape(s) for s in float_scopes) + ")(?:[/;]|$)"
        quantizer.update_quantization_recipe(regex, every, fp16, casting)
    keep, no_quantize = qtyping.OpQuantizationConfig(), algorithm_manager.AlgorithmName.NO_QUANTIZE
    for regex in unquantized:
        quantizer.update_quantization_recipe(regex, every, keep, no_quantize)


def quantize_tflite(
    src: Path,
    dst: Path,
    recipe: Recipe,
    *,
    float_scopes: Sequence[str] = (),
    unquantized: Sequence[str] = (),
    calibration: dict[str, list[dict[str, np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Quantize the float model ``src`` into ``dst`` by ``recipe``; returns facts for reports.

    ``float_scopes`` are LiteRT op-name prefixes (PyTorch module paths) kept in fp16;
    ``unquantized`` are op-name regexes left entirely float (see ``time_path``);
    ``calibration`` maps a signature key to its input dicts (needed by ``w8a8``).
    """
    from ai_edge_quantizer import quantizer as aeq

    qt = aeq.Quantizer(str(src))
    _configure(qt, recipe, float_scopes, unquantized)
    result = None
    with _large_weights_as_2d(), _quiet(), warnings.catch_warnings():
        # Calibration keeps every intermediate tensor on purpose; the interpreter warns.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        if qt.need_calibration:
            if not calibration:
                raise QuantizationError(
                    f"recipe {recipe.name} needs calibration inputs and got none"
                )
            try:
                result = qt.calibrate(calibration)
            except Exception as exc:  # the tool's own message names the op it cannot run
                raise QuantizationError(
                    f"recipe {recipe.name}: ai_edge_quantizer could not calibrate this graph: "
                    f"{_one_line(exc)}"
                ) from exc
        try:
            qt.quantize(result, serialize_to_path=str(dst), enable_progress_report=False)
        except Exception as exc:
            raise QuantizationError(
                f"recipe {recipe.name}: ai_edge_quantizer could not quantize this graph: "
                f"{_one_line(exc)}"
            ) from exc
    return {"quantizer": "ai_edge_quantizer", "calibrated": result is not None}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) < 400 else text[:397] + "..."


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import logging

    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


# --- layer groups and their sensitivity (mixed) ---------------------------------------

_GROUP_TYPES: tuple[type, ...] = (
    layers.ResnetBlock,
    layers.Attention,
    layers.GLUFeedForward,
    layers.SpatialSelfAttention,
    layers.Downsample,
    layers.Upsample,
    layers.TimestepEmbedding,
    CLIPAttention,
    CLIPMLP,
    rewrite.MobileAttention,
    rewrite.MobileSpatialSelfAttention,
    rewrite.ChannelsFirstFeedForward,
    rewrite.TanhGLUFeedForward,
    rewrite.TanhCLIPMLP,
)
_WEIGHT_TYPES = (nn.Linear, nn.Conv2d, nn.Embedding)


@dataclass(frozen=True)
class LayerGroup:
    """Weights that are quantized together: ``path`` in PyTorch, ``scope`` in LiteRT names."""

    path: str
    scope: str
    weights: tuple[str, ...]
    """Parameter names (as ``named_parameters`` of the root gives them)."""


def layer_groups(root: nn.Module) -> list[LayerGroup]:
    """The quantization groups of a module tree, in order, with their LiteRT op scopes.

    LiteRT names an op after its module path, ``<Root class>/<Class>_<attribute>/...``; a
    ModuleList member is ``<Class>_<index>`` and the list itself leaves no trace.
    """
    groups: list[LayerGroup] = []

    def scope_of(module: nn.Module, name: str | None) -> str:
        cls = type(module)
        qualified = f"{cls.__module__}.{cls.__qualname__}"
        return qualified if name is None else f"{qualified}_{name}"

    def walk(module: nn.Module, path: str, scope: str) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if isinstance(child, nn.ModuleList | nn.ModuleDict):
                walk(child, child_path, scope)
                continue
            child_scope = f"{scope}/{scope_of(child, name)}"
            if isinstance(child, _GROUP_TYPES + _WEIGHT_TYPES):
                weights = tuple(
                    f"{child_path}.{n}" for n, p in child.named_parameters() if p.dim() >= 2
                )
                if weights:
                    groups.append(LayerGroup(child_path, child_scope, weights))
                continue
            walk(child, child_path, child_scope)

    walk(root, "", scope_of(root, None))
    return groups


def time_path(root: nn.Module) -> list[str]:
    """Op-name regexes of a UNet's timestep path, which full-integer models keep float.

    The timestep (0..999) and the sinusoid's angles (up to ~1000 rad) lose everything in a
    per-tensor int8 (steps of ~4 in the angle); the few ops from the timestep to the time
    embedding (the sinusoid, the time MLP, its SiLU; with ``fold_timesteps`` the table
    gather) are cheap and stay float. They are the ops at the UNet's own level, outside any
    submodule, and the ``TimestepEmbedding`` module.
    """
    regexes = []
    unets = (UNet, rewrite.FoldedTimestepUNet)
    for group in layer_groups(root):
        if isinstance(root.get_submodule(group.path), layers.TimestepEmbedding):
            regexes.append("^" + re.escape(group.scope) + "(?:[/;]|$)")

    def visit(module: nn.Module, scope: str) -> None:
        for name, child in module.named_children():
            cls = type(child)
            child_scope = f"{scope}/{cls.__module__}.{cls.__qualname__}_{name}"
            if isinstance(child, unets):
                regexes.append("^" + re.escape(child_scope) + r";\d+$")
            elif not isinstance(child, nn.ModuleList | nn.ModuleDict):
                visit(child, child_scope)

    cls = type(root)
    if isinstance(root, unets):
        regexes.append("^" + re.escape(f"{cls.__module__}.{cls.__qualname__}") + r";\d+$")
    visit(root, f"{cls.__module__}.{cls.__qualname__}")
    return regexes


def _fake_int8(weight: Tensor) -> Tensor:
    """Symmetric per-output-channel int8 round trip, as the LiteRT quantizer does it."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return (torch.round(flat / scale).clamp(-127, 127) * scale).reshape(weight.shape)


@torch.no_grad()
def measure_sensitivity(
    module: nn.Module, groups: list[LayerGroup], samples: list[tuple[Tensor, ...]]
) -> list[float]:
    """Per group: relative output error ||y_q - y|| / ||y|| with only that group in int8.

    Averaged over ``samples``; the rest of the network stays float, so each figure is what
    that group alone costs.
    """
    from torch.func import functional_call

    params = dict(module.named_parameters())
    references = [module(*s) for s in samples]
    errors = []
    for group in groups:
        swapped = {name: _fake_int8(params[name]) for name in group.weights}
        total = 0.0
        for sample, ref in zip(samples, references, strict=True):
            out = functional_call(module, swapped, sample)
            total += float((out - ref).norm() / ref.norm().clamp_min(1e-12))
        errors.append(total / len(samples))
    return errors


def choose_float_groups(
    groups: list[LayerGroup], errors: list[float], fraction: float = MIXED_FLOAT_FRACTION
) -> list[int]:
    """Indices of the most sensitive ``fraction`` of groups (at least one), worst first."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"the mixed recipe's float fraction must be in [0, 1], got {fraction}")
    if not groups or fraction == 0.0:
        return []
    count = max(1, round(fraction * len(groups)))
    return sorted(range(len(groups)), key=lambda i: errors[i], reverse=True)[:count]
