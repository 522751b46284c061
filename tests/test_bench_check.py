"""``mobilediff check``: the fit estimate from device profiles, clearly labelled an estimate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_adb.scenario import bench_main, stub_bundle

from mobilediff_export.bench.fit import (
    PROFILES_DIR,
    estimate_fit,
    load_profiles,
    profile_problems,
)
from mobilediff_export.errors import MobileDiffError


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return stub_bundle(tmp_path_factory.mktemp("check") / "tiny", targets=("tflite", "onnx"))


def test_every_packaged_profile_cites_its_sources():
    profiles = load_profiles()
    assert {"iphone-15-pro", "pixel-8-pro", "galaxy-s24-ultra"} <= set(profiles)
    for profile in profiles.values():
        assert profile_problems(profile) == []
        assert "http" in profile["ram_source"] or "not publish" in profile["ram_source"]
        for acc in profile["accelerators"].values():
            assert acc["peak_source"]
            if acc["effective_tflops"] is not None:
                assert "estimate" in acc["effective_basis"]


def test_profile_without_a_labelled_estimate_is_refused(tmp_path):
    profile = json.loads((PROFILES_DIR / "pixel-8-pro.json").read_text())
    profile["accelerators"]["gpu"]["effective_basis"] = "trust me"
    (tmp_path / "bad.json").write_text(json.dumps(profile))
    with pytest.raises(MobileDiffError, match="labelled an estimate"):
        load_profiles([tmp_path])


def test_estimate_shows_its_basis(bundle, capsys):
    code = bench_main(["check", str(bundle), "--device", "pixel-8-pro"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("ESTIMATE (no phone was run)")
    assert "tflite models" in out and "fits" in out
    assert "basis:" in out and "research.google" in out
    assert "within the 1000 ms budget" in out


def test_estimate_numbers(bundle):
    profile = load_profiles()["pixel-8-pro"]
    fit = estimate_fit(bundle, profile)
    assert fit["estimate"] is True
    manifest = json.loads((bundle / "bundle.json").read_text())
    unet = manifest["components"]["tflite"]["unet"]
    steps = manifest["pipeline"]["sampler"]["num_inference_steps"]
    assert fit["flops"]["unet"] == steps * unet["flops"]
    assert fit["text_encoder_calls"] == 2  # tiny has guidance on
    gpu = fit["accelerators"]["gpu"]
    assert gpu["latency_ms"] == pytest.approx(fit["flops"]["total"] / 1.64e12 * 1e3, abs=0.1)
    assert fit["accelerators"]["npu"]["latency_ms"] is None  # no public figure
    assert fit["memory"]["fits_all_loaded"] is True


def test_ios_device_falls_back_to_another_target_and_says_so(bundle):
    fit = estimate_fit(bundle, load_profiles()["iphone-15-pro"], steps=1)
    assert fit["target"] == "tflite"
    assert "no coreml models" in fit["notes"][0]
    assert fit["steps"] == 1


def test_does_not_fit_and_over_budget_exit_3(bundle, tmp_path, capsys):
    profile = json.loads((PROFILES_DIR / "pixel-8-pro.json").read_text())
    profile.update(name="tiny-phone", display_name="A phone with 1 MiB", ram_bytes=1 << 20)
    profile["accelerators"]["gpu"]["effective_tflops"] = 1e-6  # estimate: absurdly slow
    (tmp_path / "tiny-phone.json").write_text(json.dumps(profile))
    code = bench_main(["check", str(bundle), "--device", "tiny-phone", "--profiles", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3
    assert "DOES NOT FIT" in out and "OVER the 1000 ms budget" in out


def test_json_output_and_listing(bundle, capsys):
    assert bench_main(["check", str(bundle), "--device", "galaxy-s24-ultra", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["estimate"] is True and data["device"]["soc"].startswith("Qualcomm")
    assert bench_main(["check", "--list-devices"]) == 0
    assert "iphone-15-pro" in capsys.readouterr().out


def test_unknown_device_is_one_line_error(bundle, capsys):
    assert bench_main(["check", str(bundle), "--device", "nokia-3310"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no device profile 'nokia-3310'" in err[0]
