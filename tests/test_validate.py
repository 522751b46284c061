"""validate: parity figures against PyTorch, the report inside the bundle, and failures."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
import pytest
from bundle_helpers import copy_bundle, tiny_onnx_bundle, tiny_tflite_bundle, use_fake_converters
from onnx import numpy_helper

from mobilediff_export.bundle import (
    MANIFEST,
    PARITY_REPORT,
    BundleError,
    files_map,
    iter_components,
    path_sha256_and_size,
    read_manifest,
    resolve_in_bundle,
    verify_bundle,
    write_manifest,
)
from mobilediff_export.cli import main
from mobilediff_export.export import export_bundle
from mobilediff_export.validate import (
    THRESHOLDS,
    ValidationError,
    compare,
    format_report,
    psnr_db,
    threshold_for,
    validate_bundle,
    write_parity_report,
)


@pytest.fixture(scope="module")
def shared_bundle(tmp_path_factory):
    return tiny_onnx_bundle(tmp_path_factory)


@pytest.fixture
def bundle(shared_bundle, tmp_path):
    return copy_bundle(shared_bundle, tmp_path / "b")


def rebless(bundle):
    """Re-hash every file into the manifest, as if the bundle had been exported so."""
    manifest = read_manifest(bundle)
    manifest["files"] = files_map(bundle)
    for _, _, entry in iter_components(manifest):
        entry["sha256"], entry["size_bytes"] = path_sha256_and_size(
            resolve_in_bundle(bundle, entry["file"])
        )
    write_manifest(bundle, manifest)
    assert verify_bundle(bundle) == []


def corrupt_unet(bundle, scale=0.5):
    path = bundle / "onnx" / "unet.onnx"
    model = onnx.load(str(path))
    largest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    weights = numpy_helper.to_array(largest)
    noise = np.random.default_rng(0).standard_normal(weights.shape) * scale * weights.std()
    largest.CopyFrom(numpy_helper.from_array((weights + noise).astype(weights.dtype), largest.name))
    onnx.save(model, str(path))


def test_validate_writes_parity_json_and_the_bundle_still_verifies(bundle):
    report = validate_bundle(bundle)
    assert report["passed"], report["failures"]
    assert verify_bundle(bundle) == []
    manifest = read_manifest(bundle)
    assert manifest["reports"] == {"export": "reports/export.json", "parity": PARITY_REPORT}
    assert PARITY_REPORT in manifest["files"]
    written = json.loads((bundle / PARITY_REPORT).read_text())
    assert written == json.loads(json.dumps(report))
    for component, figures in report["components"]["onnx"].items():
        assert figures["relative_error"] <= 1e-4, component
        assert figures["recipe"] == "fp32" and figures["passed"]
    image = report["pipeline"]["onnx"]
    assert image["psnr_db"] >= 40.0 and image["steps"] == 4 and image["sampler"] == "ddim"
    assert report["coreml"] == {}
    # Writing again replaces the report and the bundle still verifies.
    write_parity_report(bundle, read_manifest(bundle), {**report, "seed": 1})
    assert json.loads((bundle / PARITY_REPORT).read_text())["seed"] == 1
    assert verify_bundle(bundle) == []


def test_validate_fails_on_a_corrupted_model(bundle, capsys):
    corrupt_unet(bundle)
    rebless(bundle)  # checksums agree: only parity can tell
    code = main(["validate", str(bundle)])
    out, err = capsys.readouterr()
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "below its parity thresholds: onnx/unet" in err and "Traceback" not in err
    assert "FAIL" in out

    report = json.loads((bundle / PARITY_REPORT).read_text())
    assert report["passed"] is False
    assert not report["components"]["onnx"]["unet"]["passed"]
    assert report["components"]["onnx"]["text_encoder"]["passed"]
    assert any(f.startswith("onnx/unet (fp32): relative error") for f in report["failures"])
    assert any(f.startswith("onnx pipeline image") for f in report["failures"])
    assert verify_bundle(bundle) == []


def test_validate_refuses_a_tampered_bundle(bundle):
    corrupt_unet(bundle)
    with pytest.raises(BundleError, match="failed verification"):
        validate_bundle(bundle)
    assert not (bundle / PARITY_REPORT).exists()


def test_validate_checks_the_source_weights(bundle, tmp_path):
    def point_at(source, sha):
        manifest = json.loads((bundle / MANIFEST).read_text())
        manifest["model"].update(source=source, source_sha256=sha)
        (bundle / MANIFEST).write_text(json.dumps(manifest))

    point_at(str(tmp_path / "gone"), "0" * 64)
    with pytest.raises(ValidationError, match="cannot load the PyTorch original"):
        validate_bundle(bundle)
    point_at("tiny", "0" * 64)
    with pytest.raises(ValidationError, match="not the ones this bundle was exported from"):
        validate_bundle(bundle)


# ------------------------------------------------------------------ Core ML: never passed on Linux


@pytest.fixture
def coreml_bundle(tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    return export_bundle("tiny", tmp_path / "cm", targets=["coreml"], progress=False)


def fake_coreml_module(monkeypatch, result):
    calls = []

    def check_coreml(path, artifact_entry, module, config, component):
        calls.append((path.name, artifact_entry["recipe"], type(module).__name__, component))
        return result(component) if callable(result) else result

    module = types.ModuleType("mobilediff_export.export.coreml")
    module.check_coreml = check_coreml
    monkeypatch.setitem(sys.modules, "mobilediff_export.export.coreml", module)
    return calls


def test_coreml_records_linux_checks_and_needs_macos(coreml_bundle, monkeypatch):
    checks = {"spec_io_matches": True, "weight_dtypes": "int8", "max_abs_error": np.float32(0.01)}
    calls = fake_coreml_module(monkeypatch, checks)
    report = validate_bundle(coreml_bundle, write_report=False)
    assert [c[3] for c in calls] == ["text_encoder", "unet", "vae_decoder"]
    assert calls[1][:3] == ("Unet.mlpackage", "int8-fp16", "UNet")
    for component, entry in report["coreml"].items():
        assert entry["prediction"] == "needs_macos", component
        assert entry["linux_checks_passed"] and "passed" not in entry
        assert entry["linux_checks"]["max_abs_error"] == pytest.approx(0.01)
    assert report["passed"] and report["components"] == {} and report["pipeline"] == {}
    assert "prediction needs macOS" in format_report(report)


def test_coreml_check_failures_fail_validation(coreml_bundle, monkeypatch):
    fake_coreml_module(
        monkeypatch,
        lambda c: {"passed": c != "unet", "problems": [] if c != "unet" else ["weights: fp32"]},
    )
    report = validate_bundle(coreml_bundle, write_report=False)
    assert not report["passed"]
    assert report["failures"] == ["coreml/unet: Linux-side check failed: weights: fp32"]


def test_coreml_without_its_checker_is_not_passed(coreml_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "mobilediff_export.export.coreml", None)
    report = validate_bundle(coreml_bundle, write_report=False)
    assert not report["passed"]
    assert all(e["prediction"] == "needs_macos" for e in report["coreml"].values())
    assert "check_coreml is not available" in report["failures"][0]


# ------------------------------------------------------------------ figures and thresholds


def test_psnr_and_compare():
    ref = np.linspace(-1, 1, 100, dtype=np.float32)
    assert psnr_db(ref, ref, 2.0) == 100.0
    noisy = ref + 0.01
    assert psnr_db(ref, noisy, 2.0) == pytest.approx(20 * np.log10(2.0 / 0.01), rel=1e-4)
    figures = compare(ref, noisy)
    assert figures["max_abs_error"] == pytest.approx(0.01, rel=1e-4)
    assert figures["relative_error"] == pytest.approx(0.01, rel=1e-4)
    broken = compare(ref, np.full_like(ref, np.nan))
    assert broken["psnr_db"] is None and broken["relative_error"] is None
    with pytest.raises(ValidationError, match="shape"):
        compare(ref, ref[:10])


def test_thresholds_are_ordered_and_documented():
    import mobilediff_export.validate as module

    assert THRESHOLDS["fp32"].max_relative_error == 1e-4
    assert THRESHOLDS["fp16"].min_image_psnr_db == 35.0
    assert THRESHOLDS["int8-weight"].min_image_psnr_db == 30.0
    for name in THRESHOLDS:
        assert f"| {name}" in module.__doc__
    with pytest.raises(ValidationError, match="no parity threshold"):
        threshold_for("palettize-4bit")


@pytest.mark.slow
def test_validate_litert_bundle(tmp_path_factory, tmp_path):
    bundle = copy_bundle(tiny_tflite_bundle(tmp_path_factory), tmp_path / "b")
    report = validate_bundle(bundle, num_threads=2)
    assert report["passed"], report["failures"]
    figures = report["components"]["tflite"]
    assert figures["unet"]["recipe"] == "int8-dynamic"
    assert figures["vae_decoder"]["recipe"] == "fp16"
    assert figures["vae_decoder"]["psnr_db"] >= THRESHOLDS["fp16"].min_psnr_db
    assert report["pipeline"]["tflite"]["psnr_db"] >= THRESHOLDS["int8-dynamic"].min_image_psnr_db
    assert verify_bundle(bundle) == []
