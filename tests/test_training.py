"""The training recipe on its tiny config: data, every stage, resume, DDP/AMP paths, eval, CLI.

One module-scoped ``train all`` of ``models/training/tiny.json`` (a few steps per stage)
feeds most tests; the resume tests re-run single stages in copies of that run folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mobilediff_export import load_pipeline
from mobilediff_export.config import PipelineConfig
from mobilediff_export.errors import ConfigError, MobileDiffError
from mobilediff_export.schedulers import DDIMSampler, ddim_step
from mobilediff_export.training.classifier import caption_accuracy
from mobilediff_export.training.commands import add_train_commands, main
from mobilediff_export.training.config import DistillStage, Recipe, load_recipe
from mobilediff_export.training.data import (
    KINDS,
    SyntheticShapes,
    caption_key,
    checked_heads,
    is_held_out,
)
from mobilediff_export.training.diffusion import (
    Schedule,
    generate_latents,
    initial_noise,
    step_grid,
)
from mobilediff_export.training.evaluate import frechet_distance
from mobilediff_export.training.loop import StageInterrupted
from mobilediff_export.training.recipe import run_all
from mobilediff_export.training.runtime import Runtime, single_process_group
from mobilediff_export.training.stages import train_stage

CPU = Runtime(torch.device("cpu"), progress=False)


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return load_recipe("tiny")


@pytest.fixture(scope="module")
def trained(recipe, tmp_path_factory):
    """``train all`` on the tiny recipe: (run folder, student folder, one-step folder, summary)."""
    root = tmp_path_factory.mktemp("train")
    run, out, one = root / "run", root / "tiny-model", root / "tiny-model-1step"
    summary = run_all(recipe, run, CPU, out, one)
    return run, out, one, summary


# --------------------------------------------------------------------------- data


def test_data_is_deterministic_by_seed_and_split():
    data = SyntheticShapes(image_size=16)
    a, b = data.scene("train", 7, stream=2), data.scene("train", 7, stream=2)
    assert a == b
    assert np.array_equal(data.render(a), data.render(b))
    assert data.scene("train", 7, stream=3) != a
    assert SyntheticShapes(image_size=16, seed=1).scene("train", 7, stream=2) != a
    images, captions, _ = data.batch("val", range(4))
    again, captions2, _ = data.batch("val", range(4))
    assert images.shape == (4, 3, 16, 16) and images.dtype == np.float32
    assert np.array_equal(images, again) and captions == captions2
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_validation_captions_are_held_out_of_training():
    data = SyntheticShapes(image_size=16)
    for kind in KINDS:
        train, val = set(data.keys["train"][kind]), set(data.keys["val"][kind])
        assert train and val and not train & val
    kinds_seen = set()
    for split in ("train", "val"):
        for i in range(300):
            scene = data.scene(split, i)
            kinds_seen.add(scene.kind)
            assert is_held_out(data, scene.caption) == (split == "val"), scene.caption
            assert caption_key(scene.caption)[0] == scene.kind
    assert kinds_seen == set(KINDS)


def test_captions_cover_the_required_templates():
    data = SyntheticShapes(image_size=16)
    captions = [data.scene("train", i).caption for i in range(400)]
    assert any(
        c.startswith("a red ") and c.endswith(" background") and " of " not in c for c in captions
    )
    assert any(" left of " in c for c in captions) and any(" above " in c for c in captions)
    assert any(c.startswith(("two ", "three ")) for c in captions)
    words = " ".join(captions)
    for word in (
        "red",
        "green",
        "blue",
        "yellow",
        "white",
        "black",
        "orange",
        "purple",
        "circle",
        "square",
        "triangle",
        "small",
        "big",
    ):
        assert word in words
    assert caption_key("a red circle left of a blue square") == caption_key(
        "a blue square right of a red circle"
    )


# --------------------------------------------------------------------------- config and math


def test_recipes_load_and_are_strict(recipe):
    demo = load_recipe("demo")
    assert demo.model.pipeline.image_size == 32 and demo.distill.student_steps == 8
    data = recipe.to_dict()
    data["teacher"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        Recipe.from_dict(data)
    data = recipe.to_dict()
    data["distill"]["start_steps"] = 6
    with pytest.raises(ConfigError, match="power of two"):
        Recipe.from_dict(data)
    with pytest.raises(ConfigError, match="no training recipe"):
        load_recipe("nope")
    rounds = DistillStage(start_steps=32, student_steps=8, round_steps=(3, 2))
    assert rounds.rounds == 2 and [rounds.round_of(k) for k in (0, 2, 3, 4)] == [
        (0, 0),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    with pytest.raises(ConfigError, match="one positive step count per round"):
        DistillStage(start_steps=32, student_steps=8, round_steps=(3,))


def test_step_grid_matches_the_ddim_sampler_and_nests():
    config = PipelineConfig(timestep_spacing="trailing", steps_offset=0, num_train_timesteps=1000)
    sampler = DDIMSampler(config, 8)
    grid = step_grid(1000, 8, 8)
    assert grid[:-1] == [int(t) for t in sampler.timesteps]
    assert grid[1:] == [int(t) for t in sampler.prev_timesteps]
    fine = step_grid(1000, 8, 32)
    assert len(fine) == 33 and fine[::4] == grid
    assert fine[::2] == step_grid(1000, 8, 16)


def test_torch_ddim_step_matches_the_numpy_sampler():
    config = PipelineConfig(
        prediction_type="v_prediction", beta_schedule="linear", beta_start=1e-4, beta_end=0.02
    )
    schedule = Schedule(config)
    sampler = DDIMSampler(config, timesteps=[999, 500, 20])
    x, v = (
        torch.randn(2, 4, 3, 3, dtype=torch.float64),
        torch.randn(2, 4, 3, 3, dtype=torch.float64),
    )
    for i, (t, s) in enumerate(((999, 500), (500, 20), (20, -1))):
        ours = schedule.ddim_step(x.float(), v.float(), torch.tensor([t, t]), torch.tensor([s, s]))
        ref = ddim_step(
            v.numpy(),
            x.numpy(),
            sampler.alphas_cumprod[i],
            sampler.alphas_cumprod_prev[i],
            "v_prediction",
        )
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_frechet_distance_and_caption_accuracy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, a + 1.0) == pytest.approx(6.0, rel=1e-6)
    data = SyntheticShapes(image_size=16)
    scenes = data.scenes("val", range(20))
    truth = np.stack([s.labels.as_array() for s in scenes])
    assert caption_accuracy(truth, scenes)["caption"] == 1.0
    wrong = truth.copy()
    wrong[:, 2] = (wrong[:, 2] + 1) % 8  # every first colour wrong
    assert caption_accuracy(wrong, scenes)["caption"] == 0.0
    assert all("first_colour" in checked_heads(s) for s in scenes)


# --------------------------------------------------------------------------- the stages


def test_train_all_writes_loadable_models_samples_and_cards(trained, recipe):
    run, out, one, summary = trained
    for stage in ("vae", "teacher", "distill", "gan", "classifier"):
        assert json.loads((run / stage / "done.json").read_text())["steps"] > 0
        assert not (run / stage / "checkpoint.safetensors").exists()
    student = load_pipeline(out)
    p = student.config.pipeline
    assert (p.sampler, p.num_inference_steps, p.guidance_scale) == ("ddim", 2, 1.0)
    assert p.vae_scaling_factor == pytest.approx(
        json.loads((run / "vae" / "vae.json").read_text())["scaling_factor"]
    )
    weights = load_file(str(out / "unet" / "model.safetensors"))
    assert all(w.dtype == torch.float16 for w in weights.values())
    onestep = load_pipeline(one)
    assert (onestep.config.pipeline.sampler, onestep.config.pipeline.num_inference_steps) == (
        "onestep",
        1,
    )
    assert np.asarray(onestep("a red circle on a blue background")).shape == (16, 16, 3)
    teacher = load_pipeline(run / "teacher" / "model")
    assert teacher.config.pipeline.guidance_scale == recipe.teacher.guidance_scale
    assert "| teacher |" in (out / "MODEL_CARD.md").read_text()
    assert len(list((out / "samples").glob("*.png"))) == 13
    for folder in (out, one):  # what export --recipe w8a8 calibrates on
        prompts = (folder / "calibration_prompts.txt").read_text().splitlines()
        captions = [line for line in prompts if line and not line.startswith("#")]
        assert len(set(captions)) == 32 and "a red circle left of a blue square" not in captions
    rows = summary["eval"]
    assert set(rows) >= {"real images", "teacher", "student", "onestep"}
    assert 0.0 <= rows["student"]["caption"] <= 1.0 and np.isfinite(rows["onestep"]["fd"])


def test_batched_generation_equals_the_pipeline(trained):
    _, out, _, _ = trained
    pipe = load_pipeline(out)
    prompts, seeds = ["a red circle on a blue background", "two green squares"], [3, 4]
    context = pipe.encode_prompt(prompts)
    latents = generate_latents(
        pipe.unet,
        pipe.make_sampler(),
        context,
        None,
        initial_noise(seeds, pipe.config.latent_shape),
        seeds=seeds,
    )
    for i, seed in enumerate(seeds):
        ref = pipe.denoise(
            context[i : i + 1], pipe.initial_noise(seed), pipe.make_sampler(), 1.0, seed
        )
        np.testing.assert_allclose(latents[i : i + 1], ref, rtol=1e-5, atol=1e-5)


def _copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


@pytest.mark.parametrize("stage", ["teacher", "gan"])
def test_resume_after_interruption_is_exact(trained, recipe, tmp_path, stage):
    """Stopped after step 2 of 4 and resumed = 4 steps straight, bit for bit."""
    run, _, _, _ = trained
    recipe = replace(
        recipe, **{stage: replace(getattr(recipe, stage), steps=4, checkpoint_every=100)}
    )
    straight_run, resumed_run = _copy_run(run, tmp_path / "a"), _copy_run(run, tmp_path / "b")
    straight = train_stage(stage, recipe, straight_run, CPU, restart=True)
    with pytest.raises(StageInterrupted, match="stopped at step 2/4"):
        train_stage(stage, recipe, resumed_run, CPU, restart=True, stop_after=2)
    assert (resumed_run / stage / "checkpoint.safetensors").is_file()
    other = replace(recipe, **{stage: replace(getattr(recipe, stage), lr=0.5)})
    with pytest.raises(MobileDiffError, match="--restart"):  # another recipe's checkpoint
        train_stage(stage, other, resumed_run, CPU)
    resumed = train_stage(stage, recipe, resumed_run, CPU)
    assert resumed["metrics"] == straight["metrics"]
    a = load_file(str(straight_run / stage / "model" / "unet" / "model.safetensors"))
    b = load_file(str(resumed_run / stage / "model" / "unet" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Finished: running it again skips it.
    assert train_stage(stage, recipe, resumed_run, CPU)["seconds"] == resumed["seconds"]


def test_stage_needs_its_upstream(recipe, tmp_path):
    with pytest.raises(MobileDiffError, match="needs stage vae first"):
        train_stage("teacher", recipe, tmp_path / "empty", CPU)


def test_ddp_and_amp_paths_run_on_cpu(trained, recipe, tmp_path):
    """The DDP path (a one-process Gloo group) computes what the plain path did."""
    run, _, _, _ = trained
    plain = json.loads((run / "teacher" / "done.json").read_text())
    with single_process_group(str(tmp_path / "rendezvous")):
        runtime = Runtime(torch.device("cpu"), ddp=True, progress=False)
        ddp = train_stage(
            "teacher", recipe, _copy_run(run, tmp_path / "ddp"), runtime, restart=True
        )
    assert ddp["metrics"]["loss"] == pytest.approx(plain["metrics"]["loss"], rel=1e-4)
    bf16 = Runtime(torch.device("cpu"), amp="bf16", progress=False)
    amp = train_stage("classifier", recipe, _copy_run(run, tmp_path / "amp"), bf16, restart=True)
    assert np.isfinite(amp["metrics"]["loss"])


# --------------------------------------------------------------------------- the commands


def test_train_commands_plug_into_a_parser_and_run(trained, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="mobilediff")
    add_train_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", "teacher", "--config", "tiny", "--ddp", "--amp", "bf16"])
    assert (args.stage, args.ddp, args.amp) == ("teacher", True, "bf16")

    assert (
        main(["train", "data", "--config", "tiny", "-n", "4", "-o", str(tmp_path / "d.png")]) == 0
    )
    assert (tmp_path / "d.png").is_file() and "background" in capsys.readouterr().out

    run, out, one, _ = trained
    code = main(
        [
            "train",
            "eval",
            "--config",
            "tiny",
            "--run-dir",
            str(run),
            "--student",
            str(out),
            "--onestep",
            str(one),
            "-o",
            str(tmp_path / "eval"),
        ]
    )
    assert code == 0 and "| distilled student |" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["rows"]["onestep"]

    assert main(["train", "all", "--config", "tiny", "--run-dir", str(run), "-o", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["train", "gan", "--config", "tiny", "--run-dir", str(tmp_path / "x")]) == 1
    assert "needs stage vae first" in capsys.readouterr().err


# --------------------------------------------------------------------------- checkpoints


def test_training_state_round_trips_without_pickle(tmp_path):
    """Optimizer state (int keys, tuple betas), RNG bytes and scalars come back as saved."""
    from mobilediff_export.training.state import load_state, save_state

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.8, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "step": 7,
        "elapsed": 1.5,
        "fingerprint": "abc",
        "stage": {"model": net.state_dict(), "optimizer": opt.state_dict(), "ema": None},
        "torch_rng": torch.get_rng_state(),
    }
    path = tmp_path / "checkpoint.safetensors"
    save_state(path, state)
    back = load_state(path)
    assert back["step"] == 7 and back["fingerprint"] == "abc" and back["stage"]["ema"] is None
    assert torch.equal(back["torch_rng"], state["torch_rng"])
    saved_opt = state["stage"]["optimizer"]
    assert back["stage"]["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.9)
    assert set(back["stage"]["optimizer"]["state"]) == set(saved_opt["state"]) == {0, 1}
    for k, v in saved_opt["state"][0].items():
        assert torch.equal(back["stage"]["optimizer"]["state"][0][k], v)
    fresh = torch.optim.AdamW(net.parameters(), lr=1e-3)
    fresh.load_state_dict(back["stage"]["optimizer"])  # what resume does

    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}")
    with pytest.raises(MobileDiffError, match="cannot read checkpoint"):
        load_state(path)
    with pytest.raises(TypeError, match="cannot store a set"):
        save_state(tmp_path / "x.safetensors", {"bad": {1, 2}})
