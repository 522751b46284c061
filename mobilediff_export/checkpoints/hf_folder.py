"""Read a Hugging Face diffusers pipeline folder from local disk.

```
<folder>/
  model_index.json                                    (optional)
  unet/config.json, unet/diffusion_pytorch_model[.fp16].safetensors  (or sharded + index)
  vae/config.json, vae/diffusion_pytorch_model[.fp16].safetensors
  text_encoder/config.json, text_encoder/model[.fp16].safetensors
  tokenizer/vocab.json, tokenizer/merges.txt, tokenizer/special_tokens_map.json
  scheduler/scheduler_config.json
```
Only safetensors are read. A folder that has nothing but pickles (``.bin``, ``.ckpt``,
``.pt``) is refused with a message that says how to convert it: unpickling runs
arbitrary code, and checkpoints come from strangers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, PipelineConfig, TokenizerConfig, read_json
from ..errors import CheckpointError, ConfigError
from ..tokenizer import CLIPTokenizer
from .hf_diffusers import (
    unet_config_from_diffusers,
    unet_state_dict_from_diffusers,
    vae_decoder_config_from_diffusers,
    vae_decoder_state_dict_from_diffusers,
)
from .hf_transformers import (
    text_encoder_config_from_transformers,
    text_encoder_state_dict_from_transformers,
)
from .native import load_safetensors

PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
SCHEDULER_SAMPLERS = {
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "LCMScheduler": "onestep",
}


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def read_weights(folder: Path, stem: str) -> dict[str, torch.Tensor]:
    """The tensors of one component: ``stem.safetensors``, a sharded index, or an fp16 variant."""
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return load_safetensors(folder / name)
    for name in (f"{stem}.safetensors.index.json", f"{stem}.safetensors.index.fp16.json"):
        index_path = folder / name
        if index_path.is_file():
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index_path} has no weight_map")
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                shard_path = (folder / shard).resolve()
                if folder.resolve() not in shard_path.parents:
                    raise CheckpointError(f"{index_path} names a shard outside {folder}: {shard}")
                state.update(load_safetensors(shard_path))
            return state
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({pickles[0]}); mobilediff never unpickles "
            "checkpoints. Convert it to safetensors on a machine you trust (e.g. load it with "
            "diffusers and call save_pretrained(..., safe_serialization=True))"
        )
    raise CheckpointError(f"no {stem}.safetensors in {folder}")


def _component_config(folder: Path) -> dict[str, Any]:
    return read_json(folder / "config.json")


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """The tokenizer with the special ids its folder names (SD-1.5 pads with eos, SD-2 '!')."""
    vocab = CLIPTokenizer.from_dir(folder).vocab
    special: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            special.update(read_json(folder / name))

    def token_id(key: str, default: str) -> int:
        token = special.get(key, default)
        if isinstance(token, dict):
            token = token.get("content", default)
        if token not in vocab:
            raise ConfigError(f"{folder}: {key} {token!r} is not in the vocabulary")
        return int(vocab[token])

    max_length = special.get("model_max_length", 77)
    if not isinstance(max_length, int) or max_length > 10_000:
        max_length = 77  # transformers writes a huge sentinel when the length is unset
    config = TokenizerConfig(
        max_length=max_length,
        bos_token_id=token_id("bos_token", "<|startoftext|>"),
        eos_token_id=token_id("eos_token", "<|endoftext|>"),
        pad_token_id=token_id("pad_token", "<|endoftext|>"),
    )
    return CLIPTokenizer.from_dir(folder, config)


def _pipeline_config(folder: Path, image_size: int, scaling_factor: float) -> PipelineConfig:
    path = folder / "scheduler" / "scheduler_config.json"
    sched = read_json(path) if path.is_file() else {}
    kwargs: dict[str, Any] = {"image_size": image_size, "vae_scaling_factor": scaling_factor}
    for key in (
        "num_train_timesteps",
        "beta_start",
        "beta_end",
        "steps_offset",
        "set_alpha_to_one",
    ):
        if key in sched:
            kwargs[key] = sched[key]
    for key in ("beta_schedule", "prediction_type", "timestep_spacing"):
        if key in sched:
            kwargs[key] = sched[key]
    if sched.get("_class_name") in SCHEDULER_SAMPLERS:
        kwargs["sampler"] = SCHEDULER_SAMPLERS[sched["_class_name"]]
    try:
        return PipelineConfig(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_diffusers_folder(
    path: Path,
) -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]], CLIPTokenizer]:
    """Config, weights (already keyed by our module names) and tokenizer."""
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (path / part).is_dir():
            raise CheckpointError(f"{path} is not a complete diffusers pipeline: no {part}/ folder")
    unet_cfg = unet_config_from_diffusers(_component_config(path / "unet"))
    vae_raw = _component_config(path / "vae")
    for key in ("shift_factor", "latents_mean", "latents_std"):
        if vae_raw.get(key) is not None:
            raise ConfigError(
                f"{path / 'vae' / 'config.json'}: {key} is set; mobilediff pipelines scale "
                "latents by vae_scaling_factor only (SD-1.x/2.x style VAEs)"
            )
    vae_cfg = vae_decoder_config_from_diffusers(vae_raw)
    text_raw = _component_config(path / "text_encoder")
    text_cfg = text_encoder_config_from_transformers(text_raw)
    image_size = unet_cfg.sample_size * vae_cfg.upscale_factor
    tokenizer = _tokenizer(path / "tokenizer")
    config = ModelConfig(
        name=path.name,
        description=f"imported from the diffusers folder {path.name}",
        text_encoder=text_cfg,
        unet=unet_cfg,
        vae_decoder=vae_cfg,
        tokenizer=tokenizer.config,
        pipeline=_pipeline_config(path, image_size, float(vae_raw.get("scaling_factor", 0.18215))),
    )
    states = {
        "unet": unet_state_dict_from_diffusers(
            read_weights(path / "unet", "diffusion_pytorch_model"), unet_cfg
        ),
        "vae_decoder": vae_decoder_state_dict_from_diffusers(
            read_weights(path / "vae", "diffusion_pytorch_model"), vae_cfg
        ),
        "text_encoder": text_encoder_state_dict_from_transformers(
            read_weights(path / "text_encoder", "model"), text_cfg
        ),
    }
    return config, states, tokenizer
