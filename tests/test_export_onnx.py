"""The ONNX converter and the export driver: options, recipes, lazy converters, sampling."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from bundle_helpers import use_fake_converters

import mobilediff_export.export as export_module
import mobilediff_export.export.onnx as onnx_module
from mobilediff_export.bundle import read_manifest, verify_bundle
from mobilediff_export.checkpoints import load_model
from mobilediff_export.errors import ConfigError, MobileDiffError
from mobilediff_export.export import (
    check_rewrites_fit_recipes,
    export_bundle,
    load_converter,
    parse_overrides,
    parse_rewrites,
    parse_targets,
    plan_recipes,
)
from mobilediff_export.export.onnx import convert_onnx
from mobilediff_export.export.quantize import get_recipe
from mobilediff_export.export.signatures import component_io


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def run_onnx(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


# ------------------------------------------------------------------ convert_onnx


def test_convert_onnx_matches_pytorch(tiny, tmp_path):
    out = tmp_path / "onnx" / "vae_decoder.onnx"
    artifact = convert_onnx(
        tiny.modules["vae_decoder"], tiny.config, "vae_decoder", out, get_recipe("fp32")
    )
    assert artifact.path == out and out.is_file()
    assert (artifact.target, artifact.precision, artifact.recipe) == ("onnx", "fp32", "fp32")
    assert artifact.inputs == component_io(tiny.config, "vae_decoder", "onnx").inputs
    latent = np.random.default_rng(0).standard_normal((1, 4, 16, 16)).astype(np.float32) * 5
    got = run_onnx(out, {"latent": latent})
    with torch.inference_mode():
        expected = tiny.modules["vae_decoder"](torch.from_numpy(latent)).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_convert_onnx_external_data_past_the_threshold(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_module, "EXTERNAL_DATA_THRESHOLD", 0)
    out = tmp_path / "vae_decoder.onnx"
    artifact = convert_onnx(
        tiny.modules["vae_decoder"], tiny.config, "vae_decoder", out, get_recipe("fp32")
    )
    assert artifact.details["external_data"] is True
    data = [p for p in tmp_path.iterdir() if p != out]
    assert data and sum(p.stat().st_size for p in data) > out.stat().st_size
    latent = np.zeros((1, 4, 16, 16), np.float32)
    assert run_onnx(out, {"latent": latent}).shape == (1, 3, 64, 64)


def test_convert_onnx_refuses_quantized_recipes(tiny, tmp_path):
    with pytest.raises(ConfigError, match="fp32 host reference"):
        convert_onnx(
            tiny.modules["unet"], tiny.config, "unet", tmp_path / "u.onnx", get_recipe("fp16")
        )


# ------------------------------------------------------------------ options


def test_parse_targets():
    assert parse_targets(None) == ("tflite", "coreml")
    assert parse_targets(["onnx,tflite", "onnx"]) == ("onnx", "tflite")
    assert parse_targets("coreml") == ("coreml",)
    with pytest.raises(ConfigError, match="unknown target 'tflit'"):
        parse_targets(["tflit"])
    with pytest.raises(ConfigError, match="no target"):
        parse_targets([","])


def test_parse_overrides():
    assert parse_overrides(["coreml:unet=palettize-4bit", "vae_decoder=fp16"]) == {
        "coreml:unet": "palettize-4bit",
        "vae_decoder": "fp16",
    }
    for bad, message in [
        ("unet", "must look like"),
        ("coreml:wings=fp16", "unknown component"),
        ("metal:unet=fp16", "unknown target"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_overrides([bad])


def test_plan_recipes_defaults_recipe_and_overrides():
    plan = plan_recipes(("tflite", "coreml", "onnx"))
    assert plan["tflite", "unet"].name == "int8-dynamic"
    assert plan["coreml", "unet"].name == "int8-fp16"
    assert plan["onnx", "unet"].name == "fp32"
    plan = plan_recipes(("tflite", "coreml"), "fp16", {"coreml:unet": "palettize-4bit"})
    assert plan["tflite", "unet"].name == "fp16" and plan["coreml", "unet"].name == "palettize-4bit"
    plan = plan_recipes(("tflite", "coreml", "onnx"), None, {"unet": "fp16"})
    assert plan["tflite", "unet"].name == plan["coreml", "unet"].name == "fp16"
    assert plan["onnx", "unet"].name == "fp32"  # a bare override goes where it applies


@pytest.mark.parametrize(
    ("targets", "recipe", "overrides", "message"),
    [
        (("onnx",), "fp16", None, "none of the targets"),
        (("onnx",), "int9", None, "unknown quantization recipe"),
        (("tflite",), None, {"coreml:unet": "fp16"}, "not being exported"),
        (("tflite",), None, {"tflite:unet": "palettize-4bit"}, "does not apply to tflite"),
        (("onnx",), None, {"unet": "palettize-4bit"}, "none of the targets"),
    ],
)
def test_plan_recipes_refuses_what_cannot_apply(targets, recipe, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan_recipes(targets, recipe, overrides)


# ------------------------------------------------------------------ converters, lazily


def test_missing_converter_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mobilediff_export.export.tflite", None)
    with pytest.raises(MobileDiffError, match="tflite converter is not part of this installation"):
        load_converter("tflite")


def test_missing_converter_library_is_a_clear_error(monkeypatch):
    def fail(name, package=None):
        raise ModuleNotFoundError("No module named 'coremltools'", name="coremltools")

    monkeypatch.setattr(export_module.importlib, "import_module", fail)
    with pytest.raises(MobileDiffError, match="needs coremltools"):
        load_converter("coreml")


def test_converter_is_only_loaded_for_targets_asked_for(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mobilediff_export.export.tflite", None)
    monkeypatch.setitem(sys.modules, "mobilediff_export.export.coreml", None)
    assert load_converter("onnx") is convert_onnx
    with pytest.raises(MobileDiffError, match="tflite converter"):
        export_bundle("tiny", tmp_path / "b", targets=["onnx", "tflite"], progress=False)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ sampling in the manifest


def test_steps_sampler_and_guidance_are_recorded(tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    out = export_bundle(
        "tiny",
        tmp_path / "b",
        targets=["tflite"],
        steps=3,
        sampler="euler",
        guidance=1.0,
        progress=False,
    )
    manifest = read_manifest(out)
    sampler = manifest["pipeline"]["sampler"]
    assert sampler["name"] == "euler" and len(sampler["timesteps"]) == 3
    assert len(sampler["sigmas"]) == 4
    assert manifest["pipeline"]["guidance"]["mode"] == "none"
    unet = manifest["components"]["tflite"]["unet"]
    assert unet["inputs"][0]["shape"][0] == 1  # no guidance: batch 1
    assert manifest["model"]["config"]["pipeline"]["guidance_scale"] == 1.0
    assert verify_bundle(out) == []


def test_bad_sampling_options(tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    with pytest.raises(ConfigError, match="at least 1"):
        export_bundle("tiny", tmp_path / "b", targets=["tflite"], steps=0, progress=False)
    with pytest.raises(ConfigError, match="trailing"):
        export_bundle("tiny", tmp_path / "b", targets=["tflite"], sampler="onestep", progress=False)
    assert not (tmp_path / "b").exists()


def test_components_are_converted_one_at_a_time_and_freed(tmp_path, monkeypatch):
    """Each module is handed over once per target and dropped before the next component."""
    import weakref

    from bundle_helpers import fake_converter

    seen: list[tuple[str, str]] = []
    refs: dict[str, weakref.ref] = {}

    def converter_for(target):
        fake = fake_converter(target)

        def convert(module, config, component, out_path, recipe, rewrites=None):
            for name, ref in refs.items():
                if name != component:
                    assert ref() is None, f"{name} still alive while converting {component}"
            refs[component] = weakref.ref(module)
            seen.append((target, component))
            return fake(module, config, component, out_path, recipe)

        return convert

    monkeypatch.setattr(export_module, "load_converter", converter_for)
    export_bundle("tiny", tmp_path / "b", targets=["tflite", "coreml"], progress=False)
    assert seen == [
        (t, c) for c in ("text_encoder", "unet", "vae_decoder") for t in ("tflite", "coreml")
    ]


# ------------------------------------------------------------------ rewrites per target


def test_parse_rewrites():
    changes = parse_rewrites(
        ["tflite:attention=sdpa", "fuse_qkv=off", "coreml:none", "fold_timesteps"],
        ("tflite", "coreml", "onnx"),
    )
    assert changes["tflite"] == {"attention": "sdpa", "fuse_qkv": False, "fold_timesteps": True}
    assert changes["coreml"] == {"none": True, "fold_timesteps": True}
    assert "onnx" not in changes
    assert parse_rewrites(None, ("tflite",)) == {}


@pytest.mark.parametrize(
    ("spec", "targets", "message"),
    [
        ("onnx:fuse_qkv", ("onnx",), "host reference"),
        ("tflite:warp", ("tflite",), "unknown rewrite 'warp'"),
        ("attention=flash", ("tflite",), "must be one of"),
        ("fuse_qkv=maybe", ("tflite",), "on or off"),
        ("coreml:fuse_qkv", ("tflite",), "not being exported"),
        ("fuse_qkv", ("onnx",), "neither is being exported"),
    ],
)
def test_parse_rewrites_refuses(spec, targets, message):
    with pytest.raises(ConfigError, match=message):
        parse_rewrites([spec], targets)


def test_winograd_with_int8_weights_is_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="winograd is for float weights"):
        export_bundle(
            "tiny",
            tmp_path / "b",
            targets=["tflite"],
            recipe="int8-dynamic",
            rewrites=["winograd"],
            progress=False,
        )
    assert not (tmp_path / "b").exists()
    # The same switch with fp32 weights, and the default (by recipe) with int8, pass.
    check_rewrites_fit_recipes(
        plan_recipes(["tflite"], "fp32", {}), parse_rewrites(["winograd"], ["tflite"])
    )
    check_rewrites_fit_recipes(plan_recipes(["tflite"], "int8-dynamic", {}), {})


def test_rewrites_reach_the_converters_with_the_manifest_timesteps(tmp_path, monkeypatch):
    from bundle_helpers import fake_converter

    from mobilediff_export.export.rewrite import DEFAULT_REWRITES

    received = {}

    def converter_for(target):
        fake = fake_converter(target)

        def convert(module, config, component, out_path, recipe, rewrites=None):
            received[target, component] = rewrites
            return fake(module, config, component, out_path, recipe)

        return convert

    monkeypatch.setattr(export_module, "load_converter", converter_for)
    out = export_bundle(
        "tiny",
        tmp_path / "b",
        targets=["tflite", "coreml"],
        rewrites=["tflite:fold_timesteps", "tflite:attention=sdpa"],
        steps=3,
        progress=False,
    )
    timesteps = read_manifest(out)["pipeline"]["sampler"]["timesteps"]
    options = received["tflite", "unet"]
    assert options.fold_timesteps == tuple(float(t) for t in timesteps)
    assert options.attention == "sdpa" and options.fuse_qkv == DEFAULT_REWRITES["tflite"].fuse_qkv
    assert received["coreml", "unet"] is None  # the converter's own defaults
