"""Each mobile rewrite computes what the network computed, in PyTorch, on tiny configs.

Tolerances are relative to the output's largest magnitude (``scale``):

- ``fold_timesteps``: exact (the same ops on the same numbers, looked up instead of
  recomputed);
- ``attention`` forms, ``fuse_qkv``, ``linear_as_conv``, ``group_norm="decomposed"``,
  ``phase_upsample``, ``winograd``: 1e-5 * scale. The math is the same; only the order of float
  additions differs (per-head vs batched matmuls, conv vs matmul kernels, two-pass
  variance, kernel taps summed before the conv instead of inside it, Winograd's
  transforms). Observed on this
  machine: at most 3e-6 absolute on outputs of magnitude 1-4, and exactly 0 for
  ``fuse_qkv`` and token-major ``split_heads``;
- ``gelu_tanh``: 2e-3 * scale. An approximation: |GELU(x) - GELU_tanh(x)| < 5e-4
  everywhere (checked below), and the network's output moves by less than that.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mobilediff_export.checkpoints import build_modules, load_model
from mobilediff_export.errors import ConfigError
from mobilediff_export.export.rewrite import (
    DEFAULT_REWRITES,
    SPLIT_LINEAR_BLOCK,
    SPLIT_LINEAR_MIN_BYTES,
    WINOGRAD_MIN_CHANNELS,
    PhaseUpsample,
    RewriteOptions,
    SplitLinear,
    WinogradConv2d,
    WinogradUpsample,
    apply_rewrites,
    rewritten_io,
    settle_for_weights,
)
from mobilediff_export.export.signatures import exportable
from mobilediff_export.models import layers

CLOSE = 1e-5
GELU_TANH = 2e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and on a busy machine two spinning OpenMP
    threads per forward make each call ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def variant(tiny):
    """The tiny config with the knobs the tiny model leaves off: exact-GELU GLU and CLIP
    MLP, ReLU attention, separate K/V projections, 1x1-conv transformer projections."""
    config = tiny.config
    config = replace(
        config,
        text_encoder=replace(config.text_encoder, hidden_act="gelu"),
        unet=replace(
            config.unet,
            ff_activation="gelu",
            attention_activation="relu",
            shared_kv=False,
            use_linear_projection=False,
        ),
    )
    modules = build_modules(config, seed=1)
    return config, modules


def _inputs(config, component: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    c, h, w = config.latent_shape
    if component == "text_encoder":
        return (torch.randint(0, config.text_encoder.vocab_size, (1, 77), generator=g),)
    if component == "unet":
        dim = config.unet.cross_attention_dim
        return (
            torch.randn(2, c, h, w, generator=g),
            torch.tensor([801.0, 801.0]),
            torch.randn(2, 77, dim, generator=g),
        )
    return (torch.randn(1, c, h, w, generator=g) * 5,)


SINGLE = {
    "attention=split_heads": RewriteOptions(attention="split_heads"),
    "attention=sdpa": RewriteOptions(attention="sdpa"),
    "fuse_qkv": RewriteOptions(fuse_qkv=True),
    "group_norm=decomposed": RewriteOptions(group_norm="decomposed"),
    "linear_as_conv": RewriteOptions(linear_as_conv=True),
    "phase_upsample": RewriteOptions(phase_upsample=True),
    "winograd": RewriteOptions(winograd=True),
    "coreml (split_heads + linear_as_conv)": RewriteOptions(
        attention="split_heads", linear_as_conv=True
    ),
    "all exact-math rewrites": RewriteOptions(
        attention="split_heads",
        linear_as_conv=True,
        fuse_qkv=True,
        group_norm="decomposed",
        phase_upsample=True,
        winograd=True,
    ),
    "tflite default": DEFAULT_REWRITES["tflite"],
}


def _check(module, component, options, inputs, tolerance):
    with torch.no_grad():
        reference = module(*inputs)
        rewritten, applied = apply_rewrites(module, component, options)
        out = rewritten(*inputs)
    scale = reference.abs().max().item()
    error = (out - reference).abs().max().item()
    assert error <= tolerance * scale, f"{applied}: max abs error {error:.3g} (scale {scale:.3g})"
    return applied


@pytest.mark.parametrize("name", list(SINGLE))
@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_rewrites_keep_the_math(tiny, variant, name, component):
    options = SINGLE[name]
    for config, modules in ((tiny.config, tiny.modules), variant):
        module = exportable(modules[component], component, "tflite")
        inputs = _inputs(config, component)
        if component == "text_encoder":
            inputs = (inputs[0].to(torch.int32),)
        tolerance = GELU_TANH if options.gelu_tanh else CLOSE
        _check(module, component, options, inputs, tolerance)


@pytest.mark.parametrize("component", ["text_encoder", "unet"])
def test_gelu_tanh_is_a_close_approximation(variant, component):
    x = torch.linspace(-10, 10, 20001)
    gap = (torch.nn.functional.gelu(x) - torch.nn.functional.gelu(x, approximate="tanh")).abs()
    assert gap.max() < 5e-4
    config, modules = variant
    applied = _check(
        modules[component],
        component,
        RewriteOptions(gelu_tanh=True),
        _inputs(config, component),
        GELU_TANH,
    )
    assert applied == ["gelu_tanh"]


def test_fold_timesteps_is_exact(tiny):
    unet = tiny.modules["unet"]
    timesteps = (961.0, 721.0, 481.0, 241.0, 1.0)
    folded, applied = apply_rewrites(unet, "unet", RewriteOptions(fold_timesteps=timesteps))
    assert applied == ["fold_timesteps"]
    sample, _, context = _inputs(tiny.config, "unet")
    with torch.no_grad():
        for index, t in enumerate(timesteps):
            step = torch.full((2,), index, dtype=torch.int32)
            expected = unet(sample, torch.full((2,), t), context)
            assert torch.equal(folded(sample, step, context), expected)


def test_fold_timesteps_changes_the_unet_io_only(tiny):
    options = RewriteOptions(fold_timesteps=(999, 500, 1))
    assert options.fold_timesteps == (999.0, 500.0, 1.0)
    io = rewritten_io(tiny.config, "unet", "tflite", options)
    names = [s.name for s in io.inputs]
    assert names == ["sample", "step_index", "context"]
    step = io.inputs[1]
    assert (step.shape, step.dtype, step.layout) == ((2,), "int32", "N")
    assert io.example_inputs[1].dtype == torch.int32
    for component in ("text_encoder", "vae_decoder"):
        assert rewritten_io(tiny.config, component, "tflite", options).inputs == (
            rewritten_io(tiny.config, component, "tflite", None).inputs
        )
        _, applied = apply_rewrites(tiny.modules[component], component, options)
        assert "fold_timesteps" not in applied


def test_names_in_order_and_only_what_applied(tiny, variant):
    everything = RewriteOptions(
        attention="split_heads",
        fuse_qkv=True,
        group_norm="decomposed",
        gelu_tanh=True,
        linear_as_conv=True,
        phase_upsample=True,
        winograd=True,
        fold_timesteps=(999.0,),
    )
    _, applied = apply_rewrites(variant[1]["unet"], "unet", everything)
    assert applied == [
        "linear_as_conv",
        "fuse_qkv",
        "attention:split_heads",
        "group_norm:decomposed",
        "gelu_tanh",
        "winograd",
        "fold_timesteps",
    ]  # winograd took the upsamplers: nothing left for phase_upsample
    _, applied = apply_rewrites(
        variant[1]["unet"], "unet", RewriteOptions(phase_upsample=True, winograd=False)
    )
    assert applied == ["phase_upsample"]
    # The tiny model's GLU is Swish: nothing for gelu_tanh to do.
    _, applied = apply_rewrites(tiny.modules["unet"], "unet", RewriteOptions(gelu_tanh=True))
    assert applied == []
    # ReLU attention has no SDPA form: it stays explicit and the rewrite is not claimed.
    _, applied = apply_rewrites(variant[1]["unet"], "unet", RewriteOptions(attention="sdpa"))
    assert applied == []
    _, applied = apply_rewrites(tiny.modules["vae_decoder"], "vae_decoder", RewriteOptions())
    assert applied == []


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 16, 8, 8)])
def test_phase_upsample_is_the_upsampler_at_input_resolution(shape):
    """Odd and even sizes; every output phase and border of the 2x map is checked."""
    batch, channels, height, width = shape
    torch.manual_seed(0)
    up = layers.Upsample(channels).eval()
    x = torch.randn(*shape)
    phased = PhaseUpsample(up)
    with torch.no_grad():
        expected, out = up(x), phased(x)
    assert out.shape == expected.shape == (batch, channels, 2 * height, 2 * width)
    assert (out - expected).abs().max() <= CLOSE * expected.abs().max()
    # One 2x2 conv at the input size: 16 taps per 4 output pixels instead of 36.
    assert phased.conv.weight.shape == (4 * channels, channels, 2, 2)


def test_phase_upsample_reaches_every_upsampler(tiny):
    options = RewriteOptions(phase_upsample=True)
    for component in ("unet", "vae_decoder"):
        module = tiny.modules[component]
        count = sum(isinstance(m, layers.Upsample) for m in module.modules())
        rewritten, applied = apply_rewrites(module, component, options)
        assert count > 0 and applied == ["phase_upsample"]
        assert sum(isinstance(m, PhaseUpsample) for m in rewritten.modules()) == count
        assert not any(isinstance(m, layers.Upsample) for m in rewritten.modules())
    _, applied = apply_rewrites(tiny.modules["text_encoder"], "text_encoder", options)
    assert applied == []


@pytest.mark.parametrize("shape", [(2, 32, 6, 10), (1, 48, 16, 16), (1, 32, 5, 7)])
def test_winograd_is_the_3x3_conv(shape):
    """Even sizes run F(2x2, 3x3), bias and borders included; odd ones the original conv."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(shape[1], 40, 3, padding=1).eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        expected, out = conv(x), WinogradConv2d(conv)(x)
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= CLOSE * expected.abs().max()


def test_winograd_takes_only_wide_same_padded_3x3_convs(tiny):
    unet = tiny.modules["unet"]
    rewritten, applied = apply_rewrites(unet, "unet", RewriteOptions(winograd=True))
    assert applied == ["winograd"]
    swapped = dict(rewritten.named_modules())
    for name, m in unet.named_modules():
        if not isinstance(m, torch.nn.Conv2d):
            continue
        wanted = (
            m.kernel_size == (3, 3)
            and m.stride == (1, 1)
            and m.groups == 1
            and min(m.in_channels, m.out_channels) >= WINOGRAD_MIN_CHANNELS
        )
        parent = name.rpartition(".")[0]
        if isinstance(unet.get_submodule(parent), layers.Upsample):
            assert isinstance(swapped[parent], WinogradUpsample), parent  # whole upsampler
            continue
        assert isinstance(swapped[name], WinogradConv2d) == wanted, name
    assert not isinstance(swapped["conv_in"], WinogradConv2d)  # 4 input channels


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 32, 8, 6), (1, 48, 1, 1)])
def test_winograd_upsample_is_the_upsampler(shape):
    """Any size (one output tile per input pixel), every phase and border of the 2x map."""
    torch.manual_seed(0)
    up = layers.Upsample(shape[1]).eval()
    x = torch.randn(*shape)
    wino = WinogradUpsample(up)
    with torch.no_grad():
        expected, out = up(x), wino(x)
    assert out.shape == expected.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    assert (out - expected).abs().max() <= CLOSE * expected.abs().max()
    # 9 GEMMs (products) per output tile, against the phase form's 16 taps.
    assert wino.transformed.shape == (9, shape[1], shape[1])


def test_split_linear_is_the_linear_bit_for_bit():
    torch.manual_seed(0)
    for bias in (True, False):
        linear = torch.nn.Linear(96, 1100, bias=bias).eval()
        split = SplitLinear(linear, block=512)
        assert [w.shape[0] for w in split.weights] == [512, 512, 76]
        # Views of the original weight, not copies.
        assert split.weights[1].data_ptr() == linear.weight[512:].data_ptr()
        x = torch.randn(2, 7, 96)
        with torch.no_grad():
            assert torch.equal(split(x), linear(x))


def test_split_linear_takes_only_large_layers():
    big_in = SPLIT_LINEAR_MIN_BYTES // (4 * 1024) + 1  # just past the size, 1024 outputs
    net = torch.nn.Sequential(
        torch.nn.Linear(big_in, 1024),
        torch.nn.Linear(1024, 1024),  # 4 MiB: below the size
        torch.nn.Linear(1024, SPLIT_LINEAR_BLOCK),  # one block: nothing to split
    )
    rewritten, applied = apply_rewrites(net, "unet", RewriteOptions(split_linear=True))
    assert applied == ["split_linear"]
    kinds = [type(m).__name__ for m in rewritten]
    assert kinds == ["SplitLinear", "Linear", "Linear"]
    x = torch.randn(3, big_in)
    with torch.no_grad():
        assert torch.equal(rewritten(x), net(x))
    _, applied = apply_rewrites(net, "unet", RewriteOptions(split_linear=None))
    assert applied == []


def test_settle_for_weights_settles_the_default_by_weights():
    auto = DEFAULT_REWRITES["tflite"]
    assert auto.winograd is None and auto.split_linear is None
    fp32 = settle_for_weights(auto, "fp32")
    assert fp32.winograd is True and fp32.split_linear is True
    for weights in ("fp16", "int8"):
        settled = settle_for_weights(auto, weights)
        assert settled.winograd is False and settled.split_linear is False
    # Splitting is exact for every recipe: asked for, it stays on with int8 weights.
    assert settle_for_weights(replace(auto, split_linear=True), "int8").split_linear is True
    assert settle_for_weights(replace(auto, winograd=True), "fp16").winograd is True
    assert settle_for_weights(replace(auto, winograd=False), "fp32").winograd is False
    with pytest.raises(ConfigError, match="winograd is for float weights"):
        settle_for_weights(replace(auto, winograd=True), "int8")
    # Unsettled, apply_rewrites leaves the convs alone.
    _, applied = apply_rewrites(layers.Upsample(32), "unet", RewriteOptions(winograd=None))
    assert applied == []


@pytest.mark.parametrize("length", [64, 63])
@pytest.mark.parametrize("activation", ["softmax", "relu"])
def test_single_head_attention_in_query_halves_is_the_attention(length, activation):
    """One head at batch 1 runs as two halves of the queries (so LiteRT keeps both
    products as BATCH_MATMULs); odd lengths keep the plain form. Masks follow the rows."""
    from mobilediff_export.export.rewrite import MobileAttention

    torch.manual_seed(0)
    dim = 32
    q, k, v, out = (torch.nn.Linear(dim, dim) for _ in range(4))
    mask = torch.triu(torch.full((length, length), -1e4), 1)
    x = torch.randn(1, length, dim)
    for masked in (None, mask):
        with torch.no_grad():
            scores = q(x) * dim**-0.5 @ k(x).transpose(1, 2)
            if masked is not None:
                scores = scores + masked
            weights = (
                torch.softmax(scores, -1) if activation == "softmax" else scores.relu() / length
            )
            reference = out(weights @ v(x))
            for fuse in (False, True):
                attention = MobileAttention(
                    q=q,
                    k=k,
                    v=v,
                    out=out,
                    heads=1,
                    scale=dim**-0.5,
                    activation=activation,
                    kind="self",
                    form="default",
                    fuse=fuse,
                    layout="tokens",
                )
                got = attention(x, mask=masked)
                assert (got - reference).abs().max() <= CLOSE * reference.abs().max()


def test_original_untouched_and_weights_shared(tiny):
    unet = tiny.modules["unet"]
    before = {n: p.clone() for n, p in unet.state_dict().items()}
    inputs = _inputs(tiny.config, "unet")
    with torch.no_grad():
        reference = unet(*inputs)
    options = RewriteOptions(attention="split_heads", linear_as_conv=True, fuse_qkv=True)
    rewritten, _ = apply_rewrites(unet, "unet", options)
    with torch.no_grad():
        assert torch.equal(unet(*inputs), reference)
    for name, value in unet.state_dict().items():
        assert torch.equal(value, before[name]), name
    ours = {p.data_ptr() for p in unet.parameters()}
    shared = [p for p in rewritten.parameters() if p.data_ptr() in ours]
    # Everything but the fused q|k|v weights is the caller's memory, not a copy.
    fused = sum(p.numel() for p in rewritten.parameters() if p.data_ptr() not in ours)
    assert sum(p.numel() for p in shared) > 0.8 * sum(p.numel() for p in unet.parameters())
    assert fused < 0.2 * sum(p.numel() for p in unet.parameters())


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="attention"):
        RewriteOptions(attention="flash")
    with pytest.raises(ConfigError, match="group_norm"):
        RewriteOptions(group_norm="fused")
    with pytest.raises(ConfigError, match="linear_as_conv"):
        RewriteOptions(attention="sdpa", linear_as_conv=True)
    with pytest.raises(ConfigError, match="at least one"):
        RewriteOptions(fold_timesteps=())


def test_defaults_per_target():
    assert set(DEFAULT_REWRITES) == {"tflite", "coreml", "onnx"}
    assert DEFAULT_REWRITES["onnx"] == RewriteOptions()
    coreml = DEFAULT_REWRITES["coreml"]
    assert coreml.attention == "split_heads" and coreml.linear_as_conv
    assert DEFAULT_REWRITES["tflite"].phase_upsample and not coreml.phase_upsample
