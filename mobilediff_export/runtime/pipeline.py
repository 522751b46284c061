"""Prompt to image from a bundle alone: ``bundle.json``, the tokenizer files, the models.

This is the loop the Android and iOS apps run, in Python, against the same manifest; no
network code is imported. What it reads from the manifest:

```
tokenizer  files + max_length and bos/eos/pad ids            -> ids (1, 77) per prompt
guidance   mode cfg: ["negative prompt", prompt], UNet batch 2; none: [prompt], batch 1
sampler    the explicit dict (timesteps, alphas or sigmas)    -> schedulers.sampler_from_dict
latents    unit Gaussian (1, C, h, w) * sampler.init_noise_sigma
loop       x = scale_model_input(latents, i); out = unet(x, t_i, context)
           (a UNet with input ``step_index``, the fold_timesteps rewrite, gets i instead)
           cfg: out = uncond + scale * (cond - uncond); latents = step(out, i, latents)
decoder    latents / vae_scaling_factor -> [-1, 1] NCHW -> round(clamp(x/2 + 0.5) * 255)
```
The starting noise is drawn as the PyTorch reference pipeline draws it (``torch.randn``
from a generator seeded with ``seed``; re-noising in multi-step one-step sampling from
``seed + 1``), so the same seed gives the same picture on every backend. Pass
``latents`` to use other noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from ..bundle import BundleError, check_bundle, iter_components, read_manifest, resolve_in_bundle
from ..config import TokenizerConfig
from ..images import to_uint8_image
from ..noise import seeded_noise
from ..progress import progress_bar
from ..schedulers import Sampler, sampler_from_dict
from ..tokenizer import CLIPTokenizer
from .runners import HOST_BACKENDS, Runner, open_runner


def tokenizer_from_manifest(bundle: str | Path, manifest: dict[str, Any]) -> CLIPTokenizer:
    entry = manifest["tokenizer"]
    config = TokenizerConfig(
        max_length=entry["max_length"],
        bos_token_id=entry["bos_token_id"],
        eos_token_id=entry["eos_token_id"],
        pad_token_id=entry["pad_token_id"],
    )
    return CLIPTokenizer.from_files(
        resolve_in_bundle(bundle, entry["vocab"]),
        resolve_in_bundle(bundle, entry["merges"]),
        config,
    )


def host_backends(manifest: dict[str, Any]) -> list[str]:
    """The targets of a bundle that run on this host, in preference order."""
    present = {target for target, _, _ in iter_components(manifest)}
    return [b for b in HOST_BACKENDS if b in present]


class BundlePipeline:
    """A bundle loaded for one backend; call it with a prompt to get an image.

    ``backend`` is ``tflite`` or ``onnx`` (default: the first of those the bundle has).
    ``verify`` checks every file's sha256 first (what an app does before loading).
    """

    def __init__(
        self,
        bundle: str | Path,
        backend: str | None = None,
        num_threads: int | None = None,
        verify: bool = True,
    ) -> None:
        self.bundle = Path(bundle)
        self.manifest = check_bundle(bundle) if verify else read_manifest(bundle)
        available = host_backends(self.manifest)
        targets = sorted({t for t, _, _ in iter_components(self.manifest)})
        if backend is None:
            if not available:
                raise BundleError(
                    f"{bundle} has no model that runs on this host (it has "
                    f"{', '.join(targets)}; export with --target tflite or onnx)"
                )
            backend = available[0]
        if backend not in targets:
            raise BundleError(f"{bundle} has no {backend} models (it has {', '.join(targets)})")
        self.backend = backend
        pipeline = self.manifest["pipeline"]
        self.tokenizer = tokenizer_from_manifest(bundle, self.manifest)
        self.sampler: Sampler = sampler_from_dict(pipeline["sampler"])
        self.guidance: dict[str, Any] = pipeline["guidance"]
        self.latent_shape = tuple(pipeline["latent_shape"])
        self.vae_scaling_factor = float(pipeline["vae_scaling_factor"])
        entries = self.manifest["components"][backend]
        self.runners: dict[str, Runner] = {
            name: open_runner(bundle, backend, entries[name], num_threads)
            for name in ("text_encoder", "unet", "vae_decoder")
        }

    @property
    def guided(self) -> bool:
        return self.guidance["mode"] == "cfg"

    def encode_prompt(self, prompt: str, negative_prompt: str | None = None) -> np.ndarray:
        """Context (B, 77, D): [negative, prompt] with guidance, else [prompt]."""
        if negative_prompt is None:
            negative_prompt = self.guidance.get("negative_prompt", "")
        prompts = [negative_prompt, prompt] if self.guided else [prompt]
        encoder = self.runners["text_encoder"]
        id_name, out_name = encoder.inputs[0]["name"], encoder.outputs[0]["name"]
        contexts = [
            encoder.run({id_name: self.tokenizer(p)[None]})[out_name] for p in prompts
        ]  # the encoder's static batch is 1
        return np.concatenate(contexts).astype(np.float32)

    def denoise(
        self,
        context: np.ndarray,
        latents: np.ndarray,
        guidance_scale: float,
        seed: int = 0,
        progress: bool = False,
    ) -> np.ndarray:
        """The sampler loop from scaled starting latents; returns the final latents."""
        sampler, unet = self.sampler, self.runners["unet"]
        out_name = unet.outputs[0]["name"]
        # A UNet exported with the fold_timesteps rewrite takes the step's index instead.
        folded = any(spec["name"] == "step_index" for spec in unet.inputs)
        renoise_seed = seed + 1
        renoise_count = 0
        latents = latents.astype(np.float32)
        steps = list(enumerate(sampler.timesteps))
        for i, t in progress_bar(steps, desc=f"denoise ({self.backend})", enabled=progress):
            x = sampler.scale_model_input(latents, i).astype(np.float32)
            batch = np.concatenate([x, x]) if self.guided else x
            feeds = {"sample": batch, "context": context}
            if folded:
                feeds["step_index"] = np.full((batch.shape[0],), i, dtype=np.int32)
            else:
                feeds["timestep"] = np.full((batch.shape[0],), t, dtype=np.float32)
            out = unet.run(feeds)[out_name]
            if self.guided:
                uncond, cond = out[:1], out[1:]
                out = uncond + guidance_scale * (cond - uncond)
            noise = None
            if sampler.needs_noise and i + 1 < len(sampler.timesteps):
                noise = _renoise(latents.shape, renoise_seed, renoise_count)
                renoise_count += 1
            latents = sampler.step(out, i, latents, noise=noise).astype(np.float32)
        return latents

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> decoder output (1, 3, H, W) in [-1, 1], float32."""
        decoder = self.runners["vae_decoder"]
        scaled = (latents / self.vae_scaling_factor).astype(np.float32)
        return decoder.run({decoder.inputs[0]["name"]: scaled})[decoder.outputs[0]["name"]]

    def __call__(
        self,
        prompt: str,
        seed: int = 0,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        latents: np.ndarray | None = None,
        output_type: Literal["pil", "uint8", "decoded"] = "pil",
        progress: bool = False,
    ) -> Image.Image | np.ndarray:
        """One image. ``latents``: unit Gaussian (1, C, h, w), else drawn from ``seed``.

        ``output_type``: a PIL image, uint8 (H, W, 3), or the raw decoder output.
        ``guidance_scale`` may change the scale of a guided bundle, not the mode (the
        UNet's batch is fixed at export).
        """
        scale = float(self.guidance["scale"]) if guidance_scale is None else guidance_scale
        if not self.guided and scale > 1.0:
            raise BundleError(
                "this bundle was exported without classifier-free guidance (UNet batch 1); "
                "export it again with --guidance to use a scale above 1"
            )
        if self.guided and scale <= 1.0:
            raise BundleError(
                "this bundle's UNet runs at batch 2 for classifier-free guidance; give a "
                "scale above 1, or export again with --guidance 1"
            )
        if latents is None:
            latents = seeded_noise(self.latent_shape, seed)
        if tuple(latents.shape) != self.latent_shape:
            raise BundleError(
                f"latents must have shape {list(self.latent_shape)}, got {list(latents.shape)}"
            )
        context = self.encode_prompt(prompt, negative_prompt)
        start = np.asarray(latents, np.float32) * np.float32(self.sampler.init_noise_sigma)
        final = self.denoise(context, start, scale, seed, progress)
        decoded = self.decode(final)
        if output_type == "decoded":
            return decoded
        pixels = to_uint8_image(decoded)[0]
        return pixels if output_type == "uint8" else Image.fromarray(pixels)


def _renoise(shape: tuple[int, ...], seed: int, index: int) -> np.ndarray:
    """The ``index``-th re-noising draw of a generator seeded with ``seed`` (as PyTorch's)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for _ in range(index):
        torch.randn(shape, generator=generator)
    return torch.randn(shape, generator=generator).numpy()


def load_bundle(
    bundle: str | Path, backend: str | None = None, num_threads: int | None = None
) -> BundlePipeline:
    """A verified bundle ready to make images (see ``BundlePipeline``)."""
    return BundlePipeline(bundle, backend=backend, num_threads=num_threads)
