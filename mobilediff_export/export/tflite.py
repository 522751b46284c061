"""LiteRT (TFLite): one component to one ``.tflite`` file with a named signature.

::

    module ─ exportable (int32 token ids) ─ apply_rewrites ─ named I/O wrapper
      │                                          (inputs/outputs named as the manifest's specs)
      └─ litert_torch.convert(lightweight) ─> fp32 .tflite (temp file beside out_path)
           └─ tflite_quantize.quantize_tflite(recipe) ─> quantized .tflite (temp file)
                └─ signature check in the LiteRT interpreter ─> rename to out_path

Memory is what limits a paper-size export on a phone-sized budget, so the converter:

- converts with litert-torch's *lightweight* mode: weights enter the MLIR module as
  resources that point at the torch tensors instead of being copied into it, and constant
  folding runs in the LiteRT runtime (a 379M-parameter UNet converts at 4.8 GB peak RSS
  instead of 7.6 GB, to the same graph);
- writes the float model to disk and drops every converter object before quantizing, and
  quantizes from a memory map straight into the output file (``tflite_quantize``);
- shares weights between the caller's module and the rewritten one (``rewrite``).

The signature is the component name; its inputs and outputs carry the names of
``signatures.component_io``'s specs (``rewrite.rewritten_io`` with ``fold_timesteps``:
``step_index`` instead of ``timestep``). The written file is opened in the LiteRT
interpreter and its signature read back; should a tool ever rename a tensor, the specs in
the artifact carry the names the file really has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, MobileDiffError
from ..fileio import usual_file_mode
from . import tflite_quantize
from .artifacts import Component, ComponentArtifact, TensorSpec
from .calibration import Calibration, synthetic_calibration
from .quantize import Recipe
from .rewrite import (
    DEFAULT_REWRITES,
    RewriteOptions,
    apply_rewrites,
    rewritten_io,
    settle_for_weights,
)
from .signatures import exportable

__all__ = ["convert_tflite", "read_signature", "weight_dtypes"]

_NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "int64": np.int64,
    "int8": np.int8,
    "uint8": np.uint8,
}


class NamedSignature(nn.Module):
    """Calls ``net`` with the inputs named as the specs and names its output the same way."""

    def __init__(self, net: nn.Module, input_names: list[str], output_name: str) -> None:
        super().__init__()
        self.net = net
        self.input_names = list(input_names)
        self.output_name = output_name

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.output_name: self.net(*(inputs[name] for name in self.input_names))}


def convert_tflite(
    module: nn.Module,
    config: ModelConfig,
    component: Component,
    out_path: Path,
    recipe: Recipe,
    rewrites: RewriteOptions | None = None,
    *,
    calibration: Calibration | None = None,
    mixed_float_fraction: float = tflite_quantize.MIXED_FLOAT_FRACTION,
) -> ComponentArtifact:
    """Convert one component to ``out_path`` with ``recipe``; the manifest's facts come back.

    ``rewrites`` defaults to ``DEFAULT_REWRITES["tflite"]`` (Winograd and split linear
    layers then on for fp32 weights only, see ``rewrite.settle_for_weights``).
    ``calibration`` (see ``calibration.collect_calibration``) feeds ``w8a8`` and ``mixed``;
    without it they calibrate on synthetic inputs and say so in ``details["calibration"]``.
    The output appears complete or not at all.
    """
    if "tflite" not in recipe.targets:
        raise ConfigError(
            f"recipe {recipe.name} does not apply to tflite (it applies to "
            f"{', '.join(sorted(recipe.targets))})"
        )
    options = DEFAULT_REWRITES["tflite"] if rewrites is None else rewrites
    options = settle_for_weights(options, recipe.weights)
    import litert_torch  # noqa: F401  (before rewriting: SDPA composites need its ops)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    io = rewritten_io(config, component, "tflite", options)
    net, applied = apply_rewrites(exportable(module, component, "tflite"), component, options)
    signature = component
    wrapper = NamedSignature(net, [s.name for s in io.inputs], io.outputs[0].name).eval()
    details: dict[str, Any] = {"converter": _versions()}
    needs_data = recipe.activations == "int8" or recipe.sensitive_fp16
    if needs_data and calibration is None:
        calibration = synthetic_calibration(config, component)
    float_scopes: list[str] = []
    if recipe.sensitive_fp16:
        float_scopes = _sensitive_scopes(
            wrapper, io, component, calibration, options, mixed_float_fraction, details
        )

    temps: list[Path] = []
    try:
        started = time.perf_counter()
        float_path = _temp_beside(out_path, "fp32", temps)
        _convert_float(wrapper, signature, io.example_inputs, io.inputs, float_path)
        del wrapper, net
        gc.collect()
        details["convert_seconds"] = round(time.perf_counter() - started, 2)

        result_path = float_path
        if recipe.weights != "fp32":
            started = time.perf_counter()
            result_path = _temp_beside(out_path, "quantized", temps)
            feeds, unquantized = None, []
            if recipe.activations == "int8":
                feeds = {signature: _feeds(calibration, component, io, options)}
                details["calibration"] = calibration.describe(component)
                # Full integer but for the ops int8 cannot carry; every one is listed.
                kept = tflite_quantize.full_integer_float_ops(float_path, signature)
                unquantized = [tflite_quantize.float_op_regex(op) for op in kept]
                details["float_ops"] = [dataclasses.asdict(op) for op in kept]
            with quiet_tools():
                facts = tflite_quantize.quantize_tflite(
                    float_path,
                    result_path,
                    recipe,
                    float_scopes=float_scopes,
                    unquantized=unquantized,
                    calibration=feeds,
                )
            details.update(facts)
            float_path.unlink()
            details["quantize_seconds"] = round(time.perf_counter() - started, 2)

        inputs, outputs = _checked_specs(result_path, signature, io.inputs, io.outputs, details)
        details["weight_dtypes"] = weight_dtypes(result_path)
        os.replace(result_path, out_path)
    finally:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    details["bytes"] = out_path.stat().st_size
    return ComponentArtifact(
        target="tflite",
        component=component,
        path=out_path,
        precision=recipe.precision,
        recipe=recipe.name,
        inputs=inputs,
        outputs=outputs,
        rewrites=applied,
        signature=signature,
        details=details,
    )


# --- conversion -----------------------------------------------------------------------


def _convert_float(
    wrapper: nn.Module,
    signature: str,
    example_inputs: tuple[torch.Tensor, ...],
    specs: list[TensorSpec],
    path: Path,
) -> None:
    """litert-torch in lightweight mode, written straight to ``path``."""
    import litert_torch

    kwargs = {spec.name: t for spec, t in zip(specs, example_inputs, strict=True)}
    with quiet_tools(), torch.no_grad():
        try:
            edge = litert_torch.signature(signature, wrapper, sample_kwargs=kwargs).convert(
                lightweight_conversion=True
            )
            edge.export(str(path))
        except MobileDiffError:
            raise
        except Exception as exc:
            raise MobileDiffError(
                f"litert-torch could not convert {signature}: {' '.join(str(exc).split())[:400]}"
            ) from exc
        del edge
        gc.collect()


@contextlib.contextmanager
def quiet_tools() -> Iterator[None]:
    """No progress output from litert-torch or ai_edge_quantizer, no native INFO lines.

    ``MOBILEDIFF_VERBOSE=1`` keeps them all. What the tools print is parked in a file and
    replayed on stderr if the block fails, so nothing that explains a failure is lost.
    """
    if os.environ.get("MOBILEDIFF_VERBOSE"):
        yield
        return
    import litert_torch

    shown = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as log:
        text = open(log.fileno(), "w", closefd=False, buffering=1)  # noqa: SIM115
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stderr(text):
                yield
        except BaseException:
            text.flush()
            os.dup2(saved, 2)
            log.seek(0)
            tail = log.read()[-4000:].decode("utf-8", "replace")
            if tail.strip():
                sys.stderr.write(tail)
            raise
        finally:
            text.flush()
            os.dup2(saved, 2)
            os.close(saved)
            litert_torch.config.show_progress = shown


def _temp_beside(dest: Path, tag: str, temps: list[Path]) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{tag}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    os.chmod(name, usual_file_mode())  # the final .tflite is this file renamed
    temps.append(Path(name))
    return Path(name)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("litert-torch", "ai-edge-quantizer", "ai-edge-litert"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


# --- signature check ------------------------------------------------------------------


def read_signature(path: Path, signature: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """A .tflite's signature as the LiteRT interpreter reads it: names, shapes, dtypes.

    The interpreter is built without its default delegate, so nothing is allocated or
    repacked: cheap even for a paper-size UNet.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    signatures = interpreter._get_full_signature_list()
    if signature is None:
        if len(signatures) != 1:
            raise MobileDiffError(f"{path} has signatures {sorted(signatures)}; name one")
        signature = next(iter(signatures))
    if signature not in signatures:
        raise MobileDiffError(f"{path} has no signature {signature!r} (has {sorted(signatures)})")
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def describe(mapping: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "shape": tuple(int(d) for d in tensors[index]["shape"]),
                "dtype": np.dtype(tensors[index]["dtype"]).name,
            }
            for name, index in sorted(mapping.items(), key=lambda item: item[1])
        ]

    found = signatures[signature]
    return {"inputs": describe(found["inputs"]), "outputs": describe(found["outputs"])}


def _checked_specs(
    path: Path,
    signature: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    details: dict[str, Any],
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The specs with the names the file really has; shapes and dtypes must be the specs'."""
    found = read_signature(path, signature)
    renamed: dict[str, str] = {}

    def match(specs: list[TensorSpec], real: list[dict[str, Any]], kind: str) -> list[TensorSpec]:
        if len(real) != len(specs):
            raise MobileDiffError(
                f"{signature}: the .tflite has {len(real)} {kind} ({[r['name'] for r in real]}), "
                f"the manifest promises {len(specs)} ({[s.name for s in specs]})"
            )
        by_name = {r["name"]: r for r in real}
        if set(by_name) != {s.name for s in specs}:
            # A tool renamed tensors: pair them by position in the signature.
            pairs = list(zip(specs, real, strict=True))
        else:
            pairs = [(s, by_name[s.name]) for s in specs]
        result = []
        for spec, tensor in pairs:
            if tensor["shape"] != tuple(spec.shape) or tensor["dtype"] != spec.dtype:
                raise MobileDiffError(
                    f"{signature}: {kind[:-1]} {tensor['name']} is {tensor['dtype']} "
                    f"{list(tensor['shape'])}, the manifest promises {spec.dtype} "
                    f"{list(spec.shape)}"
                )
            if tensor["name"] != spec.name:
                renamed[spec.name] = tensor["name"]
                spec = TensorSpec(tensor["name"], spec.shape, spec.dtype, spec.layout)
            result.append(spec)
        return result

    checked = match(inputs, found["inputs"], "inputs"), match(outputs, found["outputs"], "outputs")
    if renamed:
        details["renamed_tensors"] = renamed
    return checked


# --- calibration data -----------------------------------------------------------------


def _feeds(
    calibration: Calibration, component: Component, io, options: RewriteOptions
) -> list[dict[str, np.ndarray]]:
    """Calibration samples as signature input dicts (step indices with fold_timesteps)."""
    samples = calibration.for_component(component)
    if not samples:
        raise ConfigError(f"the calibration set has no samples for the {component}")
    feeds = []
    for sample in samples:
        feed = {}
        values = _with_step_index(sample, component, options)
        for spec, value in zip(io.inputs, values, strict=True):
            if tuple(value.shape) != tuple(spec.shape):
                raise ConfigError(
                    f"calibration input {spec.name} of the {component} has shape "
                    f"{list(value.shape)}, the export needs {list(spec.shape)}"
                )
            feed[spec.name] = np.ascontiguousarray(value, dtype=_NUMPY_DTYPES[spec.dtype])
        feeds.append(feed)
    return feeds


def _with_step_index(
    sample: tuple[np.ndarray, ...], component: Component, options: RewriteOptions
) -> tuple[np.ndarray, ...]:
    """With fold_timesteps the UNet takes the index of the nearest listed timestep."""
    if component != "unet" or options.fold_timesteps is None:
        return sample
    listed = np.asarray(options.fold_timesteps, dtype=np.float64)
    sample_, timestep, context = sample
    index = np.abs(listed[None, :] - np.asarray(timestep, np.float64)[:, None]).argmin(axis=1)
    return sample_, index.astype(np.int32), context


def _sensitive_scopes(
    wrapper: NamedSignature,
    io,
    component: Component,
    calibration: Calibration,
    options: RewriteOptions,
    fraction: float,
    details: dict[str, Any],
) -> list[str]:
    """Measure every layer group's sensitivity; the worst ``fraction`` stays fp16."""
    started = time.perf_counter()
    feeds = _feeds(calibration, component, io, options)[: tflite_quantize.MIXED_SAMPLES]
    names = [s.name for s in io.inputs]
    samples = [tuple(torch.from_numpy(f[n]) for n in names) for f in feeds]
    net = wrapper.net
    groups = tflite_quantize.layer_groups(wrapper)
    # Measure on the bare network (same parameters, plain outputs); its paths lose "net.".
    bare = [
        tflite_quantize.LayerGroup(
            g.path.removeprefix("net."), g.scope, tuple(w.removeprefix("net.") for w in g.weights)
        )
        for g in groups
    ]
    errors, metric = tflite_quantize.measure_sensitivity(net, bare, samples)
    chosen = tflite_quantize.choose_float_groups(groups, errors, fraction)
    details["calibration"] = calibration.describe(component)
    details["mixed"] = {
        "float_fraction": fraction,
        "groups": len(groups),
        "samples": len(samples),
        "metric": {
            "output": "relative L2 error of the output with only that group's weights int8",
            "group_output": "relative L2 error of the group's own output with its weights "
            "int8 (the end-to-end measurement would have taken too long)",
        }[metric],
        "float_groups": [{"module": bare[i].path, "error": round(errors[i], 6)} for i in chosen],
        "median_error": round(float(np.median(errors)), 6) if errors else None,
        "measure_seconds": round(time.perf_counter() - started, 2),
    }
    return [groups[i].scope for i in chosen]


def weight_dtypes(path: Path) -> dict[str, int]:
    """How many weight tensors of matmul-like ops the file stores in each dtype.

    A weight behind a DEQUANTIZE op counts as the dtype it is stored in.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    ops = interpreter._get_ops_details()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    produced_by = {out: op for op in ops for out in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    weight_input = {
        "FULLY_CONNECTED": 1,
        "CONV_2D": 1,
        "DEPTHWISE_CONV_2D": 1,
        "BATCH_MATMUL": 1,
        "EMBEDDING_LOOKUP": 1,
        "GATHER": 0,
    }
    counts: dict[str, int] = {}
    for op in ops:
        slot = weight_input.get(op["op_name"])
        if slot is None or slot >= len(op["inputs"]):
            continue
        tensor = op["inputs"][slot]
        source = produced_by.get(tensor)
        if source is not None and source["op_name"] == "DEQUANTIZE":
            tensor = source["inputs"][0]
        elif source is not None:
            continue  # an activation, not a weight
        if tensor < 0 or tensor in graph_inputs:
            continue
        counts[dtypes[tensor]] = counts.get(dtypes[tensor], 0) + 1
    return counts
