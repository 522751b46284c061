"""Plain-data configs for the three networks, the tokenizer and the sampling pipeline.

Every config is a frozen dataclass with a strict JSON round trip: ``to_dict`` gives plain
JSON types, ``from_dict`` rejects unknown keys and wrong types with a ``ConfigError`` that
names the offending field. Per-level tuples of the UNet are always in *down* order:
index 0 is the highest resolution (64x64 latents for a 512x512 image), the last index the
lowest; the up path mirrors level ``i`` with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_levels(owner: str, n: int, **tuples: tuple) -> None:
    for name, value in tuples.items():
        if len(value) != n:
            raise ConfigError(
                f"{owner}.{name} has {len(value)} entries but the model has {n} levels"
            )


@dataclass(frozen=True)
class TextEncoderConfig:
    """CLIP text transformer (the text tower only; its last hidden state is the context)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 77
    hidden_act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_choice("text_encoder.hidden_act", self.hidden_act, ("quick_gelu", "gelu"))
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"text_encoder.hidden_size {self.hidden_size} is not divisible by "
                f"num_heads {self.num_heads}"
            )


@dataclass(frozen=True)
class UNetConfig:
    """A latent-diffusion UNet general enough for MobileDiffusion and SD-1.5-family models.

    ``layers_per_block[i]`` residual blocks go down at level i and
    ``up_layers_per_block[i]`` come back up (default: one more, as in Stable Diffusion,
    so the up path can consume the extra skip connection of the downsampler).
    ``transformer_depth[i] == 0`` means no attention at that level at all;
    ``self_attention[i] == False`` keeps the cross-attention but drops self-attention.
    Level i's down path leaves ``layers_per_block[i] + 1`` skip connections (its input,
    then each block's output); its up path consumes them most recent first, one per
    residual block, leaving the earliest unused if it has fewer blocks. The mid block
    uses the last level's ``num_heads`` and ``separable_conv``.
    """

    sample_size: int = 64
    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    up_layers_per_block: tuple[int, ...] | None = None
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    up_transformer_depth: tuple[int, ...] | None = None
    self_attention: tuple[bool, ...] = (True, True, True, True)
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    mid_block: bool = True
    mid_transformer_depth: int = 1
    mid_self_attention: bool = True
    cross_attention_dim: int = 768
    use_linear_projection: bool = False
    shared_kv: bool = False
    ff_mult: int = 4
    ff_activation: Literal["gelu", "swish"] = "gelu"
    attention_activation: Literal["softmax", "relu"] = "softmax"
    separable_conv: tuple[bool, ...] = (False, False, False, False)
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int | None = None

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        if n < 2:
            raise ConfigError("unet.block_out_channels needs at least 2 levels")
        _check_levels(
            "unet",
            n,
            layers_per_block=self.layers_per_block,
            transformer_depth=self.transformer_depth,
            self_attention=self.self_attention,
            num_heads=self.num_heads,
            separable_conv=self.separable_conv,
        )
        if self.up_layers_per_block is not None:
            _check_levels("unet", n, up_layers_per_block=self.up_layers_per_block)
        if self.up_transformer_depth is not None:
            _check_levels("unet", n, up_transformer_depth=self.up_transformer_depth)
        if self.norm_num_groups < 1 or min(self.num_heads) < 1:
            raise ConfigError("unet.norm_num_groups and unet.num_heads must be at least 1")
        if min(self.layers_per_block) < 1 or min(self.resolved_up_layers_per_block) < 1:
            raise ConfigError(
                "unet.layers_per_block and up_layers_per_block need at least one residual "
                "block per level"
            )
        if min(self.transformer_depth) < 0 or min(self.resolved_up_transformer_depth) < 0:
            raise ConfigError("unet transformer depths cannot be negative")
        if self.mid_transformer_depth < 0:
            raise ConfigError("unet.mid_transformer_depth cannot be negative")
        _check_choice("unet.ff_activation", self.ff_activation, ("gelu", "swish"))
        _check_choice("unet.attention_activation", self.attention_activation, ("softmax", "relu"))
        for ch, heads in zip(self.block_out_channels, self.num_heads, strict=True):
            if ch % heads:
                raise ConfigError(f"unet: {ch} channels are not divisible by {heads} heads")
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ConfigError(
                    f"unet: {ch} channels are not divisible by "
                    f"norm_num_groups {self.norm_num_groups}"
                )

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def resolved_up_layers_per_block(self) -> tuple[int, ...]:
        if self.up_layers_per_block is not None:
            return self.up_layers_per_block
        return tuple(n + 1 for n in self.layers_per_block)

    @property
    def resolved_up_transformer_depth(self) -> tuple[int, ...]:
        if self.up_transformer_depth is not None:
            return self.up_transformer_depth
        return self.transformer_depth

    @property
    def resolved_time_embed_dim(self) -> int:
        return self.time_embed_dim or 4 * self.block_out_channels[0]


@dataclass(frozen=True)
class VAEDecoderConfig:
    """The decoder half of an AutoencoderKL, with knobs to make it light.

    ``block_out_channels`` is in the encoder's order, as diffusers writes it; the decoder
    walks it backwards, from the latent (lowest resolution, widest) to the image.
    Each decoder level has ``layers_per_block + 1`` residual blocks.
    """

    latent_channels: int = 4
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_attention: bool = True
    use_post_quant_conv: bool = True
    separable_conv: bool = False

    def __post_init__(self) -> None:
        if not self.block_out_channels or self.layers_per_block < 0 or self.norm_num_groups < 1:
            raise ConfigError(
                "vae_decoder needs at least one level, layers_per_block >= 0 and "
                "norm_num_groups >= 1"
            )
        for ch in self.block_out_channels:
            if ch % self.norm_num_groups:
                raise ConfigError(
                    f"vae_decoder: {ch} channels are not divisible by "
                    f"norm_num_groups {self.norm_num_groups}"
                )

    @property
    def upscale_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass(frozen=True)
class TokenizerConfig:
    """What the CLIP tokenizer needs besides its vocabulary files."""

    max_length: int = 77
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 49407

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError("tokenizer.max_length must leave room for bos and eos (>= 2)")
        if min(self.bos_token_id, self.eos_token_id, self.pad_token_id) < 0:
            raise ConfigError("tokenizer token ids cannot be negative")


@dataclass(frozen=True)
class PipelineConfig:
    """How a prompt becomes an image: noise schedule, sampler, guidance, VAE scaling."""

    image_size: int = 512
    vae_scaling_factor: float = 0.18215
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    sampler: Literal["ddim", "euler", "onestep"] = "ddim"
    num_inference_steps: int = 8
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    guidance_scale: float = 7.5

    def __post_init__(self) -> None:
        _check_choice("pipeline.prediction_type", self.prediction_type, ("epsilon", "v_prediction"))
        _check_choice("pipeline.beta_schedule", self.beta_schedule, ("scaled_linear", "linear"))
        _check_choice("pipeline.sampler", self.sampler, ("ddim", "euler", "onestep"))
        _check_choice(
            "pipeline.timestep_spacing",
            self.timestep_spacing,
            ("leading", "trailing", "linspace"),
        )
        if self.num_inference_steps < 1:
            raise ConfigError("pipeline.num_inference_steps must be at least 1")
        if self.num_train_timesteps < 1:
            raise ConfigError("pipeline.num_train_timesteps must be at least 1")
        if not 0.0 < self.beta_start < self.beta_end < 1.0:
            raise ConfigError(
                f"pipeline needs 0 < beta_start < beta_end < 1; got {self.beta_start}, "
                f"{self.beta_end}"
            )

    @property
    def uses_guidance(self) -> bool:
        """Classifier-free guidance doubles the batch; distilled models run without it."""
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class ModelConfig:
    """A whole text-to-image model: the three networks, the tokenizer and the pipeline."""

    name: str = "unnamed"
    description: str = ""
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae_decoder: VAEDecoderConfig = field(default_factory=VAEDecoderConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        latent = self.pipeline.image_size // self.vae_decoder.upscale_factor
        if latent * self.vae_decoder.upscale_factor != self.pipeline.image_size:
            raise ConfigError(
                f"pipeline.image_size {self.pipeline.image_size} is not a multiple of the "
                f"VAE decoder's upscale factor {self.vae_decoder.upscale_factor}"
            )
        if self.unet.cross_attention_dim != self.text_encoder.hidden_size:
            raise ConfigError(
                f"unet.cross_attention_dim {self.unet.cross_attention_dim} does not match "
                f"text_encoder.hidden_size {self.text_encoder.hidden_size}"
            )
        if self.tokenizer.max_length > self.text_encoder.max_position_embeddings:
            raise ConfigError(
                f"tokenizer.max_length {self.tokenizer.max_length} exceeds the text encoder's "
                f"max_position_embeddings {self.text_encoder.max_position_embeddings}"
            )
        special = (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id,
                   self.tokenizer.pad_token_id)  # fmt: skip
        if max(special) >= self.text_encoder.vocab_size:
            raise ConfigError(
                f"tokenizer ids {special} do not fit text_encoder.vocab_size "
                f"{self.text_encoder.vocab_size}"
            )
        if self.unet.in_channels != self.vae_decoder.latent_channels:
            raise ConfigError(
                f"unet.in_channels {self.unet.in_channels} does not match "
                f"vae_decoder.latent_channels {self.vae_decoder.latent_channels}"
            )

    @property
    def latent_size(self) -> int:
        return self.pipeline.image_size // self.vae_decoder.upscale_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.vae_decoder.latent_channels, self.latent_size, self.latent_size)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return from_dict(cls, data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        return from_dict(cls, read_json(path))


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object from disk, turning every failure into a one-line ConfigError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON types (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = dict(value)
        out[f.name] = value
    return out


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from JSON data, strictly: unknown keys and bad types fail."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a JSON object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ConfigError(f"{key} must be an object of strings")
        return dict(value)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value
