"""One interface over the host runtimes: LiteRT and ONNX Runtime run a bundle's component.

A runner is opened from a manifest entry (``components.<target>.<component>``) and takes
and returns arrays by the manifest's tensor names, at the manifest's shapes and dtypes::

    runner = open_runner(bundle, "tflite", entry, num_threads=2)
    out = runner.run({"sample": x, "timestep": t, "context": c})["model_output"]

Inputs are checked against the manifest (shape) and cast to its dtype (token ids are
int32 on the mobile targets, int64 on ONNX), so callers hand over what they have.
Core ML runs only on macOS: ``open_runner`` says so rather than failing obscurely.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..bundle import BundleError, resolve_in_bundle

#: Backends that run on this host, in the order ``generate --bundle`` prefers them.
HOST_BACKENDS = ("tflite", "onnx")


class Runner:
    """A loaded component: ``run(feeds) -> outputs``, both keyed by manifest tensor names."""

    target = ""

    def __init__(self, path: Path, entry: dict[str, Any]) -> None:
        self.path = path
        self.entry = entry
        self.inputs: list[dict[str, Any]] = entry["inputs"]
        self.outputs: list[dict[str, Any]] = entry["outputs"]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = {}
        for spec in self.inputs:
            name = spec["name"]
            if name not in feeds:
                raise BundleError(f"{self.path.name}: input {name!r} not given")
            array = np.asarray(feeds[name])
            if list(array.shape) != list(spec["shape"]):
                raise BundleError(
                    f"{self.path.name}: input {name} has shape {list(array.shape)}, the "
                    f"manifest says {spec['shape']}"
                )
            prepared[name] = np.ascontiguousarray(array, dtype=np.dtype(spec["dtype"]))
        outputs = self._run(prepared)
        return {spec["name"]: out for spec, out in zip(self.outputs, outputs, strict=True)}

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs in manifest order."""
        raise NotImplementedError


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _match_names(wanted: list[str], available: list[str], what: str, where: str) -> list[str]:
    """The runtime's name for each manifest name: the same name, else the same position.

    Converters that do not name their tensors (litert-torch's ``args_0``, ``output_0``)
    keep the manifest's order, so positions line up; a count mismatch is an error.
    """
    if set(wanted) <= set(available):
        return list(wanted)
    if len(wanted) != len(available):
        raise BundleError(
            f"{where}: the manifest lists {len(wanted)} {what} ({', '.join(wanted)}) but the "
            f"model has {len(available)} ({', '.join(available)})"
        )
    return sorted(available, key=_natural_key)


class LiteRTRunner(Runner):
    """A ``.tflite`` file through ``ai_edge_litert``'s signature runner (XNNPACK on CPU)."""

    target = "tflite"

    def __init__(self, path: Path, entry: dict[str, Any], num_threads: int | None = None) -> None:
        super().__init__(path, entry)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise BundleError(
                "running LiteRT models needs ai-edge-litert: pip install ai-edge-litert"
            ) from None
        with _native_stderr_parked():  # LiteRT logs natively ("INFO: ...") while loading
            try:
                self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
            except (ValueError, RuntimeError) as exc:
                raise BundleError(f"LiteRT cannot load {path}: {exc}") from None
            signatures = self.interpreter.get_signature_list()
            key = entry.get("signature") or next(iter(signatures), None)
            if key not in signatures:
                raise BundleError(
                    f"{path.name} has no signature {key!r} "
                    f"(it has {', '.join(signatures) or 'none'})"
                )
            self.signature = key
            self.runner = self.interpreter.get_signature_runner(key)
        self._first_run = True
        where = path.name
        self._input_names = _match_names(
            [s["name"] for s in self.inputs], list(signatures[key]["inputs"]), "inputs", where
        )
        self._output_names = _match_names(
            [s["name"] for s in self.outputs], list(signatures[key]["outputs"]), "outputs", where
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        kwargs = {
            runtime: feeds[spec["name"]]
            for runtime, spec in zip(self._input_names, self.inputs, strict=True)
        }
        if self._first_run:  # the XNNPACK delegate is applied, and logged, on first use
            with _native_stderr_parked():
                result = self.runner(**kwargs)
            self._first_run = False
        else:
            result = self.runner(**kwargs)
        return [np.array(result[name]) for name in self._output_names]


class OnnxRunner(Runner):
    """An ``.onnx`` file through ONNX Runtime's CPU provider."""

    target = "onnx"

    def __init__(self, path: Path, entry: dict[str, Any], num_threads: int | None = None) -> None:
        super().__init__(path, entry)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError(
                "running ONNX models needs onnxruntime: pip install onnxruntime"
            ) from None
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors on bad files
            raise BundleError(f"ONNX Runtime cannot load {path}: {exc}") from None
        where = path.name
        self._input_names = _match_names(
            [s["name"] for s in self.inputs],
            [i.name for i in self.session.get_inputs()],
            "inputs",
            where,
        )
        self._output_names = _match_names(
            [s["name"] for s in self.outputs],
            [o.name for o in self.session.get_outputs()],
            "outputs",
            where,
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inputs = {
            runtime: feeds[spec["name"]]
            for runtime, spec in zip(self._input_names, self.inputs, strict=True)
        }
        return list(self.session.run(self._output_names, inputs))


@contextlib.contextmanager
def _native_stderr_parked() -> Iterator[None]:
    """Native code's stderr goes to a file, replayed only if the block fails.

    ``MOBILEDIFF_VERBOSE=1`` leaves stderr alone.
    """
    if os.environ.get("MOBILEDIFF_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read()[-4000:].decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


RUNNERS: dict[str, type[Runner]] = {"tflite": LiteRTRunner, "onnx": OnnxRunner}


def open_runner(
    bundle: str | Path, target: str, entry: dict[str, Any], num_threads: int | None = None
) -> Runner:
    """A runner for one manifest component entry of ``target`` inside ``bundle``."""
    if target == "coreml":
        raise BundleError(
            "Core ML models run only on macOS (Core ML prediction is not available on "
            f"Linux); use one of: {', '.join(HOST_BACKENDS)}"
        )
    cls = RUNNERS.get(target)
    if cls is None:
        raise BundleError(f"unknown backend {target!r} (host backends: {', '.join(RUNNERS)})")
    path = resolve_in_bundle(bundle, entry["file"])
    if not path.is_file():
        raise BundleError(f"model file missing from the bundle: {entry['file']}")
    return cls(path, entry, num_threads=num_threads)  # type: ignore[call-arg]
