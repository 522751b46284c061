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
each output) and the few ops that per-tensor int8 cannot carry, found from the graph
(``full_integer_float_ops``) and each listed in the artifact's ``details["float_ops"]``:

- the UNet's timestep path, from the timestep input to each block's time bias (the
  sinusoid, the time MLP and its SiLU, every ``time_emb_proj``: 27 ops on (1, C) vectors
  in the demo UNet, about 1 MB of float32 weights);
- CLIP's masked softmax: in each layer the ADD of the causal mask and its SOFTMAX (the
  mask's large negative constant leaves the logits one int8 step).

Everything else is int8, ranges from the calibration inputs (``calibration``: the PyTorch
pipeline run on prompts the model knows). Measured on the demo model (models/demo, 8 DDIM
steps): ``mobilediff validate`` PSNR in dB against PyTorch (w8a8 needs >= 20 for each
component and the image), and the image PSNR over 11 held-out captions (the validate
prompt and 10 of the validation split, seeds 0-10)::

    checkpoint  float ops / calibration         text enc.  UNet  decoder  image  11 captions
                                                                                 min  median
    01:37       timestep path by name (*),        23.9     20.0    28.0    10.4   4.9  10.4
                synthetic
    01:37       from the graph, 3 generic         43.9     27.4    21.7    30.0  11.9  21.1
    01:37       from the graph, 32 demo captions  45.4     28.1    24.3    23.7  18.7  23.7
    02:37       from the graph, 32 demo captions  45.4     25.6    24.7    21.4  14.6  24.7

(*) ai_edge_quantizer 0.10 matches its recipes against op scopes that end in ``;``; the
name regexes this replaced never matched, so the timestep (0..999) and sinusoid angles
(up to ~1000 rad) ran int8, in steps of ~4. Calibrating on demo captions with that miss
left the image at 8.6 dB; the masked softmax alone takes the text encoder from 23.9 to
45.4 dB (and, with only the text encoder int8, the image from 9 to 38 dB). One prompt's
figure swings by several dB with the calibration set and the checkpoint; the model's own
captions lift the worst and the median. Weak spots left: the int8 decoder on white or
orange backgrounds (19.9 dB on one with only the decoder int8; 22.6 dB with its
GroupNorms float, which an NPU would run on the CPU), and the validate prompt's margin.
Int8 weight-only time-path FCs (3.3 instead of 4.2 MB) cost ~2 dB of the UNet-only image.

Ranges are ai_edge_quantizer's moving average (0.95 old, 0.05 new) of each sample's min
and max, so mostly those of the last ~20 samples. The true extremes over all samples
(``qsv_utils.min_max_update``) measured better on the 02:37 checkpoint (components 47.3 /
36.2 / 32.9 dB, 11-caption median 30.7, worst 18.0) but put the validate prompt itself
at 18.0 dB, so they are not used. Exporting the demo model took 75-340 s on two shared,
busy cores, 2 s (3 prompts) to 25-295 s (32 captions) of it the PyTorch calibration run.
It is there for NPUs that need full integer, not as a quality recipe; int8-dynamic is
the CPU default.

The mixed recipe measures, in PyTorch, how much each layer group (a resnet, an attention,
a feed-forward, a projection) hurts the component's output when only its weights are
int8 (symmetric per-channel, as the quantizer does them), on calibration inputs; the
worst fraction stays fp16. Where one forward per group would take too long (a paper-size
UNet), each group is measured at its own output instead, in one pass. LiteRT names each
op after the PyTorch module path it came from, which is how a group becomes an op scope.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
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
from . import rewrite
from .quantize import Recipe

#: ai_edge_quantizer's threshold for its chunked (and, above rank 2, broken) path.
CHUNKED_BYTES = 32 * 1024 * 1024

#: Share of layer groups the mixed recipe keeps in fp16 (the most sensitive ones).
MIXED_FLOAT_FRACTION = 0.1

#: Calibration samples the mixed recipe measures each group on (each costs a forward).
MIXED_SAMPLES = 2

#: Longest the mixed recipe's end-to-end sensitivity measurement may take before it
#: measures each group at its own output instead (``measure_sensitivity``).
MIXED_BUDGET_SECONDS = 180.0


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
    ``unquantized`` are op-scope regexes left entirely float (``float_op_regex``);
    ``calibration`` maps a signature key to its input dicts (needed by ``w8a8``).
    """
    from ai_edge_quantizer import quantizer as aeq
    from ai_edge_quantizer.calibrator import CalibrationMode

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
                result = qt.calibrate(
                    calibration,
                    num_threads=os.cpu_count() or 1,
                    # Keeping every intermediate tensor (the default) needs 17 GiB for a
                    # paper-size UNet; the profiler records ranges as the model runs.
                    mode=CalibrationMode.CALIBRATION_PROFILER_BASED,
                )
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


@dataclass(frozen=True)
class FloatOp:
    """One op a full-integer model keeps float, and why (recorded in the artifact)."""

    op: str
    """The LiteRT op type (``SOFTMAX``, ``FULLY_CONNECTED``, ...)."""
    scope: str
    """Its output tensor names joined by ``;``: what ai_edge_quantizer matches recipes on."""
    reason: str


#: Names of the UNet's timestep input (``step_index`` with the fold_timesteps rewrite).
TIMESTEP_INPUTS = ("timestep", "step_index")

TIMESTEP_PATH = "timestep path"
MASKED_SOFTMAX = "masked softmax"


def full_integer_float_ops(path: Path, signature: str) -> list[FloatOp]:
    """The ops of the float model ``path`` that ``w8a8`` keeps float, found in its graph.

    - ``timestep path``: every op whose inputs come from the timestep input alone (the
      sinusoid, the time MLP and its SiLU, each resnet's ``time_emb_proj``; the table
      gather with ``fold_timesteps``). A timestep of 0..999 and angles up to ~1000 rad have
      no useful per-tensor int8 form (steps of ~4 in the angle), and the per-block time
      biases span every timestep's range; all of it is a few (1, C) vectors.
    - ``masked softmax``: a SOFTMAX fed by an ADD (CLIP's causal mask) and that ADD. The
      mask's large negative constant stretches the per-tensor int8 range of the logits
      until every real logit rounds to one value.

    Found from the graph, not from names: the converter's tensor names are a convention
    that an edit of the network or a tool update can change without a sound.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    inputs = interpreter._get_full_signature_list()[signature]["inputs"]
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # in execution order

    def record(op: dict[str, Any], reason: str) -> FloatOp:
        scope = ";".join(names[i] for i in op["outputs"] if i >= 0)
        return FloatOp(op["op_name"], scope, reason)

    timed = {index for name, index in inputs.items() if name in TIMESTEP_INPUTS}
    rest = {index for name, index in inputs.items() if name not in TIMESTEP_INPUTS}
    kept: list[FloatOp] = []
    for op in ops:
        sources = [i for i in op["inputs"] if i >= 0]
        if any(i in rest for i in sources):
            rest.update(op["outputs"])
        elif any(i in timed for i in sources):
            timed.update(op["outputs"])
            kept.append(record(op, TIMESTEP_PATH))
    produced_by = {out: op for op in ops for out in op["outputs"]}
    for op in ops:
        if op["op_name"] != "SOFTMAX":
            continue
        source = produced_by.get(op["inputs"][0])
        if source is not None and source["op_name"] == "ADD":
            kept += [record(source, MASKED_SOFTMAX), record(op, MASKED_SOFTMAX)]
    return kept


def float_op_regex(op: FloatOp) -> str:
    """The recipe regex for exactly ``op`` (ai_edge_quantizer adds a trailing ``;``)."""
    return "^" + re.escape(op.scope) + ";?$"


def _fake_int8(weight: Tensor) -> Tensor:
    """Symmetric per-output-channel int8 round trip, as the LiteRT quantizer does it."""
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return (torch.round(flat / scale).clamp(-127, 127) * scale).reshape(weight.shape)


@torch.no_grad()
def measure_sensitivity(
    module: nn.Module,
    groups: list[LayerGroup],
    samples: list[tuple[Tensor, ...]],
    budget_seconds: float = MIXED_BUDGET_SECONDS,
) -> tuple[list[float], str]:
    """Per group, how much int8 weights in that group alone hurt; and which metric it was.

    ``"output"``: relative error ||y_q - y|| / ||y|| of the network's output with only that
    group's weights int8, averaged over ``samples`` (one forward per group and sample).
    When that would take longer than ``budget_seconds`` (a paper-size UNet has ~100 groups
    and a forward of seconds), ``"group_output"``: the same ratio at each group's own
    output, all groups in one pass per sample. It ranks what a group does to its own
    result rather than what survives to the end, at the cost of two forwards in all.
    """
    started = time.perf_counter()
    references = [module(*s) for s in samples]
    forward_seconds = (time.perf_counter() - started) / max(1, len(samples))
    if forward_seconds * len(groups) * len(samples) > budget_seconds:
        return _group_output_errors(module, groups, samples), "group_output"
    from torch.func import functional_call

    params = dict(module.named_parameters())
    errors = []
    for group in groups:
        swapped = {name: _fake_int8(params[name]) for name in group.weights}
        total = 0.0
        for sample, ref in zip(samples, references, strict=True):
            out = functional_call(module, swapped, sample)
            total += _relative_error(out, ref)
        errors.append(total / len(samples))
    return errors, "output"


def _relative_error(out: Tensor, ref: Tensor) -> float:
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def _group_output_errors(
    module: nn.Module, groups: list[LayerGroup], samples: list[tuple[Tensor, ...]]
) -> list[float]:
    """Each group run a second time with int8 weights, on its own float inputs (hooks)."""
    from torch.func import functional_call

    totals = [0.0] * len(groups)
    calls = [0] * len(groups)
    busy = [False]  # the quantized re-run calls the module again: no hook then
    handles = []
    for i, group in enumerate(groups):
        sub = module.get_submodule(group.path)
        prefix = f"{group.path}."
        swapped = {
            name.removeprefix(prefix): _fake_int8(module.get_parameter(name))
            for name in group.weights
        }

        def hook(mod, args, kwargs, output, i=i, swapped=swapped):
            if busy[0]:
                return
            busy[0] = True
            try:
                quantized = functional_call(mod, swapped, args, kwargs)
            finally:
                busy[0] = False
            totals[i] += _relative_error(quantized, output)
            calls[i] += 1

        handles.append(sub.register_forward_hook(hook, with_kwargs=True))
    try:
        for sample in samples:
            module(*sample)
    finally:
        for handle in handles:
            handle.remove()
    return [t / c if c else 0.0 for t, c in zip(totals, calls, strict=True)]


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
