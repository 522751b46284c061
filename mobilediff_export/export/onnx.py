"""ONNX: the host reference target, fp32, run by ONNX Runtime.

Traced with ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript) at the
static shapes of ``signatures.component_io``. Weights stay in the ``.onnx`` file up to
2 GB, protobuf's limit; past that they go to ``<file>.data`` beside it (ONNX external
data), which the bundle lists like any other file. Only the ``fp32`` recipe applies: this
target is the yardstick the mobile targets are measured against, not a deployment target,
so it is the network as written: ``rewrites`` is accepted for the converters' common
signature and not applied (the manifest records none).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .artifacts import Component, ComponentArtifact
from .quantize import Recipe
from .signatures import component_io, exportable

if TYPE_CHECKING:
    from .rewrite import RewriteOptions

#: protobuf refuses messages of 2 GiB; stay clear of it (graph and metadata need room).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def convert_onnx(
    module: nn.Module,
    config: ModelConfig,
    component: Component,
    out_path: Path,
    recipe: Recipe,
    rewrites: RewriteOptions | None = None,
) -> ComponentArtifact:
    """Export one component to ``out_path`` (a ``.onnx`` file) in fp32."""
    import torch

    if recipe.name != "fp32":
        raise ConfigError(
            f"the onnx target is the fp32 host reference; recipe {recipe.name} does not apply"
        )
    spec = component_io(config, component, "onnx")
    weight_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            exportable(module, component, "onnx"),
            spec.example_inputs,
            str(out_path),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamo=True,
            external_data=external,
            optimize=True,
            verbose=False,
        )
    return ComponentArtifact(
        target="onnx",
        component=component,
        path=out_path,
        precision=recipe.precision,
        recipe=recipe.name,
        inputs=spec.inputs,
        outputs=spec.outputs,
        rewrites=[],
        details={
            "external_data": external,
            "convert_seconds": round(time.perf_counter() - started, 2),
        },
    )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per missing torchvision op and progress to stdout."""
    names = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
