"""Import a transformers ``CLIPTextModel`` (config.json + weights) into ``CLIPTextEncoder``.

The config is read leniently about bookkeeping keys (transformers writes dozens of
generic ones) and strictly about what changes the output: a value our encoder cannot
reproduce raises a ``ConfigError`` that names the option. Missing architecture keys take
transformers' ``CLIPTextConfig`` defaults, as transformers itself would.

The weights are renamed through one explicit table (``text_encoder_key_map``), not string
surgery, and strictly: a missing or unexpected tensor or a wrong shape is a
``CheckpointError`` naming the first offending key. Tensors that do not belong to the text
tower's last hidden state are skipped on purpose: the ``position_ids`` buffer, the
``text_projection`` head, and, in a full ``CLIPModel`` checkpoint, the vision tower.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..config import TextEncoderConfig
from ..errors import CheckpointError, ConfigError

#: transformers' CLIPTextConfig defaults for the keys that shape the network.
HF_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

#: transformers key -> our TextEncoderConfig field.
CONFIG_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_heads",
    "max_position_embeddings": "max_position_embeddings",
    "hidden_act": "hidden_act",
    "layer_norm_eps": "layer_norm_eps",
}

SUPPORTED_ACTIVATIONS = ("quick_gelu", "gelu")
TEXT_MODEL_TYPES = ("clip_text_model", "clip")
# Architectures whose output is a projection of the pooled state, which we do not compute.
PROJECTION_ARCHITECTURES = ("CLIPTextModelWithProjection",)

PREFIX = "text_model."
_IGNORED_KEYS = ("text_model.embeddings.position_ids", "embeddings.position_ids", "logit_scale")
_IGNORED_PREFIXES = ("text_projection.", "vision_model.", "visual_projection.")


def text_encoder_config_from_transformers(cfg: dict[str, Any]) -> TextEncoderConfig:
    """A ``TextEncoderConfig`` from a ``CLIPTextConfig`` or full ``CLIPConfig`` config.json dict."""
    if not isinstance(cfg, dict):
        raise ConfigError("a transformers config must be a JSON object")
    text, where = cfg, ""
    if "text_config" in cfg or "text_config_dict" in cfg or cfg.get("model_type") == "clip":
        # A full CLIPConfig. Old files carry ``text_config_dict``, which transformers lets
        # override ``text_config``: it rebuilds the whole text config from it.
        where = "text_config_dict." if cfg.get("text_config_dict") else "text_config."
        text = cfg.get("text_config_dict") or cfg.get("text_config") or {}
        if not isinstance(text, dict):
            raise ConfigError(f"{where[:-1]} must be a JSON object")
    else:
        for arch in cfg.get("architectures") or ():
            if arch in PROJECTION_ARCHITECTURES:
                raise ConfigError(
                    f"architectures {arch}: its output is the projected pooled embedding "
                    "(text_embeds), which the text encoder does not compute; it provides "
                    "only the last hidden state. Use a CLIPTextModel checkpoint"
                )
    model_type = text.get("model_type", "clip_text_model")
    if model_type not in TEXT_MODEL_TYPES:
        raise ConfigError(
            f"{where}model_type {model_type!r} is not a CLIP text model "
            f"(expected {' or '.join(TEXT_MODEL_TYPES)})"
        )
    act = text.get("hidden_act", HF_TEXT_DEFAULTS["hidden_act"])
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(
            f"{where}hidden_act {act!r} is not supported by the text encoder "
            f"(supported: {', '.join(SUPPORTED_ACTIVATIONS)})"
        )
    kwargs: dict[str, Any] = {}
    for hf_key, field in CONFIG_FIELDS.items():
        value = text.get(hf_key, HF_TEXT_DEFAULTS[hf_key])
        if hf_key == "layer_norm_eps":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}{hf_key} must be a number, got {value!r}")
            value = float(value)
        elif hf_key != "hidden_act" and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigError(f"{where}{hf_key} must be a positive integer, got {value!r}")
        kwargs[field] = value
    return TextEncoderConfig(**kwargs)


def text_encoder_key_map(config: TextEncoderConfig) -> dict[str, str]:
    """Our parameter name -> transformers' (without the ``text_model.`` prefix), in order."""
    table = {
        "token_embedding.weight": "embeddings.token_embedding.weight",
        "position_embedding.weight": "embeddings.position_embedding.weight",
    }
    layer_parts = {
        "norm1": "layer_norm1",
        "attn.q_proj": "self_attn.q_proj",
        "attn.k_proj": "self_attn.k_proj",
        "attn.v_proj": "self_attn.v_proj",
        "attn.out_proj": "self_attn.out_proj",
        "norm2": "layer_norm2",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(config.num_layers):
        for ours, theirs in layer_parts.items():
            for param in ("weight", "bias"):
                table[f"layers.{i}.{ours}.{param}"] = f"encoder.layers.{i}.{theirs}.{param}"
    table["final_norm.weight"] = "final_layer_norm.weight"
    table["final_norm.bias"] = "final_layer_norm.bias"
    return table


def expected_shapes(config: TextEncoderConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter of ``CLIPTextEncoder(config)``, by our name."""
    d, inner = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "token_embedding.weight": (config.vocab_size, d),
        "position_embedding.weight": (config.max_position_embeddings, d),
    }
    per_layer = {
        "norm1": ((d,), (d,)),
        "attn.q_proj": ((d, d), (d,)),
        "attn.k_proj": ((d, d), (d,)),
        "attn.v_proj": ((d, d), (d,)),
        "attn.out_proj": ((d, d), (d,)),
        "norm2": ((d,), (d,)),
        "mlp.fc1": ((inner, d), (inner,)),
        "mlp.fc2": ((d, inner), (d,)),
    }
    for i in range(config.num_layers):
        for name, (weight, bias) in per_layer.items():
            shapes[f"layers.{i}.{name}.weight"] = weight
            shapes[f"layers.{i}.{name}.bias"] = bias
    shapes["final_norm.weight"] = (d,)
    shapes["final_norm.bias"] = (d,)
    return shapes


def text_encoder_state_dict_from_transformers(
    state: dict[str, Tensor], config: TextEncoderConfig
) -> dict[str, Tensor]:
    """Rename a transformers CLIP text state dict to ``CLIPTextEncoder``'s names, strictly.

    Keys may carry the ``text_model.`` prefix (``CLIPTextModel``, ``CLIPModel``) or not
    (a bare ``CLIPTextTransformer``), but not both kinds at once.
    """
    kept = sorted(
        key for key in state if key not in _IGNORED_KEYS and not key.startswith(_IGNORED_PREFIXES)
    )
    prefixed = any(key.startswith(PREFIX) for key in kept)
    if prefixed:
        bare = [key for key in kept if not key.startswith(PREFIX)]
        if bare:
            raise CheckpointError(f"unexpected text encoder weight {bare[0]} (no {PREFIX} prefix)")
    prefix = PREFIX if prefixed else ""
    relevant = {key[len(prefix) :]: key for key in kept}  # transformers' name -> state key

    table = text_encoder_key_map(config)
    for theirs in table.values():
        if theirs not in relevant:
            raise CheckpointError(f"text encoder weight {prefix}{theirs} is missing")
    known = set(table.values())
    unexpected = sorted(relevant[key] for key in relevant if key not in known)
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(
            f"unexpected text encoder weight {unexpected[0]}{more}: it is not part of a "
            f"CLIP text model with {config.num_layers} layers"
        )

    shapes = expected_shapes(config)
    out: dict[str, Tensor] = {}
    for ours, theirs in table.items():
        tensor = state[relevant[theirs]]
        if tuple(tensor.shape) != shapes[ours]:
            raise CheckpointError(
                f"text encoder weight {relevant[theirs]} has shape {tuple(tensor.shape)} "
                f"but the config needs {shapes[ours]}"
            )
        out[ours] = tensor
    return out
