"""Record one run of the PyTorch pipeline, tensor by tensor, for the apps' replay tests.

The Kotlin and Swift pipelines run the same orchestration over a ``ModelRunner``; their
tests replay these tensors in place of the networks (checking that each network is fed
what Python fed it) and compare the final pixels. The run uses the ``tiny`` config's
seeded random weights, classifier-free guidance and DDIM, so every branch of the loop
(batch-2 guidance, the sampler update, the decoder scaling and the uint8 conversion) is
exercised.

The loop below is written out so each tensor can be recorded; ``generate`` checks that it
gives exactly the image ``Pipeline.__call__`` gives, so it cannot drift from the library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mobilediff_export import __version__, load_pipeline
from mobilediff_export.images import to_uint8_image

MODEL = "tiny"
PROMPT = "a red circle left of a blue square"
SEED = 0


def _tensor(array: np.ndarray | torch.Tensor) -> dict[str, Any]:
    data = np.asarray(array, dtype=np.float32)
    return {"shape": list(data.shape), "data": [float(f"{v:.9g}") for v in data.ravel()]}


def build() -> dict[str, Any]:
    pipe = load_pipeline(MODEL)
    config = pipe.config.pipeline
    guidance = config.guidance_scale
    sampler = pipe.make_sampler()
    prompts = ["", PROMPT] if guidance > 1.0 else [PROMPT]
    ids = pipe.tokenizer.tokenize(prompts)
    with torch.inference_mode():
        context = pipe.text_encoder(torch.from_numpy(ids))
    latents = pipe.initial_noise(SEED) * np.float32(sampler.init_noise_sigma)
    initial = latents.copy()
    steps = []
    for i, t in enumerate(sampler.timesteps):
        x = sampler.scale_model_input(latents, i).astype(np.float32)
        x_in = np.concatenate([x, x]) if guidance > 1.0 else x
        t_in = torch.full((x_in.shape[0],), float(t), dtype=torch.float32)
        with torch.inference_mode():
            out = pipe.unet(torch.from_numpy(x_in), t_in, context).numpy()
        guided = out[:1] + guidance * (out[1:] - out[:1]) if guidance > 1.0 else out
        latents = sampler.step(guided, i, latents).astype(np.float32)
        steps.append(
            {
                "index": i,
                "timestep": float(t),
                "model_input": _tensor(x_in),
                "model_output": _tensor(out),
                "guided_output": _tensor(guided),
                "latents_after": _tensor(latents),
            }
        )
    decoder_input = (latents / config.vae_scaling_factor).astype(np.float32)
    decoded = pipe.decode(latents)
    pixels = to_uint8_image(decoded)[0]
    reference = np.asarray(pipe(PROMPT, seed=SEED))
    if not np.array_equal(pixels, reference):
        raise AssertionError("the recorded loop no longer matches Pipeline.__call__")
    return {
        "meta": {
            "generator": "tests/vectors/gen_pipeline.py",
            "mobilediff_version": __version__,
            "model": MODEL,
            "about": (
                "One run of the PyTorch pipeline on the tiny config's seeded random weights. "
                "Replay: the text encoder returns `context` for `token_ids`; the UNet, fed "
                "steps[i].model_input at steps[i].timestep, returns steps[i].model_output; "
                "the decoder, fed decoder_input, returns decoder_output. Floats to 1e-5 "
                "(float32 arithmetic), pixels within 1 (rounding of x.5 values)."
            ),
        },
        "prompt": PROMPT,
        "negative_prompt": "",
        "seed": SEED,
        "guidance": {"mode": "cfg" if guidance > 1.0 else "none", "scale": guidance},
        "vae_scaling_factor": config.vae_scaling_factor,
        "sampler": sampler.to_dict(),
        "token_ids": ids.tolist(),
        "context": _tensor(context),
        "initial_latents": _tensor(initial),
        "steps": steps,
        "decoder_input": _tensor(decoder_input),
        "decoder_output": _tensor(decoded),
        "pixels": {
            "shape": list(pixels.shape),
            "layout": "HWC RGB",
            "data": pixels.ravel().tolist(),
        },
    }


def generate(out_path: Path) -> None:
    out_path.write_text(json.dumps(build(), separators=(",", ":")) + "\n", encoding="utf-8")


if __name__ == "__main__":
    generate(Path(__file__).resolve().parent / "pipeline_tiny.json")
