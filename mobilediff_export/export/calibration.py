"""Calibration inputs: what each component really sees when the pipeline makes images.

Full-integer quantization needs activation ranges, and the mixed recipe needs inputs to
measure each layer group's damage on; both are only as good as the inputs they see. The
best inputs are the real ones: ``collect_calibration`` runs the PyTorch pipeline on a few
prompts and records every call of the three networks::

    text_encoder   the token ids of each prompt (and of the negative prompt with guidance),
                   one batch-1 sample per row
    unet           (latent model input, timestep, context) at every sampler step
    vae_decoder    the scaled final latents of each prompt

The prompts should be what the model will be asked for: ranges calibrated on captions the
model never saw put the int8 steps where its activations are not. ``calibration_prompts``
takes them from a file (``mobilediff export --calibration-prompts FILE``), else from the
model folder's own ``calibration_prompts.txt``, else ``DEFAULT_PROMPTS``; one prompt a
line, ``#`` starts a comment. On the demo model, 32 of its own training captions instead
of the three default prompts raise the w8a8 image PSNR over 11 held-out captions from
11.9 to 18.7 dB at worst and from 21.1 to 23.7 dB at the median (tflite_quantize).

A converter that is given no calibration falls back to ``synthetic_calibration``:
tokenized prompts for the text encoder, noise at the sampler's own noise levels and
unit-variance contexts (what CLIP's final LayerNorm produces) for the UNet, and latents of
the decoder's input scale. It is recorded as such in the artifact, so a report never
passes a synthetic calibration off as a real one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError, MobileDiffError
from .artifacts import Component
from .signatures import component_io

DEFAULT_PROMPTS: tuple[str, ...] = (
    "a photo of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dusk",
    "a close-up photo of a red fox in the snow, detailed fur",
)


#: The file in a model folder that holds the model's own calibration prompts.
PROMPTS_FILE = "calibration_prompts.txt"


def read_prompts(path: str | Path) -> tuple[str, ...]:
    """Prompts from a UTF-8 text file: one a line; blank lines and ``#`` comments skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read the calibration prompts {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the calibration prompts {path} are not UTF-8 text") from None
    lines = (line.strip() for line in text.splitlines())
    prompts = tuple(line for line in lines if line and not line.startswith("#"))
    if not prompts:
        raise ConfigError(f"{path} holds no calibration prompts (one prompt a line)")
    return prompts


def calibration_prompts(
    source: str | Path | None = None, prompts_file: str | Path | None = None
) -> tuple[tuple[str, ...], str]:
    """The prompts to calibrate on and where they came from (see the module docstring).

    ``source`` is the model's folder (``LoadedModel.source``); ``prompts_file`` wins.
    """
    if prompts_file is not None:
        return read_prompts(prompts_file), str(prompts_file)
    if source is not None and not str(source).startswith("config:"):
        own = Path(source) / PROMPTS_FILE
        if own.is_file():
            return read_prompts(own), str(own)
    return DEFAULT_PROMPTS, "default"


@dataclass
class Calibration:
    """Recorded inputs per component, each sample a tuple in ``component_io`` order.

    Arrays are float32 except token ids (int32, what the LiteRT signature takes).
    """

    samples: dict[str, list[tuple[np.ndarray, ...]]] = field(default_factory=dict)
    source: Literal["pipeline", "synthetic"] = "pipeline"
    prompts: tuple[str, ...] = ()
    prompts_from: str = ""
    """Where the prompts came from: a file, or ``default`` (``calibration_prompts``)."""

    def for_component(self, component: Component, limit: int | None = None):
        samples = self.samples.get(component, [])
        return samples if limit is None else samples[:limit]

    def describe(self, component: Component) -> dict[str, object]:
        described: dict[str, object] = {
            "source": self.source,
            "samples": len(self.samples.get(component, [])),
            "prompts": list(self.prompts),
        }
        if self.prompts_from:
            described["prompts_from"] = self.prompts_from
        return described


class _Recorder(nn.Module):
    """Passes calls through to ``module`` and keeps a numpy copy of every input."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls: list[tuple[np.ndarray, ...]] = []

    def forward(self, *args):
        batch = args[0].shape[0]
        arrays = []
        for a in args:
            t = torch.as_tensor(a)
            if t.dim() == 0:
                t = t.reshape(1).expand(batch)
            arrays.append(t.detach().cpu().numpy().copy())
        self.calls.append(tuple(arrays))
        return self.module(*args)


def collect_calibration(
    pipeline,
    prompts: tuple[str, ...] = DEFAULT_PROMPTS,
    steps: int | None = None,
    seed: int = 0,
    negative_prompt: str = "",
) -> Calibration:
    """Run ``pipeline`` (a ``pipeline.Pipeline``) on ``prompts``, recording every input."""
    recorders = {
        "text_encoder": _Recorder(pipeline.text_encoder),
        "unet": _Recorder(pipeline.unet),
        "vae_decoder": _Recorder(pipeline.vae_decoder),
    }
    recording = dataclasses.replace(pipeline, **recorders)
    for i, prompt in enumerate(prompts):
        recording(
            prompt, steps=steps, seed=seed + i, negative_prompt=negative_prompt, output_type="np"
        )
    samples: dict[str, list[tuple[np.ndarray, ...]]] = {}
    # The text encoder runs [negative, prompt] as one batch; its LiteRT signature is batch 1.
    samples["text_encoder"] = [
        (ids[row : row + 1].astype(np.int32),)
        for (ids,) in recorders["text_encoder"].calls
        for row in range(ids.shape[0])
    ]
    samples["unet"] = [
        tuple(a.astype(np.float32) for a in call) for call in recorders["unet"].calls
    ]
    samples["vae_decoder"] = [(a.astype(np.float32),) for (a,) in recorders["vae_decoder"].calls]
    return Calibration(samples, "pipeline", tuple(prompts))


def synthetic_calibration(
    config: ModelConfig, component: Component, count: int = 4, seed: int = 0
) -> Calibration:
    """Inputs of the right shape and scale when no pipeline run is at hand (see module doc)."""
    from ..schedulers import make_sampler

    rng = np.random.default_rng(seed)
    io = component_io(config, component, "tflite")
    samples: list[tuple[np.ndarray, ...]] = []
    if component == "text_encoder":
        samples = [(ids,) for ids in _token_ids(config, rng, count)]
    elif component == "unet":
        sampler = make_sampler(config.pipeline)
        sample_shape, _, context_shape = (spec.shape for spec in io.inputs)
        timesteps = list(sampler.timesteps)
        for i in range(count):
            k = i * len(timesteps) // count
            noise = rng.standard_normal(sample_shape).astype(np.float32)
            x = sampler.scale_model_input(noise * np.float32(sampler.init_noise_sigma), k)
            t = np.full(sample_shape[:1], float(timesteps[k]), dtype=np.float32)
            context = rng.standard_normal(context_shape).astype(np.float32)
            samples.append((x.astype(np.float32), t, context))
    else:
        (spec,) = io.inputs
        scale = 1.0 / config.pipeline.vae_scaling_factor
        samples = [
            ((rng.standard_normal(spec.shape) * scale).astype(np.float32),) for _ in range(count)
        ]
    return Calibration({component: samples}, "synthetic", DEFAULT_PROMPTS)


def _token_ids(config: ModelConfig, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """Tokenized default prompts with the repo's CLIP tokenizer, or random ids without it."""
    length = config.tokenizer.max_length
    try:
        from ..checkpoints import models_dir
        from ..tokenizer import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_dir(models_dir() / "tokenizer", config.tokenizer)
        ids = tokenizer.tokenize(list(DEFAULT_PROMPTS)).astype(np.int32)
        rows = [ids[i : i + 1] for i in range(ids.shape[0])]
    except (MobileDiffError, OSError):  # no tokenizer files: random ids reach every layer too
        rows = []
    while len(rows) < count:
        rows.append(rng.integers(0, config.text_encoder.vocab_size, (1, length), dtype=np.int32))
    return [np.clip(r, 0, config.text_encoder.vocab_size - 1) for r in rows[:count]]
