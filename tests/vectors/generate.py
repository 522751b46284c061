"""Regenerate every golden vector file in this folder from the reference libraries.

    .venv/bin/python tests/vectors/generate.py

Tokenizer ids come from transformers' CLIPTokenizer over models/tokenizer/, sampler
outputs from diffusers' schedulers, and pipeline_tiny.json records one run of our PyTorch
pipeline (which the oracle tests hold to diffusers' StableDiffusionPipeline). Kotlin and
Swift tests read these files; never edit them by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen_pipeline  # noqa: E402
import gen_samplers  # noqa: E402
import gen_tokenizer  # noqa: E402


def main() -> None:
    gen_tokenizer.generate(HERE / "tokenizer.json")
    gen_samplers.generate(HERE / "samplers.json")
    gen_pipeline.generate(HERE / "pipeline_tiny.json")
    print(f"wrote tokenizer.json, samplers.json and pipeline_tiny.json in {HERE}")


if __name__ == "__main__":
    main()
