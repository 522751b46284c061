"""Native format round trip, diffusers folder import, and refusal of bad checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mobilediff_export.analysis import example_inputs
from mobilediff_export.checkpoints import build_modules, load_model, models_dir, save_native
from mobilediff_export.config import ModelConfig
from mobilediff_export.errors import CheckpointError, ConfigError, MobileDiffError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture
def native_dir(tiny, tmp_path):
    return save_native(tmp_path / "model", tiny.config, tiny.modules, tiny.tokenizer)


def test_native_round_trip_is_lossless(tiny, native_dir):
    again = load_model(native_dir)
    assert again.config == tiny.config
    for name, module in tiny.modules.items():
        ours, theirs = module.state_dict(), again.modules[name].state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), f"{name}.{key}"
        inputs = example_inputs(tiny.config, name)
        with torch.no_grad():
            assert torch.equal(module(*inputs), again.modules[name](*inputs))
    assert again.source_sha256 is not None and len(again.source_sha256) == 64


def test_random_weights_are_seeded():
    config = ModelConfig.from_json_file(models_dir() / "tiny.json")
    a, b = build_modules(config, seed=0), build_modules(config, seed=0)
    c = build_modules(config, seed=1)
    w = "conv_in.weight"
    assert torch.equal(a["unet"].state_dict()[w], b["unet"].state_dict()[w])
    assert not torch.equal(a["unet"].state_dict()[w], c["unet"].state_dict()[w])


def test_existing_output_needs_force(tiny, native_dir):
    with pytest.raises(MobileDiffError, match="--force"):
        save_native(native_dir, tiny.config, tiny.modules, tiny.tokenizer)
    save_native(native_dir, tiny.config, tiny.modules, tiny.tokenizer, force=True)
    assert load_model(native_dir).config == tiny.config


def test_failed_save_leaves_nothing(tiny, tmp_path):
    broken = dict(tiny.modules)
    broken["unet"] = None  # fails after the text encoder has been written
    with pytest.raises(AttributeError):
        save_native(tmp_path / "out", tiny.config, broken, tiny.tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_truncated_weights_are_refused(native_dir):
    path = native_dir / "unet" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(native_dir)


def test_garbage_weights_are_refused(native_dir):
    (native_dir / "vae_decoder" / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="vae_decoder"):
        load_model(native_dir)


def test_shape_mismatch_names_the_weight(native_dir):
    path = native_dir / "unet" / "model.safetensors"
    state = load_file(str(path))
    state["conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"conv_in\.weight has shape \(3, 3, 3, 3\)"):
        load_model(native_dir)


def test_missing_and_extra_weights(native_dir):
    path = native_dir / "text_encoder" / "model.safetensors"
    state = load_file(str(path))
    key = sorted(state)[0]
    del state[key]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=f"{key} is missing"):
        load_model(native_dir)
    state[key] = torch.zeros(1)
    state["surprise"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="unexpected weight surprise"):
        load_model(native_dir)


def test_unknown_component_config_key(native_dir):
    path = native_dir / "unet" / "config.json"
    data = json.loads(path.read_text())
    data["heads_per_level"] = [1, 2]
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"unknown config key unet\.heads_per_level"):
        load_model(native_dir)


def test_unsupported_format_version(native_dir):
    path = native_dir / "mobilediff.json"
    data = json.loads(path.read_text())
    data["format_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="format_version 99"):
        load_model(native_dir)


def test_missing_model(tmp_path):
    with pytest.raises(ConfigError, match="no model named 'nope'"):
        load_model("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_model(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a mobilediff model folder"):
        load_model(tmp_path / "empty")


def test_diffusers_folder_with_only_pickles_is_refused(sd_folder, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(sd_folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_model(folder)


def test_diffusers_folder_converts_to_native(sd_folder, tmp_path):
    imported = load_model(sd_folder)
    out = save_native(tmp_path / "native", imported.config, imported.modules, imported.tokenizer)
    again = load_model(out)
    assert again.config == imported.config
    latent, t, ctx = example_inputs(imported.config, "unet")
    latent = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(ctx.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(
            imported.modules["unet"](latent, t, ctx), again.modules["unet"](latent, t, ctx)
        )
