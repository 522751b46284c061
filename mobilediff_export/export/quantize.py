"""Quantization recipes by name: what each component's weights and math become per target.

A recipe is declarative data; each converter reads the fields that apply to its target
and refuses a recipe that names a target it cannot honour. ``--recipe NAME`` picks one
recipe for every component; without it each component gets ``DEFAULT_RECIPES``' choice,
a sensible mobile default: int8 where it is safe and fast, fp16 where the picture is
sensitive (the decoder writes pixels directly).

``mixed`` differs by target in what "fp16" means: LiteRT keeps the chosen layers' weights
fp16 and computes everything in fp32 (XNNPACK dequantizes), while a Core ML ``mlprogram``
computes the whole model in fp16 (``compute_precision`` is per model), so there the kept
layers differ from the rest in their weights only. The recipe's ``compute`` field reads
"fp32" for the LiteRT side; the Core ML converter records fp16 in the artifact.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .artifacts import Component, Target


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    targets: frozenset[str]
    precision: str
    """The manifest's ``precision`` label (see the bundle schema)."""
    weights: str
    """fp32 | fp16 | int8 | palettized"""
    activations: str = "float"
    """float | dynamic-int8 (quantized on the fly per op) | int8 (calibrated, static)"""
    compute: str = "fp32"
    """fp32 | fp16: the float precision the runtime computes in."""
    granularity: str | None = None
    """per-channel | per-tensor, for int8 weights."""
    palette_bits: int | None = None
    sensitive_fp16: bool = False
    """Mixed precision: measure per-layer sensitivity, keep the worst layers in fp16."""


def _recipe(name: str, targets: tuple[str, ...], **fields) -> Recipe:
    return Recipe(name=name, targets=frozenset(targets), **fields)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        _recipe("fp32", ("tflite", "coreml", "onnx"), description="no quantization",
                precision="fp32", weights="fp32"),
        _recipe("fp16", ("tflite", "coreml"), description="fp16 weights (and fp16 compute "
                "on Core ML)", precision="fp16", weights="fp16", compute="fp16"),
        _recipe("int8-weight", ("tflite", "coreml"), description="int8 per-channel weights, "
                "dequantized to float for compute", precision="int8", weights="int8",
                granularity="per-channel"),
        _recipe("int8-dynamic", ("tflite",), description="int8 per-channel weights, "
                "activations quantized on the fly (XNNPACK's fast int8 kernels)",
                precision="int8", weights="int8", activations="dynamic-int8",
                granularity="per-channel"),
        _recipe("w8a8", ("tflite",), description="full integer: int8 weights and activations "
                "with ranges calibrated on prompts", precision="w8a8", weights="int8",
                activations="int8", granularity="per-channel"),
        _recipe("int8-fp16", ("coreml",), description="int8 per-channel linear weights, fp16 "
                "compute", precision="int8-fp16", weights="int8", compute="fp16",
                granularity="per-channel"),
        _recipe("palettize-6bit", ("coreml",), description="6-bit k-means palettized weights, "
                "fp16 compute", precision="palettized-6bit", weights="palettized",
                compute="fp16", palette_bits=6),
        _recipe("palettize-4bit", ("coreml",), description="4-bit k-means palettized weights, "
                "fp16 compute", precision="palettized-4bit", weights="palettized",
                compute="fp16", palette_bits=4),
        _recipe("mixed", ("tflite", "coreml"), description="int8 weights except the most "
                "sensitive layers (measured), which stay fp16", precision="mixed",
                weights="int8", granularity="per-channel", sensitive_fp16=True),
    )
}  # fmt: skip

DEFAULT_RECIPES: dict[str, dict[str, str]] = {
    "tflite": {"text_encoder": "int8-dynamic", "unet": "int8-dynamic", "vae_decoder": "fp16"},
    "coreml": {"text_encoder": "fp16", "unet": "int8-fp16", "vae_decoder": "fp16"},
    "onnx": {"text_encoder": "fp32", "unet": "fp32", "vae_decoder": "fp32"},
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown quantization recipe {name!r} (known: {', '.join(RECIPES)})"
        ) from None


def resolve_recipe(
    target: Target,
    component: Component,
    recipe: str | None = None,
    overrides: dict[str, str] | None = None,
) -> Recipe:
    """The recipe for one component on one target: override, else ``recipe``, else default.

    A recipe that does not apply to ``target`` is an error for a per-component override;
    a global ``recipe`` falls back to the target's default where it does not apply (so
    ``--recipe int8-dynamic`` with Core ML and LiteRT targets quantizes LiteRT only) — the
    manifest records what each file really got.
    """
    if overrides and component in overrides:
        chosen = get_recipe(overrides[component])
        if target not in chosen.targets:
            raise ConfigError(
                f"recipe {chosen.name} does not apply to {target} (it applies to "
                f"{', '.join(sorted(chosen.targets))})"
            )
        return chosen
    if recipe is not None:
        chosen = get_recipe(recipe)
        if target in chosen.targets:
            return chosen
    return get_recipe(DEFAULT_RECIPES[target][component])
