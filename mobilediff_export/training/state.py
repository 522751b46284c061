"""Training state (weights, optimizer, RNG, counters) as one safetensors file, no pickle.

A stage's resumable state is a tree of dicts, lists, tuples, numbers, strings and tensors
(``Module.state_dict()``, ``Optimizer.state_dict()``, ``torch.get_rng_state()``...).
``save_state`` stores every tensor under its path in the tree and the tree itself, with
tensors replaced by references, as JSON in the file's metadata; ``load_state`` rebuilds
the same tree. Dict keys keep their types (the optimizer's per-parameter state is keyed
by int) and tuples stay tuples, so ``load_state_dict`` gets exactly what was saved.
Reading a file never runs code from it: safetensors holds raw tensor bytes, JSON plain
values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from ..errors import MobileDiffError
from ..fileio import atomic_write_bytes

TREE_KEY = "mobilediff.state"
FORMAT = 1
_SCALARS = (str, int, float, bool, type(None))


def _encode(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().to("cpu").contiguous().clone()
        return {"$tensor": path}
    if isinstance(obj, dict):
        items = []
        for key, value in obj.items():
            if not isinstance(key, _SCALARS):
                raise TypeError(f"{path}: dict key of type {type(key).__name__}")
            items.append([key, _encode(value, f"{path}/{key}", tensors)])
        return {"$dict": items}
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, _SCALARS):
        return obj
    raise TypeError(f"{path}: cannot store a {type(obj).__name__} in a training state")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if isinstance(node, dict):
        if "$tensor" in node:
            return tensors[node["$tensor"]]
        if "$tuple" in node:
            return tuple(_decode(v, tensors) for v in node["$tuple"])
        return {key: _decode(value, tensors) for key, value in node["$dict"]}
    return node


def save_state(path: Path, state: Any) -> None:
    """Write ``state`` atomically to ``path`` (safetensors, tree in the metadata)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, "", tensors)
    meta = {TREE_KEY: json.dumps({"format": FORMAT, "tree": tree}, allow_nan=True)}
    atomic_write_bytes(path, save_tensors(tensors, metadata=meta))


def load_state(path: Path) -> Any:
    """The tree ``save_state`` wrote; a clear error for a damaged or foreign file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            if TREE_KEY not in meta:
                raise ValueError("not a mobilediff training state (no state tree)")
            header = json.loads(meta[TREE_KEY])
            if header.get("format") != FORMAT:
                raise ValueError(f"state format {header.get('format')}, expected {FORMAT}")
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (no __iter__)
        return _decode(header["tree"], tensors)
    except Exception as exc:  # safetensors and json raise several kinds for a bad file
        raise MobileDiffError(f"cannot read checkpoint {path}: {exc}") from None
