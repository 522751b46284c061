"""Samplers: timesteps, input scaling and update rules against diffusers' schedulers.

The "model" here is a fake denoiser that knows the clean sample and answers with the
matching epsilon (or v) plus a little jitter, so a chained run behaves like a real one
(bounded x0 predictions) and a 1e-5 tolerance measures the update rule rather than
float32 rounding of a diverging trajectory.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from mobilediff_export.config import PipelineConfig
from mobilediff_export.errors import ConfigError
from mobilediff_export.schedulers import (
    DDIMSampler,
    EulerSampler,
    OneStepSampler,
    alphas_cumprod,
    make_sampler,
)

VECTORS = Path(__file__).parent / "vectors" / "samplers.json"
SHAPE = (1, 4, 8, 8)
ATOL = 1e-5


def reference(kind: str, config: PipelineConfig, **extra):
    kwargs = dict(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        beta_schedule=config.beta_schedule,
        prediction_type=config.prediction_type,
        timestep_spacing=config.timestep_spacing,
        steps_offset=config.steps_offset,
    )
    if kind == "ddim":
        extra.setdefault("set_alpha_to_one", False)
        return DDIMScheduler(clip_sample=False, **kwargs, **extra)
    return EulerDiscreteScheduler(**kwargs, **extra)


def fake_model_output(x_in, alpha, x0, jitter, prediction_type):
    """The epsilon (or v) a perfect denoiser of ``x0`` would give, plus ``jitter``."""
    x_in = np.asarray(x_in, dtype=np.float64)
    eps = (x_in - math.sqrt(alpha) * x0) / math.sqrt(1.0 - alpha) + jitter
    if prediction_type == "v_prediction":
        return (math.sqrt(alpha) * eps - math.sqrt(1.0 - alpha) * x0).astype(np.float32)
    return eps.astype(np.float32)


def run_both(kind, ref, ours, seed=0):
    """Chain both samplers over every step with identical model outputs; return max errors."""
    rng = np.random.default_rng(seed)
    x0 = np.clip(rng.standard_normal(SHAPE), -2, 2)
    x = (rng.standard_normal(SHAPE) * float(ref.init_noise_sigma)).astype(np.float32)
    x_ref, x_ours = torch.from_numpy(x.copy()), x.copy()
    scale_err = step_err = 0.0
    for i, t in enumerate(ref.timesteps):
        in_ref = ref.scale_model_input(x_ref, t)
        in_ours = ours.scale_model_input(x_ours, i)
        assert in_ours.dtype == np.float32
        scale_err = max(scale_err, float(np.abs(in_ref.numpy() - in_ours).max()))
        if kind == "ddim":
            alpha = float(ref.alphas_cumprod[int(t)])
        else:
            alpha = 1.0 / (1.0 + float(ref.sigmas[i]) ** 2)
        jitter = 0.1 * rng.standard_normal(SHAPE)
        out = fake_model_output(in_ref.numpy(), alpha, x0, jitter, ref.config.prediction_type)
        x_ref = ref.step(torch.from_numpy(out), t, x_ref).prev_sample
        x_ours = ours.step(out, i, x_ours)
        assert x_ours.dtype == np.float32
        step_err = max(step_err, float(np.abs(x_ref.numpy() - x_ours).max()))
    return scale_err, step_err


@pytest.mark.parametrize("schedule", ["scaled_linear", "linear"])
@pytest.mark.parametrize(("n", "start", "end"), [(1000, 0.00085, 0.012), (777, 0.0001, 0.02)])
def test_alphas_cumprod_is_bit_identical_to_diffusers(schedule, n, start, end):
    config = PipelineConfig(
        beta_schedule=schedule, num_train_timesteps=n, beta_start=start, beta_end=end
    )
    ours = alphas_cumprod(config)
    assert ours.dtype == np.float32 and ours.shape == (n,)
    np.testing.assert_array_equal(ours, reference("ddim", config).alphas_cumprod.numpy())


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("steps", [1, 4, 8, 25])
@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_matches_diffusers(kind, steps, prediction_type, spacing):
    config = PipelineConfig(sampler=kind, prediction_type=prediction_type, timestep_spacing=spacing)
    ref = reference(kind, config)
    ref.set_timesteps(steps)
    ours = make_sampler(config, steps)
    assert type(ours) is {"ddim": DDIMSampler, "euler": EulerSampler}[kind]
    assert len(ours) == steps
    assert ours.timesteps.dtype == np.float64
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy().astype(np.float64))
    assert ours.init_noise_sigma == float(ref.init_noise_sigma)
    if kind == "euler":
        np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
    scale_err, step_err = run_both(kind, ref, ours)
    assert scale_err <= ATOL
    assert step_err <= ATOL


def test_ddim_set_alpha_to_one_matches_diffusers():
    config = PipelineConfig(timestep_spacing="trailing")
    ref = reference("ddim", config, set_alpha_to_one=True)
    ref.set_timesteps(4)
    ours = DDIMSampler(config, 4, set_alpha_to_one=True)
    assert ours.alphas_cumprod_prev[-1] == 1.0
    assert run_both("ddim", ref, ours)[1] <= ATOL


def test_linear_schedule_and_other_train_length_match_diffusers():
    config = PipelineConfig(
        sampler="euler",
        beta_schedule="linear",
        beta_start=0.0001,
        beta_end=0.02,
        num_train_timesteps=500,
        timestep_spacing="trailing",
        prediction_type="v_prediction",
    )
    for kind in ("ddim", "euler"):
        ref = reference(kind, config)
        ref.set_timesteps(8)
        ours = (DDIMSampler if kind == "ddim" else EulerSampler)(config, 8)
        np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
        assert max(run_both(kind, ref, ours, seed=3)) <= ATOL


def test_ddim_linspace_steps_back_by_train_over_steps_like_diffusers():
    ours = DDIMSampler(PipelineConfig(timestep_spacing="linspace"), 4)
    assert ours.timesteps.tolist() == [999, 666, 333, 0]
    assert ours.prev_timesteps.tolist() == [749, 416, 83, -1]


def test_explicit_timesteps():
    config = PipelineConfig(sampler="euler", timestep_spacing="trailing")
    ref = reference("euler", config)
    ref.set_timesteps(timesteps=[999, 850, 500, 120.5])
    ours = EulerSampler(config, timesteps=[999, 850, 500, 120.5])
    np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
    assert ours.init_noise_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    assert max(run_both("euler", ref, ours)) <= ATOL
    assert ours.to_dict()["timestep_spacing"] is None

    # DDIM with an explicit list steps to the next entry: the leading list reproduces leading.
    spaced = DDIMSampler(PipelineConfig(), 8)
    explicit = DDIMSampler(PipelineConfig(), timesteps=spaced.timesteps.astype(int).tolist())
    np.testing.assert_array_equal(explicit.alphas_cumprod_prev, spaced.alphas_cumprod_prev)
    ddim = DDIMSampler(PipelineConfig(), timesteps=[999, 500, 20])
    assert ddim.prev_timesteps.tolist() == [500, 20, -1]


def test_float64_in_float64_out():
    sampler = DDIMSampler(PipelineConfig(), 4)
    x = np.linspace(-1, 1, 8).reshape(2, 2, 2)
    assert sampler.step(x * 0.5, 0, x).dtype == np.float64
    assert sampler.step(x.astype(np.float32), 0, x.astype(np.float32)).dtype == np.float32


def test_step_rejects_bad_index_and_shapes():
    sampler = EulerSampler(PipelineConfig(), 4)
    x = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(IndexError, match=r"outside 0\.\.3"):
        sampler.step(x, 4, x)
    with pytest.raises(ValueError, match="shape"):
        sampler.step(np.zeros((2, 3)), 0, x)


# ------------------------------------------------------------------ one-step sampling


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_onestep_recovers_x0(prediction_type):
    config = PipelineConfig(sampler="onestep", prediction_type=prediction_type)
    sampler = OneStepSampler(config)
    assert sampler.timesteps.tolist() == [999.0]
    assert sampler.init_noise_sigma == 1.0
    rng = np.random.default_rng(1)
    x0, eps = rng.standard_normal((2, *SHAPE))
    a = float(alphas_cumprod(config)[999])
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    out = eps if prediction_type == "epsilon" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0
    np.testing.assert_array_equal(sampler.scale_model_input(x_t, 0), x_t)
    np.testing.assert_allclose(sampler.step(out, 0, x_t), x0, rtol=0, atol=1e-5)


def test_onestep_renoises_between_steps():
    config = PipelineConfig(sampler="onestep", timestep_spacing="trailing", num_inference_steps=4)
    sampler = make_sampler(config)
    assert isinstance(sampler, OneStepSampler)
    assert sampler.timesteps.tolist() == [999, 749, 499, 249]
    ac = alphas_cumprod(config).astype(np.float64)
    rng = np.random.default_rng(2)
    x0, eps, noise = rng.standard_normal((3, *SHAPE))
    x_t = math.sqrt(ac[999]) * x0 + math.sqrt(1 - ac[999]) * eps
    expected = math.sqrt(ac[749]) * x0 + math.sqrt(1 - ac[749]) * noise
    np.testing.assert_allclose(sampler.step(eps, 0, x_t, noise), expected, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs `noise`"):
        sampler.step(eps, 0, x_t)
    # The last step returns x0 and needs no noise.
    x_last = math.sqrt(ac[249]) * x0 + math.sqrt(1 - ac[249]) * eps
    np.testing.assert_allclose(sampler.step(eps, 3, x_last), x0, rtol=0, atol=1e-5)
    d = sampler.to_dict()
    assert d["alphas_cumprod"] == pytest.approx(ac[[999, 749, 499, 249]].tolist())


def test_onestep_refuses_a_spacing_that_does_not_start_at_pure_noise():
    with pytest.raises(ConfigError, match="starts at t=876"):
        OneStepSampler(PipelineConfig(timestep_spacing="leading"), num_inference_steps=8)
    with pytest.raises(ConfigError, match="trailing"):
        make_sampler(PipelineConfig(sampler="onestep", num_inference_steps=1))
    # Explicit lists are the caller's choice.
    assert OneStepSampler(PipelineConfig(), timesteps=[999, 500]).timesteps.tolist() == [999, 500]


# ------------------------------------------------------------------ manifest and errors


@pytest.mark.parametrize("kind", ["ddim", "euler", "onestep"])
def test_to_dict_is_plain_json(kind):
    config = PipelineConfig(sampler=kind, timestep_spacing="trailing", num_inference_steps=4)
    d = make_sampler(config).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["name"] == kind and d["num_inference_steps"] == 4
    assert len(d["timesteps"]) == 4
    if kind == "euler":
        assert len(d["sigmas"]) == 5 and d["sigmas"][-1] == 0.0
    else:
        assert len(d["alphas_cumprod"]) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, "at least 1"),
        ({"num_inference_steps": 1001}, "more than the 1000 timesteps"),
        (
            {"num_inference_steps": 1000},
            r"must lie in \[0, 999\]; got \[1000, 999, 998, 997, \.\.\.",
        ),
        ({"timesteps": [1000, 500]}, r"must lie in \[0, 999\]"),
        ({"timesteps": [-1]}, r"must lie in \[0, 999\]"),
        ({"timesteps": [500, 700]}, "strictly descending"),
        ({"timesteps": [500, 500]}, "strictly descending"),
        ({"timesteps": []}, "non-empty"),
        ({"timesteps": [999.5, 500]}, "whole numbers"),
        ({"timesteps": [float("nan")]}, "finite"),
        ({"timesteps": ["x"]}, "list of numbers"),
        ({"timesteps": [999], "num_inference_steps": 1}, "not both"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_sampler(PipelineConfig(), **kwargs)


def test_unknown_sampler_raises_config_error():
    config = PipelineConfig()
    object.__setattr__(config, "sampler", "plms")  # bypass the config's own check
    with pytest.raises(ConfigError, match=r"pipeline\.sampler must be one of"):
        make_sampler(config)


def test_module_does_not_import_torch():
    import mobilediff_export.schedulers as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert "torch" not in imported and "diffusers" not in imported


# ------------------------------------------------------------------ golden vectors


def _vector_cases():
    return json.loads(VECTORS.read_text())["cases"] if VECTORS.exists() else []


def test_golden_vector_file_exists_and_covers_all_samplers():
    data = json.loads(VECTORS.read_text())
    assert {case["sampler"] for case in data["cases"]} == {"ddim", "euler", "onestep"}


def test_golden_vectors_are_current(tmp_path):
    """Regenerating gives the checked-in file byte for byte (deterministic, not stale)."""
    import sys

    sys.path.insert(0, str(VECTORS.parent))
    try:
        import gen_samplers
    finally:
        sys.path.remove(str(VECTORS.parent))
    gen_samplers.generate(tmp_path / "samplers.json")
    assert (tmp_path / "samplers.json").read_bytes() == VECTORS.read_bytes()


@pytest.mark.parametrize("case", _vector_cases(), ids=lambda case: case["name"])
def test_golden_vectors(case):
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    config = PipelineConfig(**{k: v for k, v in case["config"].items() if k in fields})
    if case["explicit_timesteps"]:
        sampler = make_sampler(config, timesteps=case["timesteps"])
    else:
        sampler = make_sampler(config, case["num_inference_steps"])
    tol = json.loads(VECTORS.read_text())["tolerance"]
    atol, rtol = tol["atol"], tol["rtol"]
    assert sampler.timesteps.tolist() == case["timesteps"]
    assert sampler.init_noise_sigma == pytest.approx(case["init_noise_sigma"], rel=1e-6)
    manifest = sampler.to_dict()
    for key in ("prev_timesteps", "alphas_cumprod", "alphas_cumprod_prev", "sigmas"):
        if key in case:
            assert manifest[key] == pytest.approx(case[key], rel=1e-6), key
    for step in case["steps"]:
        i = step["index"]
        shape = (len(step["sample"]),)
        x = np.array(step["sample"], dtype=np.float64).reshape(shape)
        out = np.array(step["model_output"], dtype=np.float64)
        noise = None if step["noise"] is None else np.array(step["noise"], dtype=np.float64)
        assert sampler.model_input_scale(i) == pytest.approx(step["model_input_scale"], rel=1e-6)
        np.testing.assert_allclose(
            sampler.scale_model_input(x, i), step["model_input"], rtol=rtol, atol=atol
        )
        np.testing.assert_allclose(
            sampler.step(out, i, x, noise), step["prev_sample"], rtol=rtol, atol=atol
        )
