"""The bundle: one folder the apps load without Python, described by ``bundle.json``.

```
<bundle>/
  bundle.json                      the manifest (schemas/bundle.schema.json is the contract)
  tokenizer/vocab.json, tokenizer/merges.txt
  tflite/text_encoder.tflite  tflite/unet.tflite  tflite/vae_decoder.tflite
  coreml/TextEncoder.mlpackage  coreml/Unet.mlpackage  coreml/VAEDecoder.mlpackage
  onnx/text_encoder.onnx ...       host reference (an ``.onnx.data`` beside it past 2 GB)
  reports/export.json              what each converter reported (times, memory, choices)
  reports/parity.json              what ``mobilediff validate`` measured
```

This module writes a bundle (``write_bundle``: everything goes into a temporary folder that
is renamed into place only when the manifest is written and checks out, so a failed or
interrupted export leaves nothing), reads it (``read_manifest``) and verifies it
(``verify_bundle``: the schema, then the sha256 and size of every file, missing, extra and
changed files, paths or symlinks that lead outside the bundle). ``inspect_bundle`` and
``format_inspect`` are what ``mobilediff inspect`` prints.

Hashes: a file's ``sha256`` is of its bytes. A folder's (a Core ML ``.mlpackage``) is the
sha256 of the text ``"<sha256>  <path>\\n"`` for each file in it, sorted by path, with paths
relative to the folder and '/'-separated: what ``sha256sum`` prints for
``find . -type f`` run inside the folder, without the leading ``./``, sorted (``LC_ALL=C``).
A folder's ``size_bytes`` is the sum of its files' sizes.

Reading and verifying need neither torch nor model code (the runtime and the apps' side
of the contract); writing computes parameters, FLOPs and memory estimates with torch.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from . import __version__
from .errors import MobileDiffError
from .export.artifacts import COMPONENTS, TARGETS, Component, ComponentArtifact, Target
from .fileio import atomic_dir, atomic_write_text

if TYPE_CHECKING:
    from .config import ModelConfig
    from .schedulers import Sampler
    from .tokenizer import CLIPTokenizer

MANIFEST = "bundle.json"
SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / "bundle.schema.json"
TOKENIZER_VOCAB = "tokenizer/vocab.json"
TOKENIZER_MERGES = "tokenizer/merges.txt"
PARITY_REPORT = "reports/parity.json"
EXPORT_REPORT = "reports/export.json"
TO_UINT8 = "round(clamp(x / 2 + 0.5, 0, 1) * 255)"

#: Where each converter writes each component, relative to the bundle folder.
COMPONENT_FILES: dict[str, dict[str, str]] = {
    "tflite": {
        "text_encoder": "tflite/text_encoder.tflite",
        "unet": "tflite/unet.tflite",
        "vae_decoder": "tflite/vae_decoder.tflite",
    },
    "coreml": {
        "text_encoder": "coreml/TextEncoder.mlpackage",
        "unet": "coreml/Unet.mlpackage",
        "vae_decoder": "coreml/VAEDecoder.mlpackage",
    },
    "onnx": {
        "text_encoder": "onnx/text_encoder.onnx",
        "unet": "onnx/unet.onnx",
        "vae_decoder": "onnx/vae_decoder.onnx",
    },
}


class BundleError(MobileDiffError):
    """A bundle is missing, unreadable, fails its schema or does not match its manifest."""


# --------------------------------------------------------------------------- hashing


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_listing(folder: str | Path) -> dict[str, Path]:
    """Every regular file under ``folder`` by its '/'-separated relative path, sorted.

    Symlinks are not followed and not listed (``verify_bundle`` reports them).
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames.sort()
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            found[path.relative_to(folder).as_posix()] = path
    return dict(sorted(found.items(), key=lambda item: item[0].encode("utf-8")))


def folder_sha256(folder: str | Path, hashes: dict[str, str] | None = None) -> str:
    """The sha256 of a folder: see the module docstring for the exact form.

    ``hashes`` (relative path -> sha256) saves re-reading files already hashed.
    """
    if hashes is None:
        hashes = {rel: file_sha256(path) for rel, path in folder_listing(folder).items()}
    lines = "".join(
        f"{sha}  {rel}\n" for rel, sha in sorted(hashes.items(), key=lambda i: i[0].encode())
    )
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def path_sha256_and_size(path: str | Path) -> tuple[str, int]:
    """sha256 and byte size of a file, or of a folder (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        listing = folder_listing(path)
        hashes = {rel: file_sha256(p) for rel, p in listing.items()}
        return folder_sha256(path, hashes), sum(p.stat().st_size for p in listing.values())
    return file_sha256(path), path.stat().st_size


def files_map(root: str | Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``: every file of the bundle but ``bundle.json``, hashed."""
    return {
        rel: {"sha256": file_sha256(path), "size_bytes": path.stat().st_size}
        for rel, path in folder_listing(root).items()
        if rel != MANIFEST
    }


# --------------------------------------------------------------------------- schema


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_problems(manifest: Any) -> list[str]:
    """Every way ``manifest`` breaks the JSON Schema, one line each, in document order."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema ships with the package's extras
        raise BundleError(
            "checking a bundle needs jsonschema: pip install 'jsonschema>=4.20'"
        ) from None
    validator = jsonschema.Draft202012Validator(load_schema())
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path))):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) < 200 else error.message[:197] + "..."
        problems.append(f"schema: at {where}: {message}")
    return problems


# --------------------------------------------------------------------------- reading


def manifest_path(bundle: str | Path) -> Path:
    """``bundle.json`` of a bundle folder (or the path itself when it names the file)."""
    bundle = Path(bundle)
    return bundle if bundle.name == MANIFEST and bundle.is_file() else bundle / MANIFEST


def read_manifest(bundle: str | Path, validate: bool = True) -> dict[str, Any]:
    """The parsed ``bundle.json``; with ``validate`` it must pass the schema.

    Checksums are not checked here (``verify_bundle`` does that, reading every file).
    """
    path = manifest_path(bundle)
    folder = path.parent
    if not folder.is_dir():
        raise BundleError(f"bundle not found: {folder}")
    if path.is_symlink():
        raise BundleError(f"{path} is a symlink; a bundle's manifest must be a plain file")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version!r}; this mobilediff reads version "
            f"{SCHEMA_VERSION} (export the bundle again with this version)"
        )
    if validate:
        problems = schema_problems(manifest)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise BundleError(f"{path} fails the bundle schema: {problems[0]}{more}")
    return manifest


def resolve_in_bundle(bundle: str | Path, relpath: str) -> Path:
    """``bundle / relpath``, refusing any path that leads outside the bundle."""
    problem = _path_problem(Path(bundle), relpath)
    if problem:
        raise BundleError(problem)
    return Path(bundle, *PurePosixPath(relpath).parts)


def _path_problem(root: Path, relpath: Any) -> str | None:
    """Why ``relpath`` is not a safe path inside ``root``, or None when it is."""
    if not isinstance(relpath, str) or not relpath:
        return f"path {relpath!r} is not a relative path"
    pure = PurePosixPath(relpath)
    if "\\" in relpath or pure.is_absolute() or ".." in pure.parts or relpath.startswith("~"):
        return f"path {relpath!r} escapes the bundle"
    current = root
    for part in pure.parts:
        current = current / part
        if current.is_symlink():
            return f"path {relpath!r} escapes the bundle: {current.name} is a symlink"
    try:
        current.resolve().relative_to(root.resolve())
    except ValueError:
        return f"path {relpath!r} escapes the bundle"
    return None


# --------------------------------------------------------------------------- verifying


def verify_bundle(bundle: str | Path) -> list[str]:
    """Everything wrong with a bundle, one line each; an empty list means it checks out.

    Checks, in order: the manifest parses and passes the schema; no path in it (files,
    components, tokenizer, reports) leads outside the bundle; no symlink or special file
    inside it; every listed file exists with its size and sha256; no file is missing
    from the list (extra); each component's file or folder matches its own sha256 and
    size; the UNet's batch matches the guidance mode.
    """
    root = Path(bundle)
    if not root.is_dir():
        return [f"bundle not found: {root}"]
    try:
        manifest = read_manifest(root, validate=False)
    except BundleError as exc:
        return [str(exc)]
    problems = schema_problems(manifest)
    problems += _special_file_problems(root)

    listed = manifest.get("files")
    listed = listed if isinstance(listed, dict) else {}
    on_disk = {rel for rel in folder_listing(root) if rel != MANIFEST}
    hashes: dict[str, str] = {}
    for rel, entry in listed.items():
        problem = _path_problem(root, rel)
        if problem:
            problems.append(f"files: {problem}")
            continue
        path = Path(root, *PurePosixPath(rel).parts)
        if not path.is_file():
            problems.append(f"missing file: {rel}")
            continue
        if not isinstance(entry, dict):
            continue  # the schema has said so
        size = path.stat().st_size
        if size != entry.get("size_bytes"):
            problems.append(
                f"changed file: {rel} is {size} bytes, manifest says {entry.get('size_bytes')}"
            )
        hashes[rel] = file_sha256(path)
        if hashes[rel] != entry.get("sha256"):
            problems.append(f"changed file: {rel} does not match its sha256")
    for rel in sorted(on_disk - set(listed)):
        problems.append(f"extra file: {rel} is not in the manifest")

    problems += _component_problems(root, manifest, listed, hashes)
    for where, rel in _other_paths(manifest):
        problem = _path_problem(root, rel)
        if problem:
            problems.append(f"{where}: {problem}")
        elif rel not in listed:
            problems.append(f"{where}: {rel} is not in the manifest's files")
    return problems


def _special_file_problems(root: Path) -> list[str]:
    problems = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                problems.append(f"symlink: {rel} (a bundle holds only plain files and folders)")
            elif not path.is_dir() and not path.is_file():
                problems.append(f"special file: {rel} is not a plain file")
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]
    return problems


def _component_problems(
    root: Path, manifest: dict[str, Any], listed: dict[str, Any], hashes: dict[str, str]
) -> list[str]:
    problems = []
    for target, component, entry in iter_components(manifest):
        where = f"components.{target}.{component}"
        rel = entry.get("file")
        problem = _path_problem(root, rel)
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        path = Path(root, *PurePosixPath(rel).parts)
        if path.is_dir():
            inside = {r[len(rel) + 1 :]: hashes.get(r) for r in listed if r.startswith(rel + "/")}
            if not inside:
                problems.append(f"{where}: folder {rel} lists no files in the manifest")
                continue
            if any(sha is None for sha in inside.values()):
                continue  # a missing or unsafe file inside, already reported
            sha = folder_sha256(path, inside)  # type: ignore[arg-type]
            size = sum(listed[f"{rel}/{r}"].get("size_bytes", 0) for r in inside)
        elif rel in hashes:
            sha, size = hashes[rel], listed[rel].get("size_bytes")
        else:
            if rel not in listed:
                problems.append(f"{where}: {rel} is not in the manifest's files")
            continue  # missing: already reported
        if sha != entry.get("sha256"):
            problems.append(f"{where}: {rel} does not match the component's sha256")
        if size != entry.get("size_bytes"):
            problems.append(
                f"{where}: {rel} is {size} bytes, the component says {entry.get('size_bytes')}"
            )
        if component == "unet":
            problems += _guidance_problems(manifest, entry, where)
    return problems


def _guidance_problems(manifest: dict[str, Any], unet: dict[str, Any], where: str) -> list[str]:
    mode = (manifest.get("pipeline") or {}).get("guidance", {}).get("mode")
    try:
        batch = unet["inputs"][0]["shape"][0]
    except (KeyError, IndexError, TypeError):
        return []
    expected = {"cfg": 2, "none": 1}.get(mode)
    if expected is not None and batch != expected:
        return [f"{where}: batch {batch} does not fit guidance mode {mode!r} (needs {expected})"]
    return []


def _other_paths(manifest: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    tokenizer = manifest.get("tokenizer")
    if isinstance(tokenizer, dict):
        for key in ("vocab", "merges"):
            if key in tokenizer:
                yield f"tokenizer.{key}", tokenizer[key]
    reports = manifest.get("reports")
    if isinstance(reports, dict):
        for key, rel in reports.items():
            yield f"reports.{key}", rel


def iter_components(manifest: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(target, component, entry) for every component entry, in a fixed order."""
    components = manifest.get("components")
    if not isinstance(components, dict):
        return
    for target in TARGETS:
        entries = components.get(target)
        if not isinstance(entries, dict):
            continue
        for component in COMPONENTS:
            entry = entries.get(component)
            if isinstance(entry, dict):
                yield target, component, entry


def check_bundle(bundle: str | Path) -> dict[str, Any]:
    """The manifest of a bundle that verifies; else a ``BundleError`` naming the problems."""
    problems = verify_bundle(bundle)
    if problems:
        shown = "; ".join(problems[:3])
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BundleError(f"{bundle} failed verification: {shown}{more}")
    return read_manifest(bundle)


# --------------------------------------------------------------------------- writing


def tokenizer_entry(tokenizer: CLIPTokenizer) -> dict[str, Any]:
    config = tokenizer.config
    return {
        "kind": "clip-bpe",
        "vocab": TOKENIZER_VOCAB,
        "merges": TOKENIZER_MERGES,
        "max_length": config.max_length,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def pipeline_entry(
    config: ModelConfig, sampler: Sampler | dict[str, Any], negative_prompt: str = ""
) -> dict[str, Any]:
    """The manifest's ``pipeline``: everything the apps need to run the sampling loop."""
    p = config.pipeline
    sampler_dict = sampler if isinstance(sampler, dict) else sampler.to_dict()
    return {
        "image_size": p.image_size,
        "latent_shape": [1, *config.latent_shape],
        "vae_scaling_factor": p.vae_scaling_factor,
        "prediction_type": p.prediction_type,
        "noise_schedule": {
            "num_train_timesteps": p.num_train_timesteps,
            "beta_start": p.beta_start,
            "beta_end": p.beta_end,
            "beta_schedule": p.beta_schedule,
        },
        "sampler": sampler_dict,
        "guidance": {
            "mode": "cfg" if p.uses_guidance else "none",
            "scale": p.guidance_scale,
            "negative_prompt": negative_prompt,
        },
        "output": {"range": [-1, 1], "to_uint8": TO_UINT8, "layout": "NCHW"},
    }


def component_entry(
    root: Path,
    artifact: ComponentArtifact,
    parameters: int | None = None,
    flops: int | None = None,
    activation_bytes: int | None = None,
) -> dict[str, Any]:
    """One ``components.<target>.<component>`` entry for an artifact inside ``root``."""
    rel = artifact_relpath(root, artifact)
    sha, size = path_sha256_and_size(root / rel)
    entry: dict[str, Any] = {
        "file": rel,
        "sha256": sha,
        "size_bytes": size,
        "precision": artifact.precision,
        "recipe": artifact.recipe,
        "rewrites": list(artifact.rewrites),
    }
    if artifact.signature is not None:
        entry["signature"] = artifact.signature
    entry["inputs"] = [spec.to_dict() for spec in artifact.inputs]
    entry["outputs"] = [spec.to_dict() for spec in artifact.outputs]
    if parameters is not None:
        entry["parameters"] = int(parameters)
    if flops is not None:
        entry["flops"] = int(flops)
    if activation_bytes is not None:
        entry["estimated_peak_memory_bytes"] = int(size + activation_bytes)
    return entry


def artifact_relpath(root: Path, artifact: ComponentArtifact) -> str:
    """The artifact's path relative to the bundle (converters may give it absolute)."""
    path = Path(artifact.path)
    if path.is_absolute() or Path(os.path.abspath(path)).is_relative_to(root.absolute()):
        try:
            path = Path(os.path.abspath(path)).relative_to(root.absolute())
        except ValueError:
            raise BundleError(
                f"the {artifact.target} converter wrote {artifact.component} to {path}, "
                f"outside the bundle being written ({root})"
            ) from None
    rel = path.as_posix()
    if not (root / path).exists():
        raise BundleError(
            f"the {artifact.target} converter reported {rel} for {artifact.component}, "
            "but wrote no such file"
        )
    return rel


def build_manifest(
    root: str | Path,
    *,
    config: ModelConfig,
    artifacts: list[ComponentArtifact],
    sampler: Sampler | dict[str, Any],
    tokenizer: CLIPTokenizer,
    source: str,
    source_sha256: str | None,
    negative_prompt: str = "",
    reports: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The whole ``bundle.json`` for the files already written under ``root``."""
    from .analysis import component_costs, image_flops

    root = Path(root)
    costs = {c.name: c for c in component_costs(config)}
    components: dict[str, dict[str, Any]] = {}
    peaks: dict[str, int] = {}
    for artifact in artifacts:
        cost = costs[artifact.component]
        batch = artifact.inputs[0].shape[0] if artifact.inputs else 1
        act = estimate_activation_bytes(config, artifact)
        entry = component_entry(root, artifact, cost.parameters, cost.flops * batch, act)
        components.setdefault(artifact.target, {})[artifact.component] = entry
        peaks[artifact.target] = max(
            peaks.get(artifact.target, 0), entry["estimated_peak_memory_bytes"]
        )
    for target, entries in components.items():
        missing = [c for c in COMPONENTS if c not in entries]
        if missing:
            raise BundleError(f"target {target} lacks {', '.join(missing)}")
    sampler_dict = sampler if isinstance(sampler, dict) else sampler.to_dict()
    files = files_map(root)
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "tool": {
            "name": "mobilediff",
            "version": __version__,
            "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "model": {
            "name": config.name,
            "source": source,
            "source_sha256": source_sha256,
            "config": config.to_dict(),
        },
        "pipeline": pipeline_entry(config, sampler_dict, negative_prompt),
        "tokenizer": tokenizer_entry(tokenizer),
        "components": {t: components[t] for t in TARGETS if t in components},
        "files": files,
        "estimates": {
            "total_size_bytes": sum(f["size_bytes"] for f in files.values()),
            "peak_memory_bytes": {t: peaks[t] for t in TARGETS if t in peaks},
            "image_flops": image_flops(
                config,
                list(costs.values()),
                sampler_dict["num_inference_steps"],
                config.pipeline.uses_guidance,
            ),
        },
    }
    if reports:
        manifest["reports"] = dict(reports)
    return manifest


def write_manifest(bundle: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``bundle.json`` atomically (pretty-printed, keys in the contract's order)."""
    path = Path(bundle) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return path


def refresh_files(bundle: str | Path, manifest: dict[str, Any], paths: list[str]) -> dict:
    """Re-hash ``paths`` into the manifest's ``files`` and sizes; returns the manifest.

    For writers that add to a verified bundle (``validate`` adds its report); the caller
    writes the manifest back with ``write_manifest``.
    """
    root = Path(bundle)
    for rel in paths:
        path = resolve_in_bundle(root, rel)
        manifest["files"][rel] = {"sha256": file_sha256(path), "size_bytes": path.stat().st_size}
    manifest["files"] = dict(sorted(manifest["files"].items(), key=lambda i: i[0].encode()))
    estimates = manifest.get("estimates")
    if isinstance(estimates, dict) and "total_size_bytes" in estimates:
        estimates["total_size_bytes"] = sum(f["size_bytes"] for f in manifest["files"].values())
    return manifest


@dataclass
class BundleWriter:
    """A bundle being written in a temporary folder; see ``write_bundle``."""

    root: Path
    artifacts: list[ComponentArtifact] = field(default_factory=list)

    def path_for(self, target: Target, component: Component) -> Path:
        """Where the converter for ``target`` writes ``component`` (its folder exists)."""
        path = self.root / COMPONENT_FILES[target][component]
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, artifact: ComponentArtifact) -> None:
        artifact_relpath(self.root, artifact)  # fails early on a converter's bad path
        self.artifacts.append(artifact)


@contextlib.contextmanager
def write_bundle(
    out: str | Path,
    *,
    config: ModelConfig,
    tokenizer: CLIPTokenizer,
    sampler: Sampler | dict[str, Any],
    source: str,
    source_sha256: str | None = None,
    negative_prompt: str = "",
    force: bool = False,
) -> Iterator[BundleWriter]:
    """Write a bundle atomically: yield a writer, then finish the manifest and move it in.

    The block converts components into ``writer.path_for(...)`` and ``writer.add``s each
    artifact. When it ends, the tokenizer files and ``bundle.json`` are written, the whole
    bundle is verified, and the temporary folder is renamed to ``out``. An exception (or
    Ctrl-C) anywhere removes the temporary folder; an existing ``out`` is left alone unless
    ``force``, and even then replaced only once the new bundle is complete.
    """
    with atomic_dir(Path(out).absolute(), force=force) as tmp:
        writer = BundleWriter(tmp)
        yield writer
        if not writer.artifacts:
            raise BundleError("nothing was exported: a bundle needs at least one target")
        tokenizer.save(tmp / "tokenizer")
        write_export_report(tmp, writer.artifacts)
        manifest = build_manifest(
            tmp,
            config=config,
            artifacts=writer.artifacts,
            sampler=sampler,
            tokenizer=tokenizer,
            source=source,
            source_sha256=source_sha256,
            negative_prompt=negative_prompt,
            reports={"export": EXPORT_REPORT},
        )
        write_manifest(tmp, manifest)
        problems = verify_bundle(tmp)
        if problems:  # a bug in the writer or a converter, never the user's input
            raise RuntimeError(f"the bundle just written does not verify: {problems}")


def write_export_report(root: Path, artifacts: list[ComponentArtifact]) -> Path:
    """``reports/export.json``: each converter's ``details`` (times, memory, choices made).

    Listed in ``files`` and named by the manifest's ``reports.export``.
    """
    report: dict[str, Any] = {"tool": {"name": "mobilediff", "version": __version__}}
    for artifact in artifacts:
        report.setdefault(artifact.target, {})[artifact.component] = {
            "recipe": artifact.recipe,
            "rewrites": list(artifact.rewrites),
            **jsonable(artifact.details),
        }
    path = root / EXPORT_REPORT
    atomic_write_text(path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return path


def jsonable(value: Any) -> Any:
    """Plain JSON types for a report: numpy scalars and arrays, tuples, paths, infinities."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy scalars and arrays
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------- estimates


def estimate_activation_bytes(config: ModelConfig, artifact: ComponentArtifact) -> int:
    """Activation memory of one call: the component's I/O plus twice its largest tensor.

    The largest intermediate tensor is found by running the network on the ``meta``
    device (no memory, no compute) at the artifact's batch; an op's input and output of
    that size are both alive at once, hence twice. Elements are 2 bytes where the target
    computes in fp16 (Core ML fp16 recipes), else 4. An estimate, labelled as one.
    """
    from .export.quantize import RECIPES

    recipe = RECIPES.get(artifact.recipe)
    fp16 = artifact.target == "coreml" and recipe is not None and recipe.compute == "fp16"
    element = 2 if fp16 else 4
    batch = artifact.inputs[0].shape[0] if artifact.inputs else 1
    io_bytes = sum(
        _numel(spec.shape) * _DTYPE_BYTES[spec.dtype]
        for spec in (*artifact.inputs, *artifact.outputs)
    )
    largest = largest_activation(config, artifact.component, batch)
    return io_bytes + 2 * largest * element


_DTYPE_BYTES = {"float32": 4, "float16": 2, "int32": 4, "int64": 8, "int8": 1, "uint8": 1}


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


@lru_cache(maxsize=32)
def _largest_activation_cached(config_json: str, component: str, batch: int) -> int:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    from .analysis import example_inputs
    from .config import ModelConfig
    from .models.text_encoder import CLIPTextEncoder
    from .models.unet import UNet
    from .models.vae_decoder import VAEDecoder

    config = ModelConfig.from_dict(json.loads(config_json))
    builders = {
        "text_encoder": lambda: CLIPTextEncoder(config.text_encoder),
        "unet": lambda: UNet(config.unet),
        "vae_decoder": lambda: VAEDecoder(config.vae_decoder),
    }

    class LargestOutput(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not func.is_view:
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        LargestOutput.largest = max(LargestOutput.largest, t.numel())
            return out

    with torch.device("meta"):
        module = builders[component]().eval()
        inputs = tuple(t.to("meta") for t in example_inputs(config, component, batch))
    with torch.no_grad(), LargestOutput():
        module(*inputs)
    return LargestOutput.largest


def largest_activation(config: ModelConfig, component: str, batch: int = 1) -> int:
    """Elements of the largest tensor one forward pass of ``component`` creates."""
    return _largest_activation_cached(config.to_json(), component, batch)


# --------------------------------------------------------------------------- inspect


def inspect_bundle(bundle: str | Path) -> dict[str, Any]:
    """What ``mobilediff inspect`` shows: the manifest at a glance, and its problems.

    ``problems`` is ``verify_bundle``'s list; the rest is read from the manifest (so it
    is empty when the manifest cannot be read at all).
    """
    problems = verify_bundle(bundle)
    try:
        manifest = read_manifest(bundle, validate=False)
    except BundleError:
        return {"bundle": str(bundle), "problems": problems}
    pipeline = manifest.get("pipeline") or {}
    sampler = pipeline.get("sampler") or {}
    guidance = pipeline.get("guidance") or {}
    components = []
    for target, component, entry in iter_components(manifest):
        components.append(
            {
                "target": target,
                "component": component,
                "file": entry.get("file"),
                "size_bytes": entry.get("size_bytes"),
                "precision": entry.get("precision"),
                "recipe": entry.get("recipe"),
                "rewrites": entry.get("rewrites", []),
                "parameters": entry.get("parameters"),
                "flops": entry.get("flops"),
                "estimated_peak_memory_bytes": entry.get("estimated_peak_memory_bytes"),
                "inputs": entry.get("inputs", []),
                "outputs": entry.get("outputs", []),
            }
        )
    estimates = manifest.get("estimates") or {}
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    return {
        "bundle": str(bundle),
        "model": (manifest.get("model") or {}).get("name"),
        "source": (manifest.get("model") or {}).get("source"),
        "tool": manifest.get("tool"),
        "image_size": pipeline.get("image_size"),
        "sampler": {
            "name": sampler.get("name"),
            "steps": sampler.get("num_inference_steps"),
            "timesteps": sampler.get("timesteps"),
        },
        "guidance": guidance,
        "components": components,
        "files": len(files),
        "total_size_bytes": estimates.get("total_size_bytes"),
        "peak_memory_bytes": estimates.get("peak_memory_bytes", {}),
        "image_flops": estimates.get("image_flops"),
        "reports": manifest.get("reports", {}),
        "problems": problems,
    }


def format_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fmt_tensors(specs: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"{s.get('name')} {'x'.join(map(str, s.get('shape', [])))} {s.get('dtype')}" for s in specs
    )


def format_inspect(summary: dict[str, Any]) -> str:
    """``inspect_bundle``'s summary as the text ``mobilediff inspect`` prints."""
    lines = [f"bundle {summary['bundle']}"]
    if "components" in summary:
        tool = summary.get("tool") or {}
        sampler = summary["sampler"]
        guidance = summary["guidance"]
        lines.append(
            f"model {summary['model']} from {summary['source']}, written by "
            f"{tool.get('name')} {tool.get('version')} {tool.get('created', '')}".rstrip()
        )
        lines.append(
            f"image {summary['image_size']}x{summary['image_size']}, sampler "
            f"{sampler['name']} x{sampler['steps']} (timesteps {sampler['timesteps']}), "
            f"guidance {guidance.get('mode')} {guidance.get('scale')}"
        )
        lines.append(
            f"{'target':<8}{'component':<14}{'precision (recipe)':<28}{'size':>11}{'params':>13}"
            f"{'GFLOP':>9}{'peak mem':>11}  file"
        )
        for c in summary["components"]:
            gflop = f"{c['flops'] / 1e9:.2f}" if c["flops"] is not None else "?"
            params = f"{c['parameters']:,}" if c["parameters"] is not None else "?"
            precision = str(c["precision"])
            if c["recipe"] != c["precision"]:
                precision += f" ({c['recipe']})"
            lines.append(
                f"{c['target']:<8}{c['component']:<14}{precision:<28}"
                f"{format_bytes(c['size_bytes']):>11}{params:>13}{gflop:>9}"
                f"{format_bytes(c['estimated_peak_memory_bytes']):>11}  {c['file']}"
            )
            lines.append(f"{'':<22}in:  {_fmt_tensors(c['inputs'])}")
            lines.append(f"{'':<22}out: {_fmt_tensors(c['outputs'])}")
            if c["rewrites"]:
                lines.append(f"{'':<22}rewrites: {', '.join(c['rewrites'])}")
        peaks = ", ".join(f"{t} {format_bytes(b)}" for t, b in summary["peak_memory_bytes"].items())
        flops = summary.get("image_flops")
        lines.append(
            f"{summary['files']} files, {format_bytes(summary['total_size_bytes'])}; estimated "
            f"peak memory (one component loaded at a time): {peaks or '?'}"
            + (f"; {flops / 1e12:.3f} TFLOP per image" if flops else "")
        )
        for name, rel in (summary.get("reports") or {}).items():
            lines.append(f"report {name}: {rel}")
    problems = summary["problems"]
    if problems:
        lines.append(f"{len(problems)} problem(s):")
        lines.extend(f"  {p}" for p in problems)
    else:
        lines.append("verified: every file matches its sha256 and size")
    return "\n".join(lines)
