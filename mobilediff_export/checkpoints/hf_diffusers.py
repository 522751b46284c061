"""Import of Hugging Face diffusers checkpoints: UNet2DConditionModel and AutoencoderKL.

Two halves, both working on plain Python objects (reading files is the caller's job):

* configs: a diffusers ``config.json`` dict becomes our ``UNetConfig`` /
  ``VAEDecoderConfig``. Every diffusers option is either used, known to make no
  difference to the network we build, or accepted only at the value our modules can
  express; anything else (and any option we do not know) is a ``ConfigError`` that names
  the option and its value, never a silently different model.
* weights: a diffusers state dict becomes ours through an explicit table of
  ``(diffusers module prefix, our module prefix)`` pairs built from the config, block by
  block, so the correspondence can be read (and grepped) rather than reverse-engineered
  from string rewriting. The conversion is strict: a missing key, a key with nowhere to
  go and a shape that does not fit are each a ``CheckpointError``.

The UNet's key correspondence, per block (``i``: level in down order, ``j``: up level,
innermost first, as diffusers numbers ``up_blocks``)::

    conv_in, time_embedding.linear_{1,2}              same names
    down_blocks.i.resnets.k                       ->  down_levels.i.resnets.k
    down_blocks.i.attentions.k                    ->  down_levels.i.attentions.k
      .transformer_blocks.b.attn{1,2}.to_out.0    ->    .transformer_blocks.b.attn{1,2}.to_out
      .transformer_blocks.b.ff.net.0.proj         ->    .transformer_blocks.b.ff.proj
      .transformer_blocks.b.ff.net.2              ->    .transformer_blocks.b.ff.out
    down_blocks.i.downsamplers.0.conv             ->  down_levels.i.downsample.conv
    mid_block.resnets.{0,1}, mid_block.attentions.0  ->  mid.resnets.{0,1}, mid.attention
    up_blocks.j.{resnets,attentions}.k            ->  up_levels.j.{resnets,attentions}.k
    up_blocks.j.upsamplers.0.conv                 ->  up_levels.j.upsample.conv
    conv_norm_out, conv_out                       ->  norm_out, conv_out
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..config import UNetConfig, VAEDecoderConfig, from_dict
from ..errors import CheckpointError, ConfigError
from ..models.unet import UNet
from ..models.vae_decoder import VAEDecoder

# --- config: UNet2DConditionModel -------------------------------------------------------

# diffusers' own defaults, for options a config.json leaves out.
_UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 4,
    "out_channels": 4,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1280,
    "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None,
    "attention_head_dim": 8,
    "num_attention_heads": None,
    "use_linear_projection": False,
    "time_embedding_dim": None,
}

# Options we accept only at the values listed: the others change the network in ways our
# modules cannot express.
_UNET_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "act_fn": ("silu", "swish"),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1.0,),
    "dual_cross_attention": (False,),
    "class_embed_type": (None,),
    "num_class_embeds": (None,),
    "class_embeddings_concat": (False,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "resnet_time_scale_shift": ("default",),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
}

# Options that make no difference to the network we build: training-only, numerics we do
# not emulate in fp32, or inputs of blocks / embeddings that _UNET_FIXED already rules out.
_UNET_IGNORED = frozenset(
    {
        "dropout",
        "upcast_attention",
        "resnet_skip_time_act",
        "resnet_out_scale_factor",
        "addition_time_embed_dim",
        "addition_embed_type_num_heads",
        "projection_class_embeddings_input_dim",
    }
)

_CROSS_ATTN_DOWN, _PLAIN_DOWN = "CrossAttnDownBlock2D", "DownBlock2D"
_CROSS_ATTN_UP, _PLAIN_UP = "CrossAttnUpBlock2D", "UpBlock2D"


def unet_config_from_diffusers(cfg: Mapping[str, Any]) -> UNetConfig:
    """Our ``UNetConfig`` for a diffusers ``UNet2DConditionModel`` config.json dict.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) are metadata;
    a ``_class_name`` other than ``UNet2DConditionModel`` is refused.
    """
    opts = _with_defaults("unet", cfg, "UNet2DConditionModel", _UNET_DEFAULTS)
    _check_options("unet", opts, _UNET_DEFAULTS, _UNET_FIXED, _UNET_IGNORED)

    channels = opts["block_out_channels"]
    if not isinstance(channels, list | tuple) or not channels:
        raise ConfigError(f"diffusers unet option block_out_channels={channels!r} is not a list")
    n = len(channels)
    down_types = [_strip_unetres(t) for t in _as_list("down_block_types", opts, n)]
    up_types = [_strip_unetres(t) for t in _as_list("up_block_types", opts, n)]
    for name, types, allowed in (
        ("down_block_types", down_types, (_CROSS_ATTN_DOWN, _PLAIN_DOWN)),
        ("up_block_types", up_types, (_CROSS_ATTN_UP, _PLAIN_UP)),
    ):
        for t in types:
            if t not in allowed:
                raise ConfigError(
                    f"diffusers unet option {name} contains {t!r}; supported: {', '.join(allowed)}"
                )
    for i in range(n):
        j = n - 1 - i  # the up block that mirrors down level i
        if (down_types[i] == _CROSS_ATTN_DOWN) != (up_types[j] == _CROSS_ATTN_UP):
            raise ConfigError(
                f"diffusers unet option up_block_types[{j}]={up_types[j]!r} does not mirror "
                f"down_block_types[{i}]={down_types[i]!r}; attention must be on both or neither"
            )

    only_cross = _per_level("only_cross_attention", opts["only_cross_attention"], n)
    if any(only_cross):
        raise ConfigError(
            f"diffusers unet option only_cross_attention={opts['only_cross_attention']!r} is "
            "not supported (it turns self-attention into a second cross-attention)"
        )

    layers = _per_level("layers_per_block", opts["layers_per_block"], n)
    tlpb = _per_level("transformer_layers_per_block", opts["transformer_layers_per_block"], n)
    reverse = opts["reverse_transformer_layers_per_block"]
    if reverse is not None:
        reverse = _as_list("reverse_transformer_layers_per_block", opts, n)  # up order

    down_depth = [
        _level_depth(f"transformer_layers_per_block[{i}]", tlpb[i])
        if down_types[i] == _CROSS_ATTN_DOWN
        else 0
        for i in range(n)
    ]
    up_depth = [0] * n  # in down order, like every per-level tuple of UNetConfig
    for j in range(n):
        i = n - 1 - j
        if up_types[j] == _CROSS_ATTN_UP:
            if reverse is None:
                up_depth[i] = _level_depth(f"transformer_layers_per_block[{i}]", tlpb[i])
            else:
                name = f"reverse_transformer_layers_per_block[{j}]"
                up_depth[i] = _level_depth(name, reverse[j])

    mid_type = opts["mid_block_type"]
    if mid_type == "UNetMidBlock2DCrossAttn":
        last = tlpb[-1]
        mid_depth = _level_depth(
            f"transformer_layers_per_block[{n - 1}] (mid block)",
            last[0] if isinstance(last, list | tuple) else last,
        )
    elif mid_type is None:
        mid_depth = 0
    elif mid_type == "UNetMidBlock2D":
        raise ConfigError(
            "diffusers unet option mid_block_type='UNetMidBlock2D' is not supported: in "
            "UNet2DConditionModel it is a single resnet, which UNetConfig cannot express"
        )
    else:
        raise ConfigError(
            f"diffusers unet option mid_block_type={mid_type!r} is not supported; "
            "supported: UNetMidBlock2DCrossAttn, null"
        )

    # diffusers' naming quirk: without num_attention_heads, attention_head_dim is the
    # number of heads (https://github.com/huggingface/diffusers/issues/2011).
    heads_key = (
        "num_attention_heads" if opts["num_attention_heads"] is not None else "attention_head_dim"
    )
    heads = _per_level(heads_key, opts[heads_key], n)
    for i, h in enumerate(heads):
        has_attention = down_depth[i] or up_depth[i] or (i == n - 1 and mid_depth)
        valid = isinstance(h, int) and not isinstance(h, bool) and h >= 1
        if not has_attention and (not valid or channels[i] % h):
            heads[i] = 1  # unused at this level; keep UNetConfig's divisibility check happy
        elif not valid:
            raise ConfigError(f"diffusers unet option {heads_key}={opts[heads_key]!r} is not valid")

    cross_dims = set(_per_level("cross_attention_dim", opts["cross_attention_dim"], n))
    if len(cross_dims) != 1:
        raise ConfigError(
            f"diffusers unet option cross_attention_dim={opts['cross_attention_dim']!r}: "
            "one context width for all levels is supported"
        )

    if opts["norm_num_groups"] is None:
        raise ConfigError(
            "diffusers unet option norm_num_groups=None (no output norm) is not supported"
        )

    data: dict[str, Any] = {
        "in_channels": opts["in_channels"],
        "out_channels": opts["out_channels"],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "transformer_depth": down_depth,
        "self_attention": [True] * n,
        "num_heads": heads,
        "mid_block": mid_type is not None,
        "mid_transformer_depth": mid_depth,
        "mid_self_attention": True,
        "cross_attention_dim": cross_dims.pop(),
        "use_linear_projection": opts["use_linear_projection"],
        "separable_conv": [False] * n,
        "norm_num_groups": opts["norm_num_groups"],
        "norm_eps": opts["norm_eps"],
        "flip_sin_to_cos": opts["flip_sin_to_cos"],
        "freq_shift": opts["freq_shift"],
        "time_embed_dim": opts["time_embedding_dim"],
    }
    if up_depth != down_depth:
        data["up_transformer_depth"] = up_depth
    sample_size = _square_sample_size(opts["sample_size"])
    if sample_size is not None:
        data["sample_size"] = sample_size
    return from_dict(UNetConfig, data, "unet")


def _level_depth(name: str, value: Any) -> int:
    """The transformer depth of one attention level; a per-layer list must be uniform."""
    depths = list(value) if isinstance(value, list | tuple) else [value]
    if not depths or len(set(depths)) != 1:
        raise ConfigError(
            f"diffusers unet option {name}={value!r}: different transformer depths within "
            "one level are not supported"
        )
    depth = depths[0]
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(
            f"diffusers unet option {name}={value!r}: a cross-attention block needs at least "
            "one transformer layer"
        )
    return depth


def _strip_unetres(block_type: Any) -> Any:
    # diffusers' get_down_block / get_up_block accept a "UNetRes" prefix and drop it.
    if isinstance(block_type, str) and block_type.startswith("UNetRes"):
        return block_type[len("UNetRes") :]
    return block_type


def _square_sample_size(value: Any) -> int | None:
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ConfigError(
                f"diffusers option sample_size={value!r}: only square sizes are supported"
            )
        return value[0]
    return value


# --- config: AutoencoderKL --------------------------------------------------------------

_VAE_DEFAULTS: dict[str, Any] = {
    "out_channels": 3,
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}

_VAE_FIXED: dict[str, tuple[Any, ...]] = {
    "act_fn": ("silu", "swish"),
}

# The encoder's options, and the latent scaling the pipeline (not the decoder) applies.
_VAE_IGNORED = frozenset(
    {
        "in_channels",
        "down_block_types",
        "use_quant_conv",
        "sample_size",
        "force_upcast",
        "scaling_factor",
        "shift_factor",
        "latents_mean",
        "latents_std",
    }
)


def vae_decoder_config_from_diffusers(cfg: Mapping[str, Any]) -> VAEDecoderConfig:
    """Our ``VAEDecoderConfig`` for a diffusers ``AutoencoderKL`` config.json dict.

    The encoder's options and the latent scaling (``scaling_factor``, ``shift_factor``,
    ``latents_mean`` / ``latents_std``) are not the decoder's business and are ignored
    here; the pipeline config takes them.
    """
    opts = _with_defaults("vae", cfg, "AutoencoderKL", _VAE_DEFAULTS)
    _check_options("vae", opts, _VAE_DEFAULTS, _VAE_FIXED, _VAE_IGNORED)
    n = len(opts["block_out_channels"])
    for t in _as_list("up_block_types", opts, n):
        if t != "UpDecoderBlock2D":
            raise ConfigError(
                f"diffusers vae option up_block_types contains {t!r}; supported: UpDecoderBlock2D"
            )
    data = {
        "latent_channels": opts["latent_channels"],
        "out_channels": opts["out_channels"],
        "block_out_channels": opts["block_out_channels"],
        "layers_per_block": opts["layers_per_block"],
        "norm_num_groups": opts["norm_num_groups"],
        "mid_attention": opts["mid_block_add_attention"],
        "use_post_quant_conv": opts["use_post_quant_conv"],
        "separable_conv": False,
    }
    return from_dict(VAEDecoderConfig, data, "vae_decoder")


# --- config helpers ---------------------------------------------------------------------


def _with_defaults(
    what: str, cfg: Mapping[str, Any], class_name: str, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The config's options (metadata keys dropped) over diffusers' defaults."""
    found = cfg.get("_class_name", class_name)
    if found != class_name:
        raise ConfigError(
            f"diffusers {what} config is for _class_name={found!r}; expected {class_name}"
        )
    return {**defaults, **{k: v for k, v in cfg.items() if not k.startswith("_")}}


def _check_options(
    what: str,
    opts: Mapping[str, Any],
    used: Iterable[str],
    fixed: Mapping[str, tuple[Any, ...]],
    ignored: Iterable[str],
) -> None:
    known = set(used) | set(fixed) | set(ignored)
    for key, value in opts.items():
        if key not in known:
            raise ConfigError(f"diffusers {what} option {key}={value!r} is not known to mobilediff")
        if key in fixed and not any(_same(value, ok) for ok in fixed[key]):
            allowed = " or ".join(repr(v) for v in fixed[key])
            raise ConfigError(
                f"diffusers {what} option {key}={value!r} is not supported (only {allowed})"
            )


def _same(value: Any, ok: Any) -> bool:
    # 1 == True in Python; keep booleans and numbers apart.
    numbers = (int, float)
    if type(value) in numbers and type(ok) in numbers:
        return value == ok
    return type(value) is type(ok) and value == ok


def _per_level(name: str, value: Any, n: int) -> list[Any]:
    """A per-level option: a list (checked against the level count) or one value for all."""
    if isinstance(value, list | tuple):
        if len(value) != n:
            raise ConfigError(
                f"diffusers option {name}={list(value)!r} has {len(value)} entries "
                f"but the model has {n} levels"
            )
        return list(value)
    return [value] * n


def _as_list(name: str, opts: Mapping[str, Any], n: int) -> list[Any]:
    value = opts[name]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"diffusers option {name} must be a list, got {value!r}")
    return _per_level(name, value, n)


# --- weights: the key tables ------------------------------------------------------------


class KeyPair(NamedTuple):
    """One module of the checkpoint and the module of ours that takes its tensors.

    ``pointwise``: a 1x1 projection whose weight may come as ``[out, in]`` (linear) or
    ``[out, in, 1, 1]`` (conv); it is reshaped to the layout our module has.
    """

    diffusers: str
    ours: str
    pointwise: bool = False


def _resnet_pairs(src: str, dst: str) -> list[KeyPair]:
    # conv_shortcut (channels change) and time_emb_proj (UNet only) exist only in some
    # blocks; a pair for a module a block lacks matches nothing in either state dict.
    names = ("norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut")
    return [KeyPair(f"{src}.{name}", f"{dst}.{name}") for name in names]


def _attention_pairs(src: str, dst: str) -> list[KeyPair]:
    return [
        KeyPair(f"{src}.to_q", f"{dst}.to_q"),
        KeyPair(f"{src}.to_k", f"{dst}.to_k"),
        KeyPair(f"{src}.to_v", f"{dst}.to_v"),
        KeyPair(f"{src}.to_out.0", f"{dst}.to_out"),
    ]


def _transformer_pairs(src: str, dst: str, depth: int) -> list[KeyPair]:
    pairs = [
        KeyPair(f"{src}.norm", f"{dst}.norm"),
        KeyPair(f"{src}.proj_in", f"{dst}.proj_in", pointwise=True),
        KeyPair(f"{src}.proj_out", f"{dst}.proj_out", pointwise=True),
    ]
    for b in range(depth):
        s, d = f"{src}.transformer_blocks.{b}", f"{dst}.transformer_blocks.{b}"
        pairs += [
            KeyPair(f"{s}.norm1", f"{d}.norm1"),
            *_attention_pairs(f"{s}.attn1", f"{d}.attn1"),
        ]
        pairs += [
            KeyPair(f"{s}.norm2", f"{d}.norm2"),
            *_attention_pairs(f"{s}.attn2", f"{d}.attn2"),
        ]
        pairs += [
            KeyPair(f"{s}.norm3", f"{d}.norm3"),
            KeyPair(f"{s}.ff.net.0.proj", f"{d}.ff.proj"),
            KeyPair(f"{s}.ff.net.2", f"{d}.ff.out"),
        ]
    return pairs


def unet_key_pairs(config: UNetConfig) -> list[KeyPair]:
    """The module correspondence between a diffusers UNet2DConditionModel and our UNet."""
    n = config.num_levels
    pairs = [
        KeyPair("conv_in", "conv_in"),
        KeyPair("time_embedding.linear_1", "time_embedding.linear_1"),
        KeyPair("time_embedding.linear_2", "time_embedding.linear_2"),
    ]
    for i in range(n):
        src, dst = f"down_blocks.{i}", f"down_levels.{i}"
        for k in range(config.layers_per_block[i]):
            pairs += _resnet_pairs(f"{src}.resnets.{k}", f"{dst}.resnets.{k}")
            if config.transformer_depth[i]:
                pairs += _transformer_pairs(
                    f"{src}.attentions.{k}", f"{dst}.attentions.{k}", config.transformer_depth[i]
                )
        if i < n - 1:
            pairs.append(KeyPair(f"{src}.downsamplers.0.conv", f"{dst}.downsample.conv"))

    if config.mid_block:
        pairs += _resnet_pairs("mid_block.resnets.0", "mid.resnets.0")
        if config.mid_transformer_depth:
            pairs += _transformer_pairs(
                "mid_block.attentions.0", "mid.attention", config.mid_transformer_depth
            )
        pairs += _resnet_pairs("mid_block.resnets.1", "mid.resnets.1")

    for j in range(n):
        i = n - 1 - j  # the down level this up level mirrors
        src, dst = f"up_blocks.{j}", f"up_levels.{j}"
        depth = config.resolved_up_transformer_depth[i]
        for k in range(config.resolved_up_layers_per_block[i]):
            pairs += _resnet_pairs(f"{src}.resnets.{k}", f"{dst}.resnets.{k}")
            if depth:
                pairs += _transformer_pairs(f"{src}.attentions.{k}", f"{dst}.attentions.{k}", depth)
        if i > 0:
            pairs.append(KeyPair(f"{src}.upsamplers.0.conv", f"{dst}.upsample.conv"))

    pairs += [KeyPair("conv_norm_out", "norm_out"), KeyPair("conv_out", "conv_out")]
    return pairs


def vae_decoder_key_pairs(config: VAEDecoderConfig) -> list[KeyPair]:
    """The module correspondence between a diffusers AutoencoderKL and our VAEDecoder."""
    pairs = []
    if config.use_post_quant_conv:
        pairs.append(KeyPair("post_quant_conv", "post_quant_conv"))
    pairs.append(KeyPair("decoder.conv_in", "conv_in"))

    mid = "decoder.mid_block"
    pairs += _resnet_pairs(f"{mid}.resnets.0", "mid.resnets.0")
    if config.mid_attention:
        attn = f"{mid}.attentions.0"
        pairs += [
            KeyPair(f"{attn}.group_norm", "mid.attention.group_norm"),
            KeyPair(f"{attn}.to_q", "mid.attention.to_q", pointwise=True),
            KeyPair(f"{attn}.to_k", "mid.attention.to_k", pointwise=True),
            KeyPair(f"{attn}.to_v", "mid.attention.to_v", pointwise=True),
            KeyPair(f"{attn}.to_out.0", "mid.attention.to_out", pointwise=True),
            # The same tensors under the names of diffusers' old AttentionBlock, still
            # found in checkpoints saved before diffusers 0.14.
            KeyPair(f"{attn}.query", "mid.attention.to_q", pointwise=True),
            KeyPair(f"{attn}.key", "mid.attention.to_k", pointwise=True),
            KeyPair(f"{attn}.value", "mid.attention.to_v", pointwise=True),
            KeyPair(f"{attn}.proj_attn", "mid.attention.to_out", pointwise=True),
        ]
    pairs += _resnet_pairs(f"{mid}.resnets.1", "mid.resnets.1")

    n = len(config.block_out_channels)
    for j in range(n):
        src, dst = f"decoder.up_blocks.{j}", f"up_levels.{j}"
        for k in range(config.layers_per_block + 1):
            pairs += _resnet_pairs(f"{src}.resnets.{k}", f"{dst}.resnets.{k}")
        if j < n - 1:
            pairs.append(KeyPair(f"{src}.upsamplers.0.conv", f"{dst}.upsample.conv"))

    pairs += [
        KeyPair("decoder.conv_norm_out", "norm_out"),
        KeyPair("decoder.conv_out", "conv_out"),
    ]
    return pairs


# --- weights: conversion ----------------------------------------------------------------


def unet_state_dict_from_diffusers(
    state: Mapping[str, Tensor], config: UNetConfig
) -> dict[str, Tensor]:
    """Our UNet's state dict from a diffusers UNet2DConditionModel state dict.

    ``config`` is the one the checkpoint was made with (``unet_config_from_diffusers``);
    knobs diffusers has no weights for (separable convs, shared K/V) are refused.
    """
    if any(config.separable_conv):
        raise CheckpointError(
            "a diffusers UNet has plain 3x3 convolutions; it cannot load into a config "
            "with separable_conv (distill or fine-tune into it instead)"
        )
    if config.shared_kv:
        raise CheckpointError(
            "a diffusers UNet has separate key and value projections; it cannot load into "
            "a config with shared_kv"
        )
    expected = _expected_shapes(lambda: UNet(config))
    return _convert("diffusers UNet", state, unet_key_pairs(config), expected, ignore=())


def vae_decoder_state_dict_from_diffusers(
    state: Mapping[str, Tensor], config: VAEDecoderConfig
) -> dict[str, Tensor]:
    """Our VAEDecoder's state dict from a diffusers AutoencoderKL state dict.

    The encoder (``encoder.*``, ``quant_conv.*``) is skipped; everything else must map.
    """
    if config.separable_conv:
        raise CheckpointError(
            "a diffusers VAE has plain 3x3 convolutions; it cannot load into a config "
            "with separable_conv"
        )
    expected = _expected_shapes(lambda: VAEDecoder(config))
    return _convert(
        "diffusers VAE",
        state,
        vae_decoder_key_pairs(config),
        expected,
        ignore=("encoder.", "quant_conv."),
    )


def _expected_shapes(build: Callable[[], nn.Module]) -> dict[str, torch.Size]:
    """Every tensor our module has, with its shape, without allocating any memory."""
    with torch.device("meta"):
        module = build()
    return {key: value.shape for key, value in module.state_dict().items()}


def _convert(
    what: str,
    state: Mapping[str, Tensor],
    pairs: list[KeyPair],
    expected: Mapping[str, torch.Size],
    ignore: tuple[str, ...],
) -> dict[str, Tensor]:
    by_source = {pair.diffusers: pair for pair in pairs}
    source_name: dict[str, str] = {}  # our module prefix -> the diffusers name to report
    for pair in pairs:
        source_name.setdefault(pair.ours, pair.diffusers)

    converted: dict[str, Tensor] = {}
    came_from: dict[str, str] = {}
    unexpected: list[str] = []
    bad_shapes: list[str] = []
    for key in sorted(state):
        if key.startswith(ignore):
            continue
        prefix, _, param = key.rpartition(".")
        pair = by_source.get(prefix)
        ours = f"{pair.ours}.{param}" if pair is not None else None
        if pair is None or ours not in expected:
            unexpected.append(key)
            continue
        if ours in came_from:
            raise CheckpointError(
                f"{what} checkpoint holds {ours!r} twice: as {came_from[ours]} and as {key}"
            )
        tensor = state[key]
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"{what} checkpoint entry {key} is not a tensor")
        want = expected[ours]
        if pair.pointwise and _is_pointwise_relayout(tensor.shape, want):
            tensor = tensor.reshape(want)
        if tensor.shape != want:
            bad_shapes.append(
                f"{key} has shape {list(tensor.shape)} but the config needs {list(want)}"
            )
        converted[ours] = tensor
        came_from[ours] = key

    missing = [key for key in expected if key not in converted]
    if missing:
        prefix, _, param = missing[0].rpartition(".")
        name = f"{source_name.get(prefix, prefix)}.{param}"
        raise CheckpointError(
            f"{what} checkpoint is missing {name} (for our {missing[0]})" + _more(missing)
        )
    if unexpected:
        raise CheckpointError(
            f"{what} checkpoint has unexpected key {unexpected[0]}, which the config has no "
            "place for" + _more(unexpected)
        )
    if bad_shapes:
        raise CheckpointError(f"{what} checkpoint: {bad_shapes[0]}" + _more(bad_shapes))
    return {key: converted[key] for key in expected}


def _is_pointwise_relayout(have: torch.Size, want: torch.Size) -> bool:
    """``[out, in]`` vs ``[out, in, 1, 1]``: the same 1x1 projection in linear / conv layout."""
    shapes = sorted((tuple(have), tuple(want)), key=len)
    return len(shapes[0]) == 2 and shapes[1] == (*shapes[0], 1, 1)


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""
