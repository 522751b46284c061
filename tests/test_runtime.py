"""The host runtime: samplers rebuilt from the manifest, runners, and the bundle pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from bundle_helpers import copy_bundle, tiny_onnx_bundle, tiny_tflite_bundle

from mobilediff_export.bundle import MANIFEST, BundleError, read_manifest
from mobilediff_export.config import PipelineConfig
from mobilediff_export.errors import ConfigError
from mobilediff_export.pipeline import load_pipeline
from mobilediff_export.runtime import BundlePipeline, open_runner, seeded_noise, to_uint8_image
from mobilediff_export.runtime.pipeline import _renoise
from mobilediff_export.schedulers import DDIMSampler, make_sampler, sampler_from_dict


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    return tiny_onnx_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def runtime(onnx_bundle):
    return BundlePipeline(onnx_bundle, backend="onnx")


@pytest.fixture(scope="module")
def reference():
    return load_pipeline("tiny")


# ------------------------------------------------------------------ samplers from the manifest


SAMPLER_CONFIGS = [
    PipelineConfig(sampler="ddim"),
    PipelineConfig(sampler="ddim", timestep_spacing="linspace", num_inference_steps=5),
    PipelineConfig(sampler="euler"),
    PipelineConfig(sampler="euler", timestep_spacing="linspace", prediction_type="v_prediction"),
    PipelineConfig(sampler="onestep", timestep_spacing="trailing", num_inference_steps=3),
]


@pytest.mark.parametrize(
    "config", SAMPLER_CONFIGS, ids=lambda c: f"{c.sampler}-{c.timestep_spacing}"
)
def test_sampler_from_dict_round_trips_and_steps_identically(config):
    original = make_sampler(config)
    rebuilt = sampler_from_dict(json.loads(json.dumps(original.to_dict())))
    assert type(rebuilt) is type(original)
    assert rebuilt.to_dict() == original.to_dict()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    for i in range(len(original)):
        out = rng.standard_normal(x.shape).astype(np.float32)
        noise = rng.standard_normal(x.shape)
        assert np.array_equal(original.scale_model_input(x, i), rebuilt.scale_model_input(x, i))
        assert np.array_equal(original.step(out, i, x, noise), rebuilt.step(out, i, x, noise))


def test_sampler_from_dict_keeps_explicit_timesteps():
    original = DDIMSampler(PipelineConfig(), timesteps=[900, 500, 100])
    rebuilt = sampler_from_dict(original.to_dict())
    assert rebuilt.explicit_timesteps and rebuilt.to_dict() == original.to_dict()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(name="plms"), "sampler.name"),
        (lambda d: d.pop("alphas_cumprod"), "alphas_cumprod must be a list"),
        (lambda d: d["alphas_cumprod_prev"].pop(), "expected 4"),
        (lambda d: d.update(num_inference_steps=9), "num_inference_steps"),
        (lambda d: d.update(init_noise_sigma="1"), "init_noise_sigma"),
        (lambda d: d.update(timesteps=[]), "sampler.timesteps is empty"),
        (lambda d: d.update(timestep_spacing="sideways"), "timestep_spacing"),
    ],
)
def test_sampler_from_dict_rejects_broken_dicts(change, message):
    data = make_sampler(PipelineConfig(num_inference_steps=4)).to_dict()
    change(data)
    with pytest.raises(ConfigError, match=message):
        sampler_from_dict(data)


def test_sampler_from_dict_needs_a_dict():
    with pytest.raises(ConfigError, match="JSON object"):
        sampler_from_dict([1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------------ noise and pixels


def test_noise_and_pixels_follow_the_pytorch_pipeline(reference):
    assert np.array_equal(seeded_noise((1, 4, 16, 16), 3), reference.initial_noise(3))
    generator = torch.Generator().manual_seed(8)
    draws = [torch.randn((1, 4, 2, 2), generator=generator).numpy() for _ in range(3)]
    assert np.array_equal(_renoise((1, 4, 2, 2), 8, 2), draws[2])
    decoded = np.array([-1.3, -1.0, 0.0, 0.5, 1.0, 1.3], dtype=np.float32).reshape(1, 1, 1, 6)
    decoded = np.repeat(decoded, 3, axis=1)
    assert to_uint8_image(decoded)[0, 0, :, 0].tolist() == [0, 0, 128, 191, 255, 255]


# ------------------------------------------------------------------ the bundle pipeline


def test_onnx_bundle_reproduces_the_pytorch_image(runtime, reference):
    prompt = "a red circle left of a blue square"
    latents = seeded_noise((1, 4, 16, 16), 5)
    image = runtime(prompt, latents=latents, output_type="uint8")
    expected = np.asarray(reference(prompt, latents=latents, seed=5))
    assert image.shape == expected.shape == (64, 64, 3)
    mse = np.mean((image.astype(np.float64) - expected) ** 2)
    psnr = 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)
    assert psnr >= 40.0, psnr
    # Without explicit latents the seed draws the same noise as PyTorch.
    assert np.array_equal(np.asarray(runtime(prompt, seed=5)), image)


def test_guidance_scale_may_change_but_not_the_mode(runtime):
    a = runtime("x", output_type="decoded", guidance_scale=3.0)
    b = runtime("x", output_type="decoded")
    assert not np.allclose(a, b)
    with pytest.raises(BundleError, match="batch 2"):
        runtime("x", guidance_scale=1.0)
    with pytest.raises(BundleError, match="latents must have shape"):
        runtime("x", latents=np.zeros((1, 4, 8, 8), np.float32))


def test_runner_checks_shapes_and_casts_dtypes(onnx_bundle):
    manifest = read_manifest(onnx_bundle)
    entry = manifest["components"]["onnx"]["text_encoder"]
    runner = open_runner(onnx_bundle, "onnx", entry)
    ids = np.full((1, 77), 49407, dtype=np.int32)  # cast to the manifest's int64
    out = runner.run({"input_ids": ids})["context"]
    assert out.shape == (1, 77, 64) and out.dtype == np.float32
    with pytest.raises(BundleError, match="has shape"):
        runner.run({"input_ids": ids[:, :10]})
    with pytest.raises(BundleError, match="not given"):
        runner.run({})


def test_backend_errors(onnx_bundle):
    with pytest.raises(BundleError, match="has no tflite models"):
        BundlePipeline(onnx_bundle, backend="tflite")
    manifest = read_manifest(onnx_bundle)
    with pytest.raises(BundleError, match="only on macOS"):
        open_runner(onnx_bundle, "coreml", manifest["components"]["onnx"]["unet"])


def test_runtime_refuses_a_bundle_that_does_not_verify(onnx_bundle, tmp_path):
    bundle = copy_bundle(onnx_bundle, tmp_path / "b")
    (bundle / "onnx" / "unet.onnx").write_bytes(b"not a model")
    with pytest.raises(BundleError, match="failed verification"):
        BundlePipeline(bundle)
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        BundlePipeline(bundle, verify=False)


def test_runtime_reads_names_from_the_manifest_not_file_names(onnx_bundle, tmp_path):
    """Apps never guess from file names; neither does the runtime."""
    bundle = copy_bundle(onnx_bundle, tmp_path / "b")
    (bundle / "onnx" / "unet.onnx").rename(bundle / "onnx" / "denoiser.onnx")
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["components"]["onnx"]["unet"]["file"] = "onnx/denoiser.onnx"
    manifest["files"]["onnx/denoiser.onnx"] = manifest["files"].pop("onnx/unet.onnx")
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    image = BundlePipeline(bundle)("a cat", output_type="uint8")
    assert image.shape == (64, 64, 3)


def test_runtime_imports_no_model_code(onnx_bundle):
    code = (
        "import sys\n"
        "from mobilediff_export.runtime import load_bundle\n"
        f"load_bundle({str(onnx_bundle)!r})('a cat', output_type='uint8')\n"
        "bad = [m for m in sys.modules if m.startswith(('mobilediff_export.models',"
        " 'mobilediff_export.checkpoints', 'mobilediff_export.pipeline', 'diffusers',"
        " 'transformers'))]\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ LiteRT


@pytest.mark.slow
def test_litert_bundle_reproduces_the_pytorch_image(tmp_path_factory, reference):
    bundle = tiny_tflite_bundle(tmp_path_factory)
    manifest = read_manifest(bundle)
    unet = manifest["components"]["tflite"]["unet"]
    assert [s["name"] for s in unet["inputs"]] == ["sample", "step_index", "context"]
    assert unet["signature"] == "unet" and "fold_timesteps" in unet["rewrites"]
    runtime = BundlePipeline(bundle, num_threads=2)
    assert runtime.backend == "tflite"  # the default where a bundle has it
    prompt = "a red circle left of a blue square"
    latents = seeded_noise((1, 4, 16, 16), 0)
    image = runtime(prompt, latents=latents, output_type="uint8")
    expected = np.asarray(reference(prompt, latents=latents))
    mse = np.mean((image.astype(np.float64) - expected) ** 2)
    assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) >= 30.0  # int8 dynamic-range
