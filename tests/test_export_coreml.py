"""The Core ML converter and what Linux can check of its output, on the tiny config.

Each recipe converts the tiny text encoder (the quickest component to convert); the UNet,
with the Neural Engine rewrites, is converted once (slow). Prediction itself needs macOS.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import perturb_

pytest.importorskip("coremltools")

import mobilediff_export.export.coreml as coreml_module
from mobilediff_export.checkpoints import load_model
from mobilediff_export.errors import ConfigError, MobileDiffError
from mobilediff_export.export.coreml import (
    REBUILT_MIN_PSNR_DB,
    check_coreml,
    convert_coreml,
    read_metadata,
)
from mobilediff_export.export.quantize import RECIPES, get_recipe
from mobilediff_export.export.rewrite import RewriteOptions, rewritten_io
from mobilediff_export.export.signatures import component_io

COREML_RECIPES = [name for name, r in RECIPES.items() if "coreml" in r.targets]
NO_REWRITES = RewriteOptions()


@pytest.fixture(scope="module")
def tiny():
    """The tiny model with every weight nudged, so no norm is an identity the converter drops."""
    loaded = load_model("tiny")
    for i, module in enumerate(loaded.modules.values()):
        perturb_(module, seed=i)
    return loaded


def entry_of(artifact) -> dict:
    """The manifest entry the bundle writer makes of an artifact (the fields checks read)."""
    return {
        "file": artifact.path.name,
        "recipe": artifact.recipe,
        "precision": artifact.precision,
        "rewrites": list(artifact.rewrites),
        "inputs": [s.to_dict() for s in artifact.inputs],
        "outputs": [s.to_dict() for s in artifact.outputs],
    }


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory):
    """recipe -> (artifact, check result) for the tiny text encoder, converted once each."""
    root = tmp_path_factory.mktemp("coreml")
    cache: dict[str, tuple] = {}

    def get(recipe: str):
        if recipe not in cache:
            module = tiny.modules["text_encoder"]
            out = root / f"TextEncoder-{recipe}.mlpackage"
            artifact = convert_coreml(
                module, tiny.config, "text_encoder", out, get_recipe(recipe), NO_REWRITES
            )
            checked = check_coreml(out, entry_of(artifact), module, tiny.config, "text_encoder")
            cache[recipe] = (artifact, checked)
        return cache[recipe]

    return get


# ------------------------------------------------------------------ every recipe


@pytest.mark.parametrize("recipe", COREML_RECIPES)
def test_each_recipe_converts_and_passes_the_linux_checks(converted, tiny, recipe):
    artifact, checked = converted(recipe)
    assert artifact.path.is_dir() and (artifact.path / "Manifest.json").is_file()
    assert (artifact.target, artifact.recipe) == ("coreml", recipe)
    assert artifact.precision == get_recipe(recipe).precision
    assert checked["passed"], checked["problems"]
    assert checked["problems"] == []

    # (a) the spec's I/O is exactly what the manifest promises
    io = component_io(tiny.config, "text_encoder", "coreml")
    assert artifact.inputs == io.inputs and artifact.outputs == io.outputs
    spec_io = checked["checks"]["spec_io"]
    assert spec_io["inputs"] == [
        {"name": "input_ids", "shape": [1, 77], "dtype": "int32"},
    ]
    assert spec_io["outputs"] == [
        {"name": "context", "shape": [1, 77, tiny.config.text_encoder.hidden_size],
         "dtype": "float32"},
    ]  # fmt: skip

    # (c) the weights rebuilt from the MIL program reproduce PyTorch
    rebuilt = checked["checks"]["rebuilt_weights"]
    assert rebuilt["psnr_db"] >= REBUILT_MIN_PSNR_DB[recipe]
    assert rebuilt["parameters_unmapped"] == []
    assert rebuilt["parameters_mapped"] >= 30  # every weight of the two-layer encoder

    # (d) prediction is never claimed
    assert checked["prediction"] == "needs_macos"
    assert any("macOS" in line for line in checked["not_checked"])
    json.dumps(checked)  # the result is plain JSON


EXPECTED_WEIGHTS = {
    # recipe: (kinds that must appear, kinds that must not), as weight_summary counts them
    "fp32": ({"float32"}, {"float16", "affine", "lut6", "lut4"}),
    "fp16": ({"float16"}, {"float32", "affine", "lut6", "lut4"}),
    "int8-weight": ({"affine"}, {"float16", "lut6", "lut4"}),
    "int8-fp16": ({"affine"}, {"float32", "lut6", "lut4"}),
    "palettize-6bit": ({"lut6"}, {"float32", "affine", "lut4"}),
    "palettize-4bit": ({"lut4"}, {"float32", "affine", "lut6"}),
    "mixed": ({"affine", "float16"}, {"float32", "lut6", "lut4"}),
}


@pytest.mark.parametrize("recipe", COREML_RECIPES)
def test_weight_dtypes_match_the_recipe(converted, recipe):
    artifact, checked = converted(recipe)
    weights = checked["checks"]["weights"]
    assert weights["passed"], weights["problems"]
    must, must_not = EXPECTED_WEIGHTS[recipe]
    assert must <= set(weights["counts"]), weights["counts"]
    assert not must_not & set(weights["counts"]), weights["counts"]
    assert artifact.details["weights"]["counts"] == weights["counts"]
    compute = (
        "fp16" if recipe in ("fp16", "int8-fp16", "mixed") or "palettize" in recipe else "fp32"
    )
    assert artifact.details["compute_precision"] == compute
    assert artifact.details["minimum_deployment_target"] == "iOS17"


def test_compression_shrinks_the_model_in_recipe_order(converted):
    size = {r: converted(r)[0].details["size_bytes"] for r in COREML_RECIPES}
    assert size["fp32"] > size["fp16"] > size["int8-fp16"] > size["palettize-6bit"]
    assert size["palettize-6bit"] > size["palettize-4bit"]
    assert size["int8-fp16"] <= size["mixed"] < size["fp16"]


def test_mixed_keeps_the_measured_most_sensitive_layers_in_fp16(converted):
    artifact, checked = converted("mixed")
    kept = artifact.details["kept_fp16"]
    sensitivity = artifact.details["sensitivity"]
    assert kept and sensitivity["layers_measured"] > len(kept)
    assert sensitivity["kept_share_of_elements"] <= coreml_module.MIXED_KEEP_MAX_ELEMENTS
    # kept most sensitive first: the first kept layer is among the ten worst measured
    assert kept[0] in sensitivity["most_sensitive_psnr_db"]
    meta = read_metadata(artifact.path)
    assert meta["recipe"] == "mixed" and len(meta["kept_fp16"]) == len(kept)
    assert checked["checks"]["weights"]["expected"]["kept_fp16"] == len(kept)


def test_the_causal_mask_is_not_quantized(converted):
    """int8 of the mask overflows its fp16 scale to inf and makes the mask NaN."""
    _, checked = converted("int8-fp16")
    assert checked["checks"]["weights"]["counts"]["float16"] >= 1  # the mask, kept float


# ------------------------------------------------------------------ refusals and atomicity


@pytest.mark.parametrize("recipe", ["int8-dynamic", "w8a8"])
def test_recipes_for_other_targets_are_refused(tiny, tmp_path, recipe):
    out = tmp_path / "TextEncoder.mlpackage"
    with pytest.raises(ConfigError, match="does not apply to coreml"):
        convert_coreml(
            tiny.modules["text_encoder"], tiny.config, "text_encoder", out, get_recipe(recipe)
        )
    assert not out.exists()


def test_an_existing_output_is_refused(tiny, tmp_path):
    out = tmp_path / "TextEncoder.mlpackage"
    out.mkdir()
    with pytest.raises(MobileDiffError, match="already exists"):
        convert_coreml(
            tiny.modules["text_encoder"], tiny.config, "text_encoder", out, get_recipe("fp16")
        )


def test_a_failed_conversion_leaves_nothing_behind(tiny, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(coreml_module, "_write_metadata", broken)
    out = tmp_path / "TextEncoder.mlpackage"
    with pytest.raises(OSError, match="disk full"):
        convert_coreml(
            tiny.modules["text_encoder"], tiny.config, "text_encoder", out, get_recipe("fp16"),
            NO_REWRITES,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails halfway leaves neither the package nor its staging folder."""

    class HalfSaved:
        def save(self, path: str) -> None:
            Path(path).mkdir()
            (Path(path) / "Manifest.json").write_text("{}")
            raise OSError("interrupted")

    out = tmp_path / "Unet.mlpackage"
    with pytest.raises(OSError, match="interrupted"):
        coreml_module._save_atomically(HalfSaved(), out)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ the checks can fail


def test_check_flags_io_that_differs_from_the_manifest(converted, tiny):
    artifact, _ = converted("fp16")
    entry = entry_of(artifact)
    entry["inputs"][0]["shape"] = [2, 77]
    checked = check_coreml(
        artifact.path, entry, tiny.modules["text_encoder"], tiny.config, "text_encoder"
    )
    assert not checked["passed"]
    assert not checked["checks"]["spec_io"]["passed"]
    assert checked["prediction"] == "needs_macos"


def test_check_flags_weights_that_do_not_match_the_recipe(converted, tiny):
    artifact, _ = converted("fp16")
    entry = entry_of(artifact) | {"recipe": "int8-fp16"}
    checked = check_coreml(
        artifact.path, entry, tiny.modules["text_encoder"], tiny.config, "text_encoder"
    )
    assert not checked["checks"]["weights"]["passed"]
    assert any("uncompressed" in p for p in checked["problems"])


def test_check_flags_weights_that_differ_from_pytorch(converted, tiny):
    artifact, _ = converted("fp16")
    other = load_model("tiny").modules["text_encoder"]
    perturb_(other, std=0.05, seed=42)
    checked = check_coreml(artifact.path, entry_of(artifact), other, tiny.config, "text_encoder")
    rebuilt = checked["checks"]["rebuilt_weights"]
    assert not rebuilt["passed"] and rebuilt["psnr_db"] < REBUILT_MIN_PSNR_DB["fp16"]


def test_check_leaves_the_module_as_it_was(converted, tiny):
    artifact, _ = converted("palettize-4bit")
    module = tiny.modules["text_encoder"]
    before = {k: v.clone() for k, v in module.state_dict().items()}
    check_coreml(artifact.path, entry_of(artifact), module, tiny.config, "text_encoder")
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------ UNet, with rewrites


@pytest.mark.slow
def test_unet_with_the_neural_engine_rewrites(tiny, tmp_path):
    """Default rewrites (channels-first 1x1 convs, per-head attention), int8 weights.

    The converter folds each attention's query scale into its 1x1 conv weight; the
    rebuilt-weights check must find those weights anyway (``folded_scales``).
    """
    module = tiny.modules["unet"]
    out = tmp_path / "Unet.mlpackage"
    artifact = convert_coreml(module, tiny.config, "unet", out, get_recipe("int8-fp16"))
    assert artifact.rewrites == ["linear_as_conv", "attention:split_heads"]
    io = rewritten_io(tiny.config, "unet", "coreml", RewriteOptions())
    assert artifact.inputs == io.inputs and artifact.outputs == io.outputs
    assert artifact.inputs[0].shape == (2, 4, 16, 16)  # guidance on: batch 2
    checked = check_coreml(out, entry_of(artifact), module, tiny.config, "unet")
    assert checked["passed"], checked["problems"]
    rebuilt = checked["checks"]["rebuilt_weights"]
    assert rebuilt["folded_scales"], "the query scales are folded into the q weights"
    assert rebuilt["psnr_db"] >= REBUILT_MIN_PSNR_DB["int8-fp16"]
    assert read_metadata(out)["rewrite_options"]["attention"] == "split_heads"


@pytest.mark.slow
def test_unet_with_folded_timesteps_takes_a_step_index(tiny, tmp_path):
    options = RewriteOptions(
        attention="split_heads", linear_as_conv=True, fold_timesteps=(999.0, 749.0, 499.0)
    )
    module = tiny.modules["unet"]
    out = tmp_path / "Unet.mlpackage"
    artifact = convert_coreml(module, tiny.config, "unet", out, get_recipe("fp16"), options)
    assert artifact.rewrites[-1] == "fold_timesteps"
    assert [s.name for s in artifact.inputs] == ["sample", "step_index", "context"]
    assert artifact.inputs == rewritten_io(tiny.config, "unet", "coreml", options).inputs
    checked = check_coreml(out, entry_of(artifact), module, tiny.config, "unet")
    assert checked["passed"], checked["problems"]
    assert checked["checks"]["spec_io"]["inputs"][1] == {
        "name": "step_index",
        "shape": [2],
        "dtype": "int32",
    }


def test_demo_text_encoder_palettized_to_4_bits_passes_the_checks(tmp_path):
    """Regression: every q projection of the demo keeps its weight (0.25 folded in, then a
    4-bit LUT); the check once refused layer 2's as off by an unexplained factor."""
    demo = load_model("demo")
    module = demo.modules["text_encoder"]
    out = tmp_path / "TextEncoder.mlpackage"
    recipe = get_recipe("palettize-4bit")
    artifact = convert_coreml(module, demo.config, "text_encoder", out, recipe, None)
    checked = check_coreml(out, entry_of(artifact), module, demo.config, "text_encoder")
    assert checked["passed"], checked["problems"]
    rebuilt = checked["checks"]["rebuilt_weights"]
    assert rebuilt["parameters_unmapped"] == []
    layers = demo.config.text_encoder.num_layers
    scaled = {n for n in rebuilt["folded_scales"] if n.endswith("attn.to_q.weight")}
    assert len(scaled) == layers, rebuilt["folded_scales"]


# ------------------------------------------------------------------ mapping weights back


def test_a_weight_scaled_by_an_attention_scale_is_found_and_unscaled():
    original = torch.randn(8, 4)
    weights = {"op_7_weight": (original * 0.25).numpy(), "other": torch.randn(8, 4).numpy()}
    name, value, factor = coreml_module._match_by_value(
        weights, list(weights), original, scales=(0.25,)
    )
    assert (name, factor) == ("op_7_weight", 0.25)
    assert torch.allclose(value, original)


def _heavy_tailed(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Laplace-distributed weights (scale 0.05), seeded: heavier tails than a normal's."""
    u = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 0.5
    return -0.05 * u.sign() * torch.log1p(-2.0 * u.abs())


def _palettized(weight: torch.Tensor, nbits: int) -> torch.Tensor:
    """``weight`` through a per-tensor k-means look-up table (as Core ML palettizes)."""
    flat = weight.flatten()
    centroids = torch.quantile(flat, torch.linspace(0.0, 1.0, 2**nbits + 2)[1:-1])
    for _ in range(30):  # Lloyd's iterations: each centroid becomes its cluster's mean
        cluster = (flat[:, None] - centroids[None, :]).abs().argmin(dim=1)
        for k in range(centroids.numel()):
            if (cluster == k).any():
                centroids[k] = flat[cluster == k].mean()
    cluster = (flat[:, None] - centroids[None, :]).abs().argmin(dim=1)
    return centroids[cluster].reshape(weight.shape)


def test_a_scaled_weight_palettized_to_4_bits_is_found_and_unscaled():
    # The demo's q projections: q * 0.25 folded into the weight, then a 4-bit LUT. The
    # LUT's values are cluster means, so its least-squares factor comes out ~1 - error**2
    # below the scale (0.9895 * 0.25 on text_encoder.layers.2), more than 1% off.
    original = _heavy_tailed((64, 64), seed=0)
    palettized = _palettized(original * 0.25, nbits=4)
    fitted = float((palettized * original).sum() / (original * original).sum())
    assert abs(fitted / 0.25 - 1.0) > 1e-2  # what the old, fixed 1% tolerance refused
    weights = {
        "op_395_weight_0_to_fp16_palettized": palettized.numpy(),
        "other": _heavy_tailed((64, 64), seed=1).numpy(),
    }
    name, value, factor = coreml_module._match_by_value(
        weights, list(weights), original, scales=(0.25,)
    )
    assert (name, factor) == ("op_395_weight_0_to_fp16_palettized", 0.25)
    assert torch.allclose(value, palettized / 0.25)


def test_a_palettized_weight_off_by_a_small_unexplained_factor_is_no_match():
    original = _heavy_tailed((64, 64), seed=0)
    weights = {"op_7_weight": (_palettized(original * 0.25, nbits=4) * 1.1).numpy()}
    name, value, _ = coreml_module._match_by_value(weights, list(weights), original, (0.25,))
    assert name is None and value is None


def test_a_weight_off_by_an_unexplained_factor_is_no_match():
    original = torch.randn(8, 4)
    weights = {"op_7_weight": (original * 2.0).numpy()}
    name, value, _ = coreml_module._match_by_value(weights, list(weights), original, (0.25,))
    assert name is None and value is None


def test_a_transposed_matrix_is_laid_out_back():
    original = torch.randn(6, 3)
    value = coreml_module._layout(original.T.contiguous().numpy(), original)
    assert torch.equal(value, original)
