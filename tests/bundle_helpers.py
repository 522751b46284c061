"""Bundles for the bundle, runtime, validate and CLI tests.

``tiny_onnx_bundle`` is a real ONNX export of the ``tiny`` model, made once per test
session (under pytest's base temp folder) and shared read-only: tests that change a
bundle copy it first with ``copy_bundle``. ``tiny_tflite_bundle`` is the same for LiteRT
with the default recipes (int8 dynamic-range, fp16 decoder) and the ``fold_timesteps``
rewrite, so the runtime's step-index path is exercised too (tens of seconds: tests
using it are marked slow). ``fake_converter`` writes placeholder files
(folders for Core ML) with the real static I/O, for tests of the bundle machinery that
need no real conversion.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mobilediff_export.export import export_bundle
from mobilediff_export.export.artifacts import ComponentArtifact
from mobilediff_export.export.signatures import component_io


def tiny_onnx_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "shared-bundles" / "tiny-onnx"
    if not (path / "bundle.json").exists():
        export_bundle("tiny", path, targets=["onnx"], progress=False)
    return path


def tiny_tflite_bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.getbasetemp() / "shared-bundles" / "tiny-tflite"
    if not (path / "bundle.json").exists():
        export_bundle("tiny", path, targets=["tflite"], rewrites=["fold_timesteps"], progress=False)
    return path


def copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest, symlinks=True)
    return dest


def fake_converter(target: str, fail_on: str | None = None):
    """A stand-in ``convert_<target>``; raises on component ``fail_on`` after writing."""

    def convert(module, config, component, out_path, recipe, rewrites=None):
        spec = component_io(config, component, target)
        payload = f"{target}/{component}/{recipe.name}\n".encode() * 64
        if target == "coreml":
            (out_path / "Data" / "weights").mkdir(parents=True)
            (out_path / "Manifest.json").write_text('{"fileFormatVersion": "1.0.0"}\n')
            (out_path / "Data" / "model.mlmodel").write_bytes(payload)
            (out_path / "Data" / "weights" / "weight.bin").write_bytes(payload * 2)
        else:
            out_path.write_bytes(payload)
        if component == fail_on:
            raise RuntimeError(f"converter failed on {component}")
        return ComponentArtifact(
            target=target,
            component=component,
            path=out_path,
            precision=recipe.precision,
            recipe=recipe.name,
            inputs=spec.inputs,
            outputs=spec.outputs,
            signature="serving_default" if target == "tflite" else None,
        )

    return convert


def use_fake_converters(monkeypatch, fail_on: str | None = None) -> None:
    """Make ``export_bundle`` use ``fake_converter`` for every target."""
    import mobilediff_export.export as export_module

    monkeypatch.setattr(
        export_module, "load_converter", lambda target: fake_converter(target, fail_on)
    )
