"""The bundle: manifest against the schema, atomic writing, and a verifier that misses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from bundle_helpers import copy_bundle, fake_converter, tiny_onnx_bundle, use_fake_converters

from mobilediff_export.bundle import (
    EXPORT_REPORT,
    MANIFEST,
    BundleError,
    check_bundle,
    folder_sha256,
    format_inspect,
    inspect_bundle,
    jsonable,
    read_manifest,
    schema_problems,
    verify_bundle,
    write_bundle,
    write_manifest,
)
from mobilediff_export.checkpoints import load_model
from mobilediff_export.errors import MobileDiffError
from mobilediff_export.export import ConversionError, export_bundle, plan_recipes
from mobilediff_export.export.signatures import unet_batch
from mobilediff_export.schedulers import make_sampler


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    return tiny_onnx_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def mixed_bundle(tmp_path_factory) -> Path:
    """tflite + coreml placeholders (Core ML as folders) written through export_bundle."""
    out = tmp_path_factory.mktemp("mixed") / "bundle"
    mp = pytest.MonkeyPatch()
    try:
        use_fake_converters(mp)
        export_bundle("tiny", out, targets=["tflite", "coreml"], progress=False)
    finally:
        mp.undo()
    return out


@pytest.fixture
def bundle(mixed_bundle, tmp_path) -> Path:
    """A private copy of the placeholder bundle, free to tamper with."""
    return copy_bundle(mixed_bundle, tmp_path / "b")


def edit_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    change(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


# ------------------------------------------------------------------ the manifest


def test_onnx_manifest_validates_and_verifies(onnx_bundle):
    manifest = json.loads((onnx_bundle / MANIFEST).read_text())
    assert schema_problems(manifest) == []
    assert verify_bundle(onnx_bundle) == []
    assert read_manifest(onnx_bundle) == manifest


def test_manifest_records_what_the_apps_need(onnx_bundle):
    manifest = read_manifest(onnx_bundle)
    config = load_model("tiny").config
    pipeline = manifest["pipeline"]
    assert pipeline["sampler"] == make_sampler(config.pipeline).to_dict()
    assert pipeline["guidance"] == {"mode": "cfg", "scale": 7.5, "negative_prompt": ""}
    assert pipeline["latent_shape"] == [1, *config.latent_shape]
    assert manifest["tokenizer"]["vocab"] in manifest["files"]
    assert manifest["tokenizer"]["eos_token_id"] == config.tokenizer.eos_token_id
    assert manifest["model"] == {
        "name": "tiny",
        "source": "config:tiny",
        "source_sha256": None,
        "config": config.to_dict(),
    }
    unet = manifest["components"]["onnx"]["unet"]
    assert unet["inputs"][0]["shape"][0] == unet_batch(config) == 2
    assert unet["parameters"] > 0 and unet["flops"] > 0
    assert unet["estimated_peak_memory_bytes"] > unet["size_bytes"]
    for entry in manifest["components"]["onnx"].values():
        listed = manifest["files"][entry["file"]]
        assert listed == {"sha256": entry["sha256"], "size_bytes": entry["size_bytes"]}
    estimates = manifest["estimates"]
    assert estimates["total_size_bytes"] == sum(f["size_bytes"] for f in manifest["files"].values())
    assert estimates["peak_memory_bytes"]["onnx"] == max(
        e["estimated_peak_memory_bytes"] for e in manifest["components"]["onnx"].values()
    )


def test_placeholder_bundle_validates_with_folders_and_recipes(mixed_bundle):
    manifest = check_bundle(mixed_bundle)
    assert set(manifest["components"]) == {"tflite", "coreml"}
    unet = manifest["components"]["coreml"]["unet"]
    assert unet["file"] == "coreml/Unet.mlpackage"
    assert "coreml/Unet.mlpackage/Data/weights/weight.bin" in manifest["files"]
    plan = plan_recipes(("tflite", "coreml"))
    for (target, component), recipe in plan.items():
        assert manifest["components"][target][component]["recipe"] == recipe.name
    assert manifest["components"]["tflite"]["unet"]["signature"] == "serving_default"
    assert manifest["estimates"]["peak_memory_bytes"].keys() == {"tflite", "coreml"}
    report = json.loads((mixed_bundle / EXPORT_REPORT).read_text())
    assert EXPORT_REPORT in manifest["files"]
    assert report["coreml"]["unet"]["recipe"] == "int8-fp16"
    assert report["tflite"]["unet"]["export_seconds"] >= 0
    assert report["tflite"]["unet"]["peak_rss_bytes_so_far"] > 0


def test_jsonable_reports():
    import numpy as np

    value = {"a": np.float32(1.5), "b": (1, np.int64(2)), "c": float("inf"), 3: Path("x")}
    assert jsonable(value) == {"a": 1.5, "b": [1, 2], "c": None, "3": "x"}
    assert json.dumps(jsonable({"m": np.zeros((2,), np.float16)})) == '{"m": [0.0, 0.0]}'


def test_folder_sha256_is_sha256sum_of_the_sorted_listing(tmp_path):
    folder = tmp_path / "M.mlpackage"
    (folder / "Data" / "w").mkdir(parents=True)
    (folder / "b.json").write_text("{}")
    (folder / "Data" / "w" / "weight.bin").write_bytes(b"\x00\x01" * 100)
    lines = sorted(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}\n"
        for p in folder.rglob("*")
        if p.is_file()
    )
    listing = "".join(sorted(lines, key=lambda line: line.split("  ")[1]))
    expected = hashlib.sha256(listing.encode())
    assert folder_sha256(folder) == expected.hexdigest()


def test_inspect_summary_and_text(mixed_bundle):
    summary = inspect_bundle(mixed_bundle)
    assert summary["problems"] == []
    assert len(summary["components"]) == 6
    text = format_inspect(summary)
    for needle in ("coreml/Unet.mlpackage", "int8", "sample 2x4x16x16 float32", "verified"):
        assert needle in text


# ------------------------------------------------------------------ writing atomically


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    use_fake_converters(monkeypatch, fail_on="unet")
    out = tmp_path / "bundle"
    with pytest.raises(ConversionError, match=r"tflite/unet .* RuntimeError: converter failed"):
        export_bundle("tiny", out, targets=["tflite"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing(tmp_path):
    loaded = load_model("tiny")
    out = tmp_path / "bundle"
    writing = write_bundle(
        out,
        config=loaded.config,
        tokenizer=loaded.tokenizer,
        sampler=make_sampler(loaded.config.pipeline),
        source=loaded.source,
    )
    with pytest.raises(KeyboardInterrupt), writing as writer:
        writer.path_for("tflite", "unet").write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_output_kept_without_force(tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(MobileDiffError, match="--force"):
        export_bundle("tiny", out, targets=["tflite"], progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    export_bundle("tiny", out, targets=["tflite"], progress=False, force=True)
    assert not (out / "keep.txt").exists()
    assert verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_force_keeps_the_old_bundle_when_the_new_one_fails(tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    out = tmp_path / "bundle"
    export_bundle("tiny", out, targets=["tflite"], progress=False)
    before = (out / MANIFEST).read_bytes()
    use_fake_converters(monkeypatch, fail_on="vae_decoder")
    with pytest.raises(ConversionError, match="vae_decoder"):
        export_bundle("tiny", out, targets=["tflite"], progress=False, force=True)
    assert (out / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_bundle_folder_gets_the_usual_mode_not_mkdtemp_s_private_one(mixed_bundle):
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(mixed_bundle).st_mode & 0o777 == 0o777 & ~mask


def test_converter_writing_outside_the_bundle_is_refused(tmp_path, monkeypatch):
    import mobilediff_export.export as export_module

    def convert(module, config, component, out_path, recipe, rewrites=None):
        artifact = fake_converter("tflite")(module, config, component, out_path, recipe)
        artifact.path = tmp_path / "elsewhere.tflite"
        artifact.path.write_bytes(b"x")
        return artifact

    monkeypatch.setattr(export_module, "load_converter", lambda target: convert)
    with pytest.raises(BundleError, match="outside the bundle"):
        export_bundle("tiny", tmp_path / "b", targets=["tflite"], progress=False)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ verifying


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda b: flip_byte(b / "tflite/unet.tflite"), "changed file: tflite/unet.tflite"),
        (lambda b: (b / "tflite/unet.tflite").write_bytes(b"short"), "bytes, manifest says"),
        (lambda b: (b / "tokenizer/merges.txt").unlink(), "missing file: tokenizer/merges.txt"),
        (lambda b: (b / "notes.txt").write_text("hi"), "extra file: notes.txt"),
        (lambda b: (b / "coreml/Unet.mlpackage/extra.bin").write_bytes(b"x"), "extra file"),
        (
            lambda b: flip_byte(b / "coreml/Unet.mlpackage/Data/weights/weight.bin"),
            "changed file: coreml/Unet.mlpackage/Data/weights/weight.bin",
        ),
        (lambda b: shutil.rmtree(b / "coreml/VAEDecoder.mlpackage"), "missing file"),
    ],
)
def test_verify_catches_changed_missing_and_extra_files(bundle, tamper, message):
    tamper(bundle)
    problems = verify_bundle(bundle)
    assert any(message in p for p in problems), problems
    with pytest.raises(BundleError, match="failed verification"):
        check_bundle(bundle)


def test_verify_catches_a_component_that_differs_from_a_rehashed_files_map(bundle):
    flip_byte(bundle / "tflite/unet.tflite")

    def rehash_files_only(manifest):
        data = (bundle / "tflite/unet.tflite").read_bytes()
        manifest["files"]["tflite/unet.tflite"]["sha256"] = hashlib.sha256(data).hexdigest()

    edit_manifest(bundle, rehash_files_only)
    assert verify_bundle(bundle) == [
        "components.tflite.unet: tflite/unet.tflite does not match the component's sha256"
    ]


@pytest.mark.parametrize(
    "path", ["../outside.txt", "/etc/passwd", "tokenizer/../../outside.txt", "a\\..\\b"]
)
def test_verify_catches_paths_escaping_the_bundle(bundle, path):
    (bundle.parent / "outside.txt").write_text("secret")

    def add_file(manifest):
        manifest["files"][path] = {"sha256": "0" * 64, "size_bytes": 6}

    edit_manifest(bundle, add_file)
    problems = verify_bundle(bundle)
    assert any("escapes the bundle" in p for p in problems), problems


def test_verify_catches_component_and_tokenizer_paths_escaping(bundle):
    def escape(manifest):
        manifest["components"]["tflite"]["unet"]["file"] = "../outside.tflite"
        manifest["tokenizer"]["vocab"] = "/etc/passwd"

    edit_manifest(bundle, escape)
    problems = verify_bundle(bundle)
    assert any(p.startswith("components.tflite.unet: path") for p in problems), problems
    assert any(p.startswith("tokenizer.vocab: path") for p in problems), problems
    assert any(p.startswith("schema:") for p in problems), problems


def test_verify_catches_symlinks_out_of_the_bundle(bundle, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes((bundle / "tflite/unet.tflite").read_bytes())
    (bundle / "tflite/unet.tflite").unlink()
    (bundle / "tflite/unet.tflite").symlink_to(outside)
    problems = verify_bundle(bundle)
    assert any("symlink: tflite/unet.tflite" in p for p in problems), problems
    assert any("escapes the bundle" in p for p in problems), problems


def test_verify_catches_a_symlinked_folder(bundle, tmp_path):
    shutil.move(bundle / "tokenizer", tmp_path / "tok")
    (bundle / "tokenizer").symlink_to(tmp_path / "tok", target_is_directory=True)
    problems = verify_bundle(bundle)
    assert any("symlink: tokenizer" in p for p in problems), problems


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("pipeline"), "'pipeline' is a required property"),
        (lambda m: m["components"]["tflite"]["unet"].update(precision="int3"), "int3"),
        (lambda m: m["pipeline"]["sampler"].update(name="plms"), "plms"),
        (lambda m: m.update(surprise=1), "surprise"),
    ],
)
def test_verify_catches_schema_failures(bundle, change, message):
    edit_manifest(bundle, change)
    problems = verify_bundle(bundle)
    assert any(p.startswith("schema:") and message in p for p in problems), problems
    with pytest.raises(BundleError, match="fails the bundle schema"):
        read_manifest(bundle)


def test_verify_catches_guidance_mode_that_does_not_fit_the_unet(bundle):
    edit_manifest(bundle, lambda m: m["pipeline"]["guidance"].update(mode="none"))
    assert any("does not fit guidance mode" in p for p in verify_bundle(bundle))


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"{not json", "not valid JSON"), (b"[]", "JSON object"), (b'{"schema_version": 2}', "2")],
)
def test_unreadable_manifest(bundle, content, message):
    (bundle / MANIFEST).write_bytes(content)
    problems = verify_bundle(bundle)
    assert len(problems) == 1 and message in problems[0]
    with pytest.raises(BundleError, match=message):
        read_manifest(bundle)


def test_not_a_bundle(tmp_path):
    assert verify_bundle(tmp_path / "nothing") == [f"bundle not found: {tmp_path / 'nothing'}"]
    assert "has no bundle.json" in verify_bundle(tmp_path)[0]


def test_write_manifest_round_trips(bundle):
    manifest = read_manifest(bundle)
    write_manifest(bundle, manifest)
    assert verify_bundle(bundle) == []
