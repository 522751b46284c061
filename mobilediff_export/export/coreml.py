"""Core ML: one component as an ML Program (``.mlpackage``), compressed by recipe, and checked
as far as Linux allows.

Conversion (``convert_coreml``)::

    module ─ exportable (int32 token ids) ─ apply_rewrites (default: the Neural Engine
      layout of rewrite.DEFAULT_REWRITES["coreml"]) ─ torch.jit.trace
      ─ ct.convert(mlprogram, iOS 17, fp16 or fp32 compute, I/O named and typed as
        signatures.component_io / rewrite.rewritten_io promise)
      ─ weights by recipe:
          fp32, fp16         as converted (fp32 / fp16 consts)
          int8-weight        int8 per-channel, symmetric (linear_quantize_weights), fp32 compute
          int8-fp16          the same with fp16 compute
          palettize-6/4bit   k-means look-up table per tensor (palettize_weights), fp16 compute
          mixed              int8 per-channel except the layers measured most sensitive,
                             which stay fp16 (see ``_mixed_keep``), fp16 compute
      ─ recipe and rewrites into the model's metadata ─ saved beside ``out_path`` under a
        temporary name, then renamed into place (nothing partial is ever left there)

Why iOS 17 (macOS 14) as the minimum deployment target: it is the oldest OS that runs
everything we emit *well*. Int8 per-channel and LUT weights exist since iOS 16, but iOS 16
decompresses them to fp16 ahead of running, so a compressed UNet costs its fp16 size in
memory on the phone; iOS 17 brought faster compressed-weight kernels that decompress on the
fly where they can (coremltools' "what's new" for optimization), and it is the OS of the
paper's device (iPhone 15 Pro). iOS 18 would buy nothing our recipes use (blockwise int4,
grouped-channel LUTs, an SDPA op) and would make coremltools emit iOS 18-only ops that
iOS 17 phones cannot load.

Linux cannot run a Core ML model ("only supported on macOS"). ``check_coreml`` checks what
it can: (a) the spec's inputs and outputs against the manifest entry, (b) the weights in
the MIL program against the recipe (fp16/fp32 consts, int8 ``constexpr_affine_dequantize``
or ``constexpr_blockwise_shift_scale``, ``constexpr_lut_to_dense`` with the recipe's bit
width), (c) the weights rebuilt from the MIL program (dequantized), loaded back into the
PyTorch module, against the module's own outputs on seeded inputs; and it reports
prediction as ``needs_macos``, never as passed.

Mapping MIL weights back to PyTorch (``rebuilt_state``): the torch frontend names a
weight's const after its module path (``down_levels.0.conv1.weight`` ->
``down_levels_0_conv1_weight``) plus suffixes (``_to_fp16``, ``_quantized``,
``_palettized``); the layout is the parameter's or a reshape of it (1x1 conv weights after
``linear_as_conv``) or, for a matrix, its transpose. Some passes rename or rescale: a
GroupNorm's affine becomes a ``batch_norm`` whose gamma/beta are named after the op, and
``q * scale`` after a 1x1 conv (``linear_as_conv``) is folded into the q weights. Those
are matched by value: the const of the same size that reproduces the tensor to within
rounding, either as is or divided by one of the module's own attention scales. A tensor
found nowhere is fine only if it is the identity (ones for a norm's weight, zeros for a
bias) that the converter folds away; anything else fails the check.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, MobileDiffError
from ..metrics import error_figures, psnr_from_mse
from .artifacts import Component, ComponentArtifact, TensorSpec
from .quantize import Recipe
from .signatures import ComponentIO, component_io, exportable

if TYPE_CHECKING:
    from .rewrite import RewriteOptions

MINIMUM_DEPLOYMENT_TARGET = "iOS17"
"""See the module docstring for why."""

WEIGHT_THRESHOLD = 2048
"""Weights with more elements than this are compressed (coremltools' own default): below
it the per-channel scales or the look-up table cost about as much as they save."""

COMPRESSED_OP_TYPES = ("conv", "conv_transpose", "linear", "matmul", "gather")
"""Only consts that feed these MIL ops are compressed: the weights of convolutions,
linear layers and embeddings. Other large consts are not weights (the text encoder's
causal mask, which int8 would even break: its fp16 scale overflows to inf and the
dequantized mask becomes NaN) and stay float."""

MIXED_KEEP_ERROR_SHARE = 0.5
"""mixed: keep layers in fp16, most sensitive first, until they account for this share of
the summed int8 error of all layers measured one at a time ..."""
MIXED_KEEP_MAX_ELEMENTS = 0.1
"""... skipping any layer that would take the kept weights past this share of the
compressible ones (the size budget: a mixed model is at most ~10% larger than int8)."""

REBUILT_MIN_PSNR_DB: dict[str, float] = {
    "fp32": 80.0,
    "fp16": 50.0,
    "int8-weight": 35.0,
    "int8-fp16": 35.0,
    "mixed": 35.0,
    "palettize-6bit": 25.0,
    "palettize-4bit": 15.0,
}
"""(c) passes when the PyTorch module with the weights rebuilt from the MIL program gives
outputs within this PSNR of its own (same inputs, fp32 compute on both sides, so this is
the weights' error alone). fp32 must also stay within ``FP32_MAX_RELATIVE_ERROR``.
The tiny config's three networks (random weights) give fp16 76-86 dB, int8 50-63,
6-bit 39-48, 4-bit 28-37; a wrong layout or a lost weight gives 0-20 dB."""
FP32_MAX_RELATIVE_ERROR = 1e-4
"""The issue's fp32 figure: max abs error within 1e-4 of the output scale."""

METADATA_PREFIX = "mobilediff."
"""The model's user-defined metadata: recipe, rewrites (names and options), kept layers."""

NOT_CHECKED_ON_LINUX = [
    "prediction: the Core ML runtime exists only on macOS/iOS (needs_macos)",
    "fp16 compute: activations rounded to fp16 on the device (the rebuilt-weights check "
    "computes in fp32)",
    "compilation to .mlmodelc and placement on the Neural Engine / GPU / CPU",
]

_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32", "DOUBLE": "float64"}
_SUFFIXES = ("_quantized", "_palettized", "_to_fp16", "_to_fp32")

Stage = Callable[[str], None]


# --------------------------------------------------------------------------- convert


def convert_coreml(
    module: nn.Module,
    config: ModelConfig,
    component: Component,
    out_path: Path,
    recipe: Recipe,
    rewrites: RewriteOptions | None = None,
    *,
    stage: Stage | None = None,
) -> ComponentArtifact:
    """Convert one component to the ML Program ``out_path`` (``*.mlpackage``) by ``recipe``.

    ``rewrites`` None applies ``rewrite.DEFAULT_REWRITES["coreml"]``; pass
    ``RewriteOptions()`` for none. ``stage`` is called with the name of each stage as it
    starts (trace, convert, measure, compress, save), for progress displays. An existing
    ``out_path`` is an error: the bundle writer gives every export a fresh folder.
    """
    _check_recipe(recipe)
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise ConfigError(f"a Core ML model is a .mlpackage folder, not {out_path.name}")
    if out_path.exists():
        raise MobileDiffError(f"{out_path} already exists; remove it or export elsewhere")
    ct = _coremltools()
    note = stage or (lambda _name: None)
    timings: dict[str, float] = {}
    clock = _Clock(timings, note)

    options = _resolve_rewrites(rewrites)
    traced_module, applied, io = _prepare(module, config, component, options)
    compute = _compute_precision(recipe)

    # Compression runs as the last pass of the conversion itself: compressing the converted
    # model afterwards would deserialize it and run the whole pass pipeline a second time.
    # mixed must first measure the uncompressed model, so it compresses afterwards.
    compress_now = recipe.weights in ("int8", "palettized") and not recipe.sensitive_fp16
    pipeline = ct.PassPipeline.DEFAULT
    if recipe.weights in ("int8", "palettized"):
        # Deduplication makes equal constants one (a conv's zero bias and a batch_norm's
        # zero mean, in the demo UNet); compressing one op's and not the other's is then
        # a "compression config conflict" and the whole conversion fails.
        pipeline.remove_passes(["common::const_deduplication"])
    if compress_now:
        pass_name, compression = _compression(recipe)
        pipeline.append_pass(pass_name)
        pipeline.set_options(pass_name, {"config": compression})

    with clock("trace"), _quiet(), torch.no_grad():
        traced = torch.jit.trace(traced_module, io.example_inputs, check_trace=False)
    with clock("convert"), _quiet():
        mlmodel = ct.convert(
            traced,
            inputs=[_ct_input(ct, spec) for spec in io.inputs],
            outputs=[_ct_output(ct, spec) for spec in io.outputs],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET),
            compute_precision=ct.precision.FLOAT16 if compute == "fp16" else ct.precision.FLOAT32,
            skip_model_load=True,
            pass_pipeline=pipeline,
        )
    del traced

    details: dict[str, Any] = {
        "minimum_deployment_target": MINIMUM_DEPLOYMENT_TARGET,
        "compute_precision": compute,
        "coremltools_version": ct.__version__,
    }
    kept: dict[str, str] = {}  # MIL const name -> PyTorch parameter name
    if recipe.sensitive_fp16:
        with clock("measure"):
            kept, sensitivity = _mixed_keep(mlmodel, recipe, traced_module, io, config, options)
        details["kept_fp16"] = list(kept.values())
        details["sensitivity"] = sensitivity
        with clock("compress"), _quiet():
            mlmodel = _compress(mlmodel, recipe, keep=list(kept))
    if recipe.weights in ("int8", "palettized"):
        details["weight_threshold"] = WEIGHT_THRESHOLD

    _write_metadata(mlmodel, component, recipe, applied, options, list(kept))
    with clock("save"):
        _save_atomically(mlmodel, out_path)
    summary = weight_summary(mlmodel._mil_program)  # the program just saved, in memory
    del mlmodel
    summary.pop("records")
    details["weights"] = summary
    details["size_bytes"] = _folder_size(out_path)
    details["stage_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    details["convert_seconds"] = round(sum(timings.values()), 2)
    return ComponentArtifact(
        target="coreml",
        component=component,
        path=out_path,
        precision=recipe.precision,
        recipe=recipe.name,
        inputs=list(io.inputs),
        outputs=list(io.outputs),
        rewrites=applied,
        details=details,
    )


def _check_recipe(recipe: Recipe) -> None:
    if "coreml" not in recipe.targets:
        raise ConfigError(
            f"recipe {recipe.name} does not apply to coreml (it applies to "
            f"{', '.join(sorted(recipe.targets))})"
        )
    if recipe.weights == "palettized" and recipe.palette_bits not in (1, 2, 4, 6, 8):
        raise ConfigError(
            f"recipe {recipe.name}: Core ML palettizes to 1, 2, 4, 6 or 8 bits on iOS 17, "
            f"not {recipe.palette_bits}"
        )


def _compute_precision(recipe: Recipe) -> str:
    """fp16 unless the recipe asks for fp32 compute; mixed is fp16 on Core ML.

    ``mixed`` keeps its sensitive layers "in fp16", which on Core ML means an fp16
    program (the Neural Engine computes in fp16 anyway); fp32 compute would force
    the model off the Neural Engine.
    """
    if recipe.sensitive_fp16:
        return "fp16"
    return "fp16" if recipe.compute == "fp16" else "fp32"


def _resolve_rewrites(rewrites: RewriteOptions | None) -> RewriteOptions | None:
    """The options to apply; None only when export/rewrite.py is not installed."""
    if rewrites is not None:
        return rewrites
    try:
        from .rewrite import DEFAULT_REWRITES
    except ImportError:  # pragma: no cover - rewrite.py ships with the package
        return None
    return DEFAULT_REWRITES["coreml"]


def _prepare(
    module: nn.Module,
    config: ModelConfig,
    component: Component,
    options: RewriteOptions | None,
) -> tuple[nn.Module, list[str], ComponentIO]:
    """The module as traced (wrapped, rewritten), the rewrites applied, and its I/O."""
    wrapped = exportable(module, component, "coreml")
    if options is None:
        return wrapped, [], component_io(config, component, "coreml")
    from .rewrite import apply_rewrites, rewritten_io

    rewritten, applied = apply_rewrites(wrapped, component, options)
    return rewritten.eval(), list(applied), rewritten_io(config, component, "coreml", options)


def _ct_input(ct: Any, spec: TensorSpec) -> Any:
    return ct.TensorType(name=spec.name, shape=spec.shape, dtype=np.dtype(spec.dtype).type)


def _ct_output(ct: Any, spec: TensorSpec) -> Any:
    # Without a dtype an fp16 program would hand out fp16; the manifest promises spec.dtype.
    return ct.TensorType(name=spec.name, dtype=np.dtype(spec.dtype).type)


def _compression(recipe: Recipe, keep: list[str] | tuple[str, ...] = ()) -> tuple[str, Any]:
    """The coremltools pass and its config for the recipe's weights; ``keep`` names MIL
    consts to leave uncompressed."""
    import coremltools.optimize.coreml as cto

    if recipe.weights == "int8":
        op_config: Any = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric",
            dtype="int8",
            granularity="per_tensor" if recipe.granularity == "per-tensor" else "per_channel",
            weight_threshold=WEIGHT_THRESHOLD,
        )
        pass_name = "compression::linear_quantize_weights"
    elif recipe.weights == "palettized":
        op_config = cto.OpPalettizerConfig(
            mode="kmeans",
            nbits=recipe.palette_bits,
            granularity="per_tensor",
            weight_threshold=WEIGHT_THRESHOLD,
        )
        pass_name = "compression::palettize_weights"
    else:
        raise ConfigError(f"recipe {recipe.name}: no Core ML compression for {recipe.weights}")
    config = cto.OptimizationConfig(
        op_type_configs=dict.fromkeys(COMPRESSED_OP_TYPES, op_config),
        op_name_configs=dict.fromkeys(keep),
    )
    return pass_name, config


def _compress(mlmodel: Any, recipe: Recipe, keep: list[str] | tuple[str, ...] = ()) -> Any:
    """A converted model with its weights compressed by the recipe (a new model)."""
    import coremltools.optimize.coreml as cto

    pass_name, config = _compression(recipe, keep)
    if pass_name == "compression::linear_quantize_weights":
        return cto.linear_quantize_weights(mlmodel, config)
    return cto.palettize_weights(mlmodel, config)


def _write_metadata(
    mlmodel: Any,
    component: Component,
    recipe: Recipe,
    applied: list[str],
    options: RewriteOptions | None,
    kept: list[str],
) -> None:
    """What the model file itself says about how it was made (check_coreml reads it back)."""
    meta = mlmodel.user_defined_metadata
    meta[METADATA_PREFIX + "component"] = component
    meta[METADATA_PREFIX + "recipe"] = recipe.name
    meta[METADATA_PREFIX + "rewrites"] = json.dumps(applied)
    if options is not None:
        meta[METADATA_PREFIX + "rewrite_options"] = json.dumps(dataclasses.asdict(options))
    if recipe.sensitive_fp16:
        meta[METADATA_PREFIX + "kept_fp16"] = json.dumps(kept)
    mlmodel.short_description = f"mobilediff {component} ({recipe.name})"


def _save_atomically(mlmodel: Any, out_path: Path) -> None:
    """Save under a temporary folder beside ``out_path``, then rename it into place."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent)
    )
    try:
        package = staging / out_path.name  # coremltools insists on the .mlpackage suffix
        mlmodel.save(str(package))
        os.replace(package, out_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class _Clock:
    """Times named stages into ``timings`` and announces each to ``note``."""

    def __init__(self, timings: dict[str, float], note: Stage) -> None:
        self.timings = timings
        self.note = note

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.note(name)
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started


# --------------------------------------------------------------------------- mixed


def _mixed_keep(
    mlmodel: Any,
    recipe: Recipe,
    module: nn.Module,
    io: ComponentIO,
    config: ModelConfig,
    options: RewriteOptions | None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """The MIL consts the mixed recipe keeps in fp16 (-> their parameter), by sensitivity.

    Each compressible weight is quantized exactly as the recipe quantizes it (the real
    coremltools int8 model, its weights rebuilt), put into the PyTorch module alone,
    and the output's error measured against the unquantized module on seeded inputs.
    The most sensitive layers are kept in fp16 until they cover ``MIXED_KEEP_ERROR_SHARE``
    of the summed error, skipping any that would take the kept weights past
    ``MIXED_KEEP_MAX_ELEMENTS`` of them.
    """
    with _quiet():
        quantized = _compress(mlmodel, recipe)
    program = quantized._mil_program
    # A compressed weight's op is its const's name + "_quantized"; the const (the name
    # to keep) is what the unquantized program calls it.
    compressed = {
        op.name: op.name.removesuffix("_quantized")
        for op in program.functions["main"].operations
        if op.op_type.startswith("constexpr_")
    }
    rebuilt = rebuilt_state(program, module)
    del quantized, program
    inputs = probe_inputs(io, config, options)
    with torch.no_grad():
        reference = _run(module, inputs)

    errors: dict[str, tuple[float, int, str]] = {}  # param -> (mse, elements, MIL name)
    params = dict(module.named_parameters())
    for name, mil_name in rebuilt.matches.items():
        if mil_name not in compressed or name not in params:
            continue
        with _swapped(module, {name: rebuilt.state[name]}), torch.no_grad():
            out = _run(module, inputs)
        mse = float(np.mean([np.mean((r - o) ** 2) for r, o in zip(reference, out, strict=True)]))
        errors[name] = (mse, int(params[name].numel()), compressed[mil_name])

    total_error = sum(e for e, _, _ in errors.values()) or 1.0
    total_elements = sum(n for _, n, _ in errors.values()) or 1
    kept: dict[str, str] = {}
    kept_error = kept_elements = 0.0
    for name, (mse, elements, mil_name) in sorted(errors.items(), key=lambda kv: -kv[1][0]):
        if kept_error >= MIXED_KEEP_ERROR_SHARE * total_error:
            break
        if kept_elements + elements > MIXED_KEEP_MAX_ELEMENTS * total_elements:
            continue  # too big for the size budget; a smaller sensitive layer may fit
        kept[mil_name] = name
        kept_error += mse
        kept_elements += elements
    peak = max(float(r.max() - r.min()) for r in reference) or 1.0
    ranked = sorted(errors.items(), key=lambda kv: -kv[1][0])[:10]
    sensitivity = {
        "method": "int8 per-channel on one layer at a time, weights rebuilt from the "
        "coremltools int8 model, output PSNR against the unquantized module",
        "layers_measured": len(errors),
        "kept_share_of_error": round(kept_error / total_error, 3),
        "kept_share_of_elements": round(kept_elements / total_elements, 3),
        "most_sensitive_psnr_db": {
            name: round(psnr_from_mse(mse, peak), 2) for name, (mse, _, _) in ranked
        },
    }
    return kept, sensitivity


# --------------------------------------------------------------------------- check


def check_coreml(
    path: Path,
    artifact_entry: dict[str, Any],
    module: nn.Module,
    config: ModelConfig,
    component: str,
) -> dict[str, Any]:
    """What Linux can verify of one converted component; see the module docstring.

    ``artifact_entry`` is the component's manifest entry (``inputs``, ``outputs``,
    ``recipe``, ``rewrites``); ``module`` the PyTorch original (unrewritten, fp32).
    Returns a JSON-ready dict: ``passed`` (every check that ran passed), ``problems``
    (why not), ``checks`` (spec_io, weights, rebuilt_weights), ``prediction:
    "needs_macos"`` and ``not_checked``.
    """
    from .quantize import get_recipe

    ct = _coremltools()
    path = Path(path)
    if not (path / "Manifest.json").is_file():
        raise MobileDiffError(f"{path} is not a Core ML package (no Manifest.json)")
    recipe = get_recipe(artifact_entry.get("recipe", ""))
    _check_recipe(recipe)
    with _quiet():
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    meta = dict(spec.description.metadata.userDefined)
    problems: list[str] = []

    spec_io = _check_spec_io(spec, artifact_entry)
    program = _load_program(path, mlmodel)
    del mlmodel
    weights = _check_weights(program, recipe, meta)
    rebuilt = _check_rebuilt(program, module, config, component, recipe, meta, artifact_entry)
    for name, result in (("spec_io", spec_io), ("weights", weights), ("rebuilt_weights", rebuilt)):
        problems += [f"{name}: {p}" for p in result["problems"]]
    if meta.get(METADATA_PREFIX + "recipe", recipe.name) != recipe.name:
        problems.append(
            f"the model says recipe {meta[METADATA_PREFIX + 'recipe']}, the manifest {recipe.name}"
        )
    return {
        "target": "coreml",
        "component": component,
        "recipe": recipe.name,
        "passed": not problems,
        "problems": problems,
        "checks": {"spec_io": spec_io, "weights": weights, "rebuilt_weights": rebuilt},
        "prediction": "needs_macos",
        "not_checked": list(NOT_CHECKED_ON_LINUX),
    }


def _check_spec_io(spec: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """(a) names, shapes and dtypes of the spec's features against the manifest entry."""
    found = {
        "inputs": [_feature(f) for f in spec.description.input],
        "outputs": [_feature(f) for f in spec.description.output],
    }
    problems = []
    for side in ("inputs", "outputs"):
        want = [
            {"name": t["name"], "shape": list(t["shape"]), "dtype": t["dtype"]}
            for t in entry.get(side, [])
        ]
        if found[side] != want:
            problems.append(f"{side}: the model has {found[side]}, the manifest says {want}")
    return {"passed": not problems, "problems": problems, **found}


def _feature(feature: Any) -> dict[str, Any]:
    from coremltools.proto import FeatureTypes_pb2

    array = feature.type.multiArrayType
    kind = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
    return {"name": feature.name, "shape": list(array.shape), "dtype": _DTYPES.get(kind, kind)}


def _check_weights(program: Any, recipe: Recipe, meta: dict[str, str]) -> dict[str, Any]:
    """(b) every weight's storage in the MIL program against what the recipe promises."""
    summary = weight_summary(program)
    records = summary.pop("records")
    compute = _compute_precision(recipe)
    float_dtype = "float16" if compute == "fp16" else "float32"
    kept = set(json.loads(meta.get(METADATA_PREFIX + "kept_fp16", "[]")))
    problems: list[str] = []
    compressing = recipe.weights in ("int8", "palettized")
    for r in records:
        where = f"{r['name']} {r['shape']}"
        if not r["finite"]:
            problems.append(f"{where} holds inf or NaN")
        if r["kind"] == "const":
            if r["dtype"] != float_dtype and r["large"]:
                problems.append(f"{where} is {r['dtype']}, the recipe computes in {compute}")
            if r["compressible"] and compressing and r["name"] not in kept:
                problems.append(f"{where} is an uncompressed {r['dtype']} weight")
            continue
        if r["output_dtype"] != float_dtype:
            problems.append(f"{where} decompresses to {r['output_dtype']}, not {float_dtype}")
        if recipe.weights == "int8":
            if r["kind"] not in ("affine", "blockwise") or r["dtype"] != "int8":
                problems.append(f"{where} is {r['kind']} {r['dtype']}, not int8 affine")
            elif recipe.granularity == "per-channel" and not r.get("per_channel"):
                problems.append(f"{where} has no per-channel scales")
        elif recipe.weights == "palettized":
            if r["kind"] != "lut" or r["nbits"] != recipe.palette_bits:
                problems.append(
                    f"{where} is {r['kind']} ({r.get('nbits')} bits), not a "
                    f"{recipe.palette_bits}-bit look-up table"
                )
        else:
            problems.append(f"{where} is compressed ({r['kind']}); recipe {recipe.name} is not")
    if recipe.weights in ("int8", "palettized") and not summary["compressed"]:
        problems.append("no weight is compressed")
    if kept:
        missing = sorted(kept - {r["name"] for r in records if r["kind"] == "const"})
        if missing:
            problems.append(f"layers the mixed recipe keeps are not fp16 consts: {missing}")
    summary["expected"] = {
        "float_dtype": float_dtype,
        "compressed": {"int8": "int8 affine, per-channel", "palettized":
                       f"{recipe.palette_bits}-bit LUT"}.get(recipe.weights, "none"),
        "kept_fp16": len(kept),
    }  # fmt: skip
    return {"passed": not problems, "problems": problems, **summary}


def _check_rebuilt(
    program: Any,
    module: nn.Module,
    config: ModelConfig,
    component: str,
    recipe: Recipe,
    meta: dict[str, str],
    entry: dict[str, Any],
) -> dict[str, Any]:
    """(c) the PyTorch module with the program's weights against the module as it is."""
    options = _options_from_metadata(meta)
    traced_module, applied, io = _prepare(module, config, component, options)  # type: ignore[arg-type]
    problems: list[str] = []
    if list(entry.get("rewrites", [])) != applied:
        problems.append(
            f"rewrites: the manifest lists {entry.get('rewrites', [])}, re-applying the "
            f"model's recorded options gives {applied}"
        )
    rebuilt = rebuilt_state(program, traced_module)
    del program
    for name in rebuilt.unmatched:
        problems.append(f"parameter {name} has no weight in the MIL program")
    folded = [
        n
        for n in _float_tensors(traced_module)
        if n not in rebuilt.matches and n not in rebuilt.unmatched
    ]

    inputs = probe_inputs(io, config, options)
    with torch.no_grad():
        reference = _run(traced_module, inputs)
        with _swapped(traced_module, rebuilt.state):
            outputs = _run(traced_module, inputs)
    figures = _compare(reference, outputs)
    min_psnr = REBUILT_MIN_PSNR_DB[recipe.name]
    if figures["psnr_db"] is None or figures["psnr_db"] < min_psnr:
        problems.append(f"PSNR {figures['psnr_db']} dB is below {min_psnr} dB")
    if recipe.name == "fp32" and not (figures["relative_error"] or 0.0) <= FP32_MAX_RELATIVE_ERROR:
        problems.append(
            f"relative error {figures['relative_error']:.3g} is above {FP32_MAX_RELATIVE_ERROR}"
        )
    return {
        "passed": not problems,
        "problems": problems,
        **figures,
        "min_psnr_db": min_psnr,
        "parameters_mapped": len(rebuilt.matches),
        "parameters_folded_identity": folded,
        "parameters_unmapped": rebuilt.unmatched,
        "folded_scales": {n: round(f, 6) for n, f in rebuilt.folded_scales.items()},
        "max_weight_error": _max_weight_error(rebuilt.state, traced_module),
        "compared_against": "the PyTorch module (with the recorded rewrites) on seeded inputs, "
        "fp32 compute on both sides",
    }


def read_metadata(path: Path) -> dict[str, Any]:
    """What ``convert_coreml`` recorded in a model: component, recipe, rewrites (names and
    options), and for mixed the MIL consts kept in fp16; JSON values decoded."""
    ct = _coremltools()
    with _quiet():
        spec = ct.utils.load_spec(str(path))
    found: dict[str, Any] = {}
    for key, value in spec.description.metadata.userDefined.items():
        if key.startswith(METADATA_PREFIX):
            name = key.removeprefix(METADATA_PREFIX)
            found[name] = value if name in ("component", "recipe") else json.loads(value)
    return found


def _options_from_metadata(meta: dict[str, str]) -> RewriteOptions | None:
    raw = meta.get(METADATA_PREFIX + "rewrite_options")
    if raw is None:
        return None
    from .rewrite import RewriteOptions

    fields = json.loads(raw)
    if fields.get("fold_timesteps") is not None:
        fields["fold_timesteps"] = tuple(fields["fold_timesteps"])
    return RewriteOptions(**fields)


def _max_weight_error(state: dict[str, torch.Tensor], module: nn.Module) -> float:
    """The largest error of one rebuilt weight, relative to that weight's max |value|."""
    originals = _float_tensors(module)
    worst = 0.0
    for name, rebuilt in state.items():
        original = originals[name].detach().float()
        scale = float(original.abs().max()) or 1.0
        worst = max(worst, float((rebuilt - original).abs().max()) / scale)
    return worst


# --------------------------------------------------------------------------- MIL program


def _load_program(path: Path, mlmodel: Any = None) -> Any:
    """The MIL program of a saved ``.mlpackage``, weights included (no macOS needed)."""
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_to_pymil

    with _quiet():
        if mlmodel is None:
            mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        return milproto_to_pymil(
            spec,
            specification_version=spec.specificationVersion,
            file_weights_dir=mlmodel.weights_dir,
        )


def weight_summary(program: Any) -> dict[str, Any]:
    """How the program stores its weights: counts and bytes per kind, and one record each.

    A weight is a float ``const`` of rank >= 2 or any ``constexpr_*`` op (a compressed
    weight). ``large``: more than ``WEIGHT_THRESHOLD`` elements; ``compressible``: large
    and feeding only ``COMPRESSED_OP_TYPES``, what a compressing recipe must compress.
    Kinds: ``const`` (dtype float16/float32), ``affine`` (int8 + per-channel scale, the
    iOS 16 op), ``blockwise`` (the iOS 18 op), ``lut`` (look-up table, ``nbits`` bits per
    index), ``other``. ``finite`` is False when a (decompressed) value is inf or NaN.
    """
    records: list[dict[str, Any]] = []
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            if any(c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
                continue
            val = op.outputs[0].val
            if not isinstance(val, np.ndarray) or val.dtype.kind != "f" or val.ndim < 2:
                continue
            record = _record(op, "const", str(val.dtype), val.shape, val.nbytes)
            record["finite"] = bool(np.isfinite(val).all())
            records.append(record)
        elif op.op_type.startswith("constexpr_"):
            records.append(_constexpr_record(op))
    counts: dict[str, int] = {}
    nbytes: dict[str, int] = {}
    for r in records:
        key = r["kind"] if r["kind"] != "const" else r["dtype"]
        if r["kind"] == "lut":
            key = f"lut{r['nbits']}"
        counts[key] = counts.get(key, 0) + 1
        nbytes[key] = nbytes.get(key, 0) + r["bytes"]
    return {
        "counts": counts,
        "bytes": nbytes,
        "compressed": sum(1 for r in records if r["kind"] != "const"),
        "records": records,
    }


def _record(op: Any, kind: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> dict:
    size = int(np.prod(shape)) if shape else 1
    feeds = sorted({c.op_type for c in op.outputs[0].child_ops})
    large = len(shape) >= 2 and size > WEIGHT_THRESHOLD
    return {
        "name": op.name,
        "kind": kind,
        "dtype": dtype,
        "shape": [int(s) for s in shape],
        "bytes": int(nbytes),
        "feeds": feeds,
        "large": large,
        "compressible": large and bool(feeds) and set(feeds) <= set(COMPRESSED_OP_TYPES),
    }


def _constexpr_record(op: Any) -> dict[str, Any]:
    values = {name: var.val for name, var in op.inputs.items()}
    shape = tuple(int(s) for s in op.outputs[0].shape)
    stored = sum(v.nbytes for v in values.values() if isinstance(v, np.ndarray))
    if op.op_type == "constexpr_affine_dequantize":
        data, scale = values["quantized_data"], np.asarray(values["scale"])
        record = _record(op, "affine", str(data.dtype), shape, stored)
        record["per_channel"] = scale.size > 1 and scale.size in shape
    elif op.op_type == "constexpr_blockwise_shift_scale":
        data, scale = values["data"], np.asarray(values["scale"])
        record = _record(op, "blockwise", str(data.dtype), shape, stored)
        record["per_channel"] = scale.size > 1
    elif op.op_type == "constexpr_lut_to_dense":
        lut = np.asarray(values["lut"])
        entries = lut.shape[-2] if lut.ndim > 1 else lut.size  # iOS 18 LUTs are [..., n, 1]
        record = _record(op, "lut", str(lut.dtype), shape, stored)
        record["nbits"] = round(math.log2(entries))
    else:
        record = _record(op, "other", op.op_type, shape, stored)
    record["output_dtype"] = _mil_dtype(op.outputs[0].dtype)
    record["finite"] = bool(np.isfinite(op.materialized_val_inference()).all())
    return record


def _mil_dtype(dtype: Any) -> str:
    from coremltools.converters.mil.mil import types

    return str(np.dtype(types.nptype_from_builtin(dtype)))


def program_weights(program: Any) -> dict[str, np.ndarray]:
    """Every float weight of the program by its MIL name, decompressed to dense float32."""
    weights: dict[str, np.ndarray] = {}
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            if any(c.op_type.startswith("constexpr_") for c in op.outputs[0].child_ops):
                continue
            val = op.outputs[0].val
        elif op.op_type.startswith("constexpr_"):
            val = op.materialized_val_inference()
        else:
            continue
        if isinstance(val, np.ndarray) and val.dtype.kind == "f" and val.size > 1:
            weights[op.name] = val.astype(np.float32)
    return weights


@dataclasses.dataclass
class Rebuilt:
    """A module's float tensors rebuilt from a MIL program (see ``rebuilt_state``)."""

    state: dict[str, torch.Tensor]
    """Tensor name -> rebuilt value in the module's layout."""
    matches: dict[str, str]
    """Tensor name -> the MIL weight it came from."""
    unmatched: list[str]
    """Tensors found nowhere that are not an identity the converter may fold away."""
    folded_scales: dict[str, float]
    """Tensors the converter multiplied by an attention scale (the ``mul`` after a 1x1
    conv, folded into its weight by ``fuse_conv_scale``); their state is divided back."""


def rebuilt_state(program: Any, module: nn.Module) -> Rebuilt:
    """The module's float parameters and buffers rebuilt from the program's weights.

    See the module docstring for how MIL weights are matched to the module's tensors.
    """
    weights = program_weights(program)
    by_base: dict[str, str] = {}
    for mil_name in weights:
        base = mil_name
        while base.endswith(_SUFFIXES):
            base = next(base.removesuffix(s) for s in _SUFFIXES if base.endswith(s))
        by_base.setdefault(base, mil_name)
    by_size: dict[int, list[str]] = {}
    for mil_name, val in weights.items():
        by_size.setdefault(val.size, []).append(mil_name)

    scales = _attention_scales(module)
    result = Rebuilt({}, {}, [], {})
    for name, tensor in _float_tensors(module).items():
        original = tensor.detach().float()
        mil_name = by_base.get(name.replace(".", "_"))
        value = _layout(weights[mil_name], original) if mil_name is not None else None
        factor = 1.0
        if value is None:
            candidates = by_size.get(original.numel(), [])
            mil_name, value, factor = _match_by_value(weights, candidates, original, scales)
        if value is not None and mil_name is not None:
            result.state[name] = value
            result.matches[name] = mil_name
            if factor != 1.0:
                result.folded_scales[name] = factor
        elif not _is_identity(name, original):
            result.unmatched.append(name)
    return result


def _float_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and persistent buffers (weights; not what the config derives, like masks)."""
    tensors = module.state_dict(keep_vars=True)
    return {n: t for n, t in tensors.items() if t.is_floating_point() and t.numel() > 1}


def _layout(value: np.ndarray, original: torch.Tensor) -> torch.Tensor | None:
    """``value`` in ``original``'s layout (as is, reshaped, or a matrix transposed)."""
    if value.size != original.numel():
        return None
    candidates = [torch.from_numpy(value.reshape(tuple(original.shape)))]
    if value.ndim == 2 and original.dim() == 2 and value.shape == tuple(original.shape)[::-1]:
        candidates.insert(0, torch.from_numpy(np.ascontiguousarray(value.T)))
    elif value.ndim == 2 and value.shape[0] == value.shape[1] and original.dim() == 2:
        candidates.append(torch.from_numpy(np.ascontiguousarray(value.T)))
    return min(candidates, key=lambda c: float((c - original).abs().max()))


MATCH_TOLERANCE = 0.25
"""A MIL weight matched by value must reproduce the tensor within this relative RMS error
(|value - tensor| / |tensor|). Right matches differ by rounding or compression (fp16
~1e-3, int8 ~1e-2, a 4-bit look-up table ~0.1); unrelated tensors by about sqrt(2)."""

FACTOR_TOLERANCE = 1e-2
"""A value match's least-squares factor must be one of the attention scales (or 1) within
this relative difference, or within twice the square of the match's relative error if that
is more. Compression biases the factor by about that square: a palettized weight's values
are its clusters' means, so the error is orthogonal to the value and the factor comes out
1 - error**2 of the true one (a 4-bit look-up table: error ~0.09, factor ~0.99)."""


def _match_by_value(
    weights: dict[str, np.ndarray],
    candidates: list[str],
    original: torch.Tensor,
    scales: tuple[float, ...],
) -> tuple[str | None, torch.Tensor | None, float]:
    """The MIL weight of the same size nearest ``original``, up to one of ``scales``.

    A weight the converter scaled (an attention's ``q * head_dim**-0.5`` folded into the
    q projection by ``fuse_conv_scale``) is recognised by its least-squares factor being
    one of the module's own attention scales, and rebuilt divided by it. Any other factor
    is no match: a weight off by an unexplained constant is an error, not a layout. How
    near the factor must be allows for compression's bias (see ``FACTOR_TOLERANCE``).
    Consts the converter deduplicated may match several tensors, which is what they are.
    Returns (MIL name, value, factor) or (None, None, 1.0).
    """
    norm = float((original * original).sum())
    if norm == 0.0:  # all zeros: nothing to tell candidates apart by (see _is_identity)
        return None, None, 1.0
    best: tuple[float, str | None, torch.Tensor | None, float] = (math.inf, None, None, 1.0)
    for mil_name in candidates:
        laid_out = _layout(weights[mil_name], original)
        if laid_out is None:
            continue
        fitted = float((laid_out * original).sum()) / norm
        factor = min((1.0, *scales), key=lambda s: abs(fitted / s - 1.0))
        value = laid_out / factor if factor != 1.0 else laid_out
        error = math.sqrt(float(((value - original) ** 2).sum()) / norm)
        if abs(fitted / factor - 1.0) > max(FACTOR_TOLERANCE, 2.0 * error * error):
            continue
        if error < best[0]:
            best = (error, mil_name, value, factor)
    if best[0] <= MATCH_TOLERANCE:
        return best[1], best[2], best[3]
    return None, None, 1.0


def _attention_scales(module: nn.Module) -> tuple[float, ...]:
    """The query scales of the module's attention layers (what the converter may fold)."""
    found = {
        float(m.scale)
        for m in module.modules()
        if isinstance(getattr(m, "scale", None), float) and m.scale not in (0.0, 1.0)
    }
    return tuple(sorted(found))


def _is_identity(name: str, tensor: torch.Tensor) -> bool:
    """A norm weight of ones or a bias/shift of zeros: the converter may drop it."""
    return bool((tensor == 0).all()) or (name.endswith("weight") and bool((tensor == 1).all()))


# --------------------------------------------------------------------------- numerics


def probe_inputs(
    io: ComponentIO,
    config: ModelConfig,
    options: RewriteOptions | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the component's exact I/O: token ids, timesteps, Gaussians.

    Zeros (the tracing examples) would hide errors: a zero latent or context multiplies
    many weights away. ``options`` gives the timestep list when the UNet takes an index
    into it (``fold_timesteps``).
    """
    generator = torch.Generator().manual_seed(seed)
    out = []
    for spec, example in zip(io.inputs, io.example_inputs, strict=True):
        shape = tuple(spec.shape)
        if spec.name == "input_ids":
            high = config.text_encoder.vocab_size
            out.append(torch.randint(0, high, shape, generator=generator).to(example.dtype))
        elif spec.name == "step_index":
            folded = options.fold_timesteps if options is not None else None
            steps = len(folded) if folded else config.pipeline.num_inference_steps
            out.append(torch.randint(0, steps, shape, generator=generator).to(example.dtype))
        elif spec.name == "timestep":
            high = float(config.pipeline.num_train_timesteps - 1)
            out.append(torch.rand(shape, generator=generator) * high)
        else:
            out.append(torch.randn(shape, generator=generator))
    return tuple(out)


def _run(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    out = module(*inputs)
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.detach().float().numpy() for o in outs]


@contextlib.contextmanager
def _swapped(module: nn.Module, state: dict[str, torch.Tensor]) -> Iterator[None]:
    """``module`` with some tensors' data replaced, restored afterwards.

    Rewritten modules share parameter objects with the original, so this changes the
    caller's module too while it lasts; the ``finally`` puts every tensor back.
    """
    tensors = _float_tensors(module)
    saved = {}
    try:
        for name, value in state.items():
            tensor = tensors[name]
            saved[name] = tensor.data
            tensor.data = value.to(tensor.dtype)
        yield
    finally:
        for name, data in saved.items():
            tensors[name].data = data


def _compare(reference: list[np.ndarray], other: list[np.ndarray]) -> dict[str, Any]:
    """``metrics.error_figures`` over all outputs together, PSNR rounded for the report."""
    figures = error_figures(
        np.concatenate([r.ravel() for r in reference]),
        np.concatenate([o.ravel() for o in other]),
    )
    if figures["psnr_db"] is not None:
        figures["psnr_db"] = round(figures["psnr_db"], 2)
    return figures


# --------------------------------------------------------------------------- coremltools


@functools.cache
def _coremltools() -> Any:
    """coremltools, imported quietly (it warns about untested torch/sklearn versions and
    its missing macOS runtime on import), or a clear error when it is not installed."""
    try:
        with _quiet():
            import coremltools
    except ImportError as exc:
        raise MobileDiffError(
            f"the coreml target needs coremltools ({exc}): pip install -e '.[export]'"
        ) from None
    return coremltools


_TQDM_USERS = (
    "coremltools.converters.mil.frontend.torch.ops._tqdm",
    "coremltools.converters.mil.mil.passes.pass_pipeline.tqdm",
    "coremltools.optimize.coreml._quantization_passes.tqdm",
    "coremltools.optimize.coreml._post_training_quantization.tqdm",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence coremltools' progress bars, warnings and log lines while it works.

    The export shows its own progress per component and stage; coremltools' half-dozen
    bars per conversion would scramble it. Its bars are module-level ``tqdm`` names,
    swapped here for a disabled tqdm and put back afterwards.
    """
    import importlib
    import sys

    from tqdm import tqdm

    def silent(*args: Any, **kwargs: Any) -> Any:
        kwargs["disable"] = True
        return tqdm(*args, **kwargs)

    names = ("coremltools", "torch.jit")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    patched = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for dotted in _TQDM_USERS:
                module_name, _, attr = dotted.rpartition(".")
                with contextlib.suppress(ImportError):
                    importlib.import_module(module_name)
                owner = sys.modules.get(module_name)
                if owner is not None and hasattr(owner, attr):
                    patched.append((owner, attr, getattr(owner, attr)))
                    setattr(owner, attr, silent)
            yield
    finally:
        for owner, attr, original in patched:
            setattr(owner, attr, original)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


__all__ = [
    "MINIMUM_DEPLOYMENT_TARGET",
    "REBUILT_MIN_PSNR_DB",
    "WEIGHT_THRESHOLD",
    "Rebuilt",
    "check_coreml",
    "convert_coreml",
    "probe_inputs",
    "program_weights",
    "read_metadata",
    "rebuilt_state",
    "weight_summary",
]
