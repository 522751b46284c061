"""What a converter hands back: the file it wrote and everything the manifest says about it.

Each converter (``tflite``, ``coreml``, ``onnx``) takes one torch module at static shapes
and returns a ``ComponentArtifact``; the bundle writer turns artifacts into ``bundle.json``
entries (see ``mobilediff_export/schemas/bundle.schema.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Target = Literal["tflite", "coreml", "onnx"]
Component = Literal["text_encoder", "unet", "vae_decoder"]
TARGETS: tuple[Target, ...] = ("tflite", "coreml", "onnx")
COMPONENTS: tuple[Component, ...] = ("text_encoder", "unet", "vae_decoder")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the runtime sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: Literal["float32", "float16", "int32", "int64", "int8", "uint8"]
    layout: Literal["NCHW", "NHWC", "NL", "NLC", "N"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
        }


@dataclass
class ComponentArtifact:
    """A converted component: ``path`` is relative to the bundle folder."""

    target: Target
    component: Component
    path: Path
    precision: str
    recipe: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    rewrites: list[str] = field(default_factory=list)
    signature: str | None = None
    """The TFLite signature key to run, when the target has signatures."""
    details: dict[str, Any] = field(default_factory=dict)
    """Converter-specific facts for reports (e.g. layers kept in fp16, conversion time)."""
