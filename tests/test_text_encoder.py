"""CLIPTextEncoder against transformers' CLIPTextModel, and the strict weight import."""

from __future__ import annotations

import pytest
import torch

from mobilediff_export.checkpoints.hf_transformers import (
    text_encoder_config_from_transformers,
    text_encoder_key_map,
    text_encoder_state_dict_from_transformers,
)
from mobilediff_export.config import TextEncoderConfig
from mobilediff_export.errors import CheckpointError, ConfigError
from mobilediff_export.models.text_encoder import CLIPTextEncoder

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4

#: Tiny CLIP text configs that differ in width, depth, heads, activation and length.
CONFIGS = {
    "quick_gelu-77": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu",
    ),
    "gelu-16": dict(
        hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        max_position_embeddings=16, hidden_act="gelu",
    ),
    "one-layer-eps": dict(
        hidden_size=64, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=33, hidden_act="quick_gelu", layer_norm_eps=1e-6,
    ),
}  # fmt: skip
VOCAB = 300


def text_config(**kwargs):
    return transformers.CLIPTextConfig(
        vocab_size=VOCAB, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=1, **kwargs
    )


def perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter, so unit LayerNorms and zero biases cannot hide a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return module.eval()


def prompt_ids(config: TextEncoderConfig, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """Token ids shaped like the tokenizer's: bos, words, eos, then eos padding."""
    generator = torch.Generator().manual_seed(seed)
    length = config.max_position_embeddings
    ids = torch.full((batch, length), VOCAB - 1, dtype=torch.int64)
    for row in range(batch):
        n = 1 + row * (length - 2) // max(1, batch - 1)
        n = min(n, length - 2)
        ids[row, 0] = VOCAB - 2
        ids[row, 1 : 1 + n] = torch.randint(0, VOCAB - 2, (n,), generator=generator)
    return ids


def import_hf(hf_model, hf_config_dict) -> CLIPTextEncoder:
    config = text_encoder_config_from_transformers(hf_config_dict)
    ours = CLIPTextEncoder(config).eval()
    ours.load_state_dict(text_encoder_state_dict_from_transformers(hf_model.state_dict(), config))
    return ours


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_transformers(name):
    torch.manual_seed(0)
    hf_config = text_config(**CONFIGS[name])
    hf = perturbed(transformers.CLIPTextModel(hf_config), seed=1)
    ours = import_hf(hf, hf_config.to_dict())
    assert ours.config.hidden_act == CONFIGS[name]["hidden_act"]
    ids = prompt_ids(ours.config)
    with torch.no_grad():
        expected = hf(ids).last_hidden_state
        got = ours(ids)
    assert (
        got.shape
        == expected.shape
        == (3, ours.config.max_position_embeddings, hf_config.hidden_size)
    )
    error = (got - expected).abs().max().item()
    assert error < TOLERANCE, f"{name}: max abs error {error:.3g}"


def test_matches_transformers_eager_attention():
    hf_config = text_config(**CONFIGS["gelu-16"])
    hf = perturbed(
        transformers.CLIPTextModel._from_config(hf_config, attn_implementation="eager"), seed=2
    )
    ours = import_hf(hf, hf_config.to_dict())
    ids = prompt_ids(ours.config, seed=3)
    with torch.no_grad():
        error = (ours(ids) - hf(ids).last_hidden_state).abs().max().item()
    assert error < TOLERANCE


def test_full_clip_model_checkpoint():
    """A CLIPModel config.json and state dict: the text tower is taken, the rest skipped."""
    clip_config = transformers.CLIPConfig(
        text_config=text_config(**CONFIGS["quick_gelu-77"]).to_dict(),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
            image_size=32, patch_size=16,
        ),
        projection_dim=16,
    )  # fmt: skip
    clip = perturbed(transformers.CLIPModel(clip_config), seed=4)
    state = clip.state_dict()
    assert any(k.startswith("vision_model.") for k in state) and "text_projection.weight" in state
    ours = import_hf(clip, clip_config.to_dict())
    ids = prompt_ids(ours.config, seed=5)
    with torch.no_grad():
        expected = clip.text_model(ids).last_hidden_state
        error = (ours(ids) - expected).abs().max().item()
    assert error < TOLERANCE


def legacy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers 4.x key names (every Hub checkpoint): ``text_model.`` before each key.

    transformers 5 dropped that level from ``CLIPTextModel`` and saves bare keys; it still
    loads the prefixed ones, and so must we.
    """
    return {f"text_model.{k}": v for k, v in state.items()}


def test_bare_and_prefixed_keys_and_ignored_tensors():
    hf_config = text_config(**CONFIGS["one-layer-eps"])
    hf = perturbed(transformers.CLIPTextModel(hf_config), seed=6)
    config = text_encoder_config_from_transformers(hf_config.to_dict())
    bare = dict(hf.state_dict())
    bare["embeddings.position_ids"] = torch.arange(33)[None]
    state = text_encoder_state_dict_from_transformers(bare, config)
    assert list(state) == list(text_encoder_key_map(config))
    prefixed = legacy(hf.state_dict())
    prefixed["text_model.embeddings.position_ids"] = torch.arange(33)[None]
    prefixed["text_projection.weight"] = torch.zeros(8, 64)
    state2 = text_encoder_state_dict_from_transformers(prefixed, config)
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_export_friendly():
    config = text_encoder_config_from_transformers(text_config(**CONFIGS["gelu-16"]).to_dict())
    model = CLIPTextEncoder(config).eval()
    # The buffers come from the config, not the checkpoint.
    assert set(model.state_dict()) == set(text_encoder_key_map(config))
    ids = prompt_ids(config)
    program = torch.export.export(model, (ids,))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("scaled_dot_product" in op for op in ops), ops
    assert any("softmax" in op for op in ops)
    assert torch.isfinite(model.half().causal_mask).all()  # survives float16 conversion


def test_shorter_input_uses_the_leading_positions():
    config = TextEncoderConfig(
        vocab_size=VOCAB, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32
    )
    model = perturbed(CLIPTextEncoder(config), seed=7)
    ids = prompt_ids(config)
    with torch.no_grad():
        full, short = model(ids), model(ids[:, :10])
    # Causal attention: the first 10 outputs cannot depend on what comes after them.
    assert torch.allclose(full[:, :10], short, atol=1e-6)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(1, 78, dtype=torch.int64))


# --- config import ----------------------------------------------------------------------


def test_missing_keys_take_transformers_defaults():
    ours = text_encoder_config_from_transformers({"model_type": "clip_text_model"})
    ref = transformers.CLIPTextConfig()
    assert ours == TextEncoderConfig(
        vocab_size=ref.vocab_size,
        hidden_size=ref.hidden_size,
        num_layers=ref.num_hidden_layers,
        num_heads=ref.num_attention_heads,
        intermediate_size=ref.intermediate_size,
        max_position_embeddings=ref.max_position_embeddings,
        hidden_act=ref.hidden_act,
        layer_norm_eps=ref.layer_norm_eps,
    )


def test_text_config_dict_overrides_text_config():
    cfg = {
        "model_type": "clip",
        "text_config": {"hidden_size": 64, "num_attention_heads": 4},
        "text_config_dict": {"hidden_size": 32, "num_attention_heads": 2},
    }
    ours = text_encoder_config_from_transformers(cfg)
    assert (ours.hidden_size, ours.num_heads) == (32, 2)


@pytest.mark.parametrize(
    ("cfg", "option"),
    [
        ({"hidden_act": "gelu_new"}, "hidden_act"),
        ({"hidden_act": "gelu_pytorch_tanh"}, "hidden_act"),
        ({"architectures": ["CLIPTextModelWithProjection"]}, "architectures"),
        ({"model_type": "clip_vision_model"}, "model_type"),
        ({"text_config": {"hidden_act": "relu"}}, "hidden_act"),
        ({"hidden_size": "768"}, "hidden_size"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "num_heads"),
    ],
)
def test_unsupported_config_names_the_option(cfg, option):
    with pytest.raises(ConfigError, match=option):
        text_encoder_config_from_transformers(cfg)


# --- strict weight import ---------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_state():
    hf_config = text_config(**CONFIGS["quick_gelu-77"])
    hf = transformers.CLIPTextModel(hf_config)
    return text_encoder_config_from_transformers(hf_config.to_dict()), legacy(hf.state_dict())


def test_missing_weight_is_named(hf_state):
    config, state = hf_state
    state = dict(state)
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointError, match=r"text_model\.encoder\.layers\.1\.mlp\.fc2\.bias"):
        text_encoder_state_dict_from_transformers(state, config)


def test_unexpected_weight_is_named(hf_state):
    config, state = hf_state
    state = dict(state)
    state["text_model.encoder.layers.2.mlp.fc1.weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match=r"unexpected .*layers\.2\.mlp\.fc1\.weight"):
        text_encoder_state_dict_from_transformers(state, config)


def test_checkpoint_deeper_than_config(hf_state):
    _, state = hf_state
    shallow = TextEncoderConfig(
        vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64
    )
    with pytest.raises(CheckpointError, match=r"layers\.1\."):
        text_encoder_state_dict_from_transformers(state, shallow)


def test_shape_mismatch_is_named(hf_state):
    config, state = hf_state
    state = dict(state)
    state["text_model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 31)
    with pytest.raises(CheckpointError, match=r"q_proj\.weight has shape \(32, 31\)"):
        text_encoder_state_dict_from_transformers(state, config)


def test_mixed_prefixes_are_rejected(hf_state):
    config, state = hf_state
    state = dict(state)
    state["final_layer_norm.weight"] = state["text_model.final_layer_norm.weight"]
    with pytest.raises(CheckpointError, match=r"weight final_layer_norm\.weight"):
        text_encoder_state_dict_from_transformers(state, config)
