"""The bundle commands: export, inspect, validate, generate --bundle; errors as one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bundle_helpers import copy_bundle, fake_converter, tiny_onnx_bundle, use_fake_converters
from PIL import Image

from mobilediff_export.bundle import MANIFEST, PARITY_REPORT, read_manifest, verify_bundle
from mobilediff_export.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    return tiny_onnx_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def placeholder_source(tmp_path_factory):
    out = tmp_path_factory.mktemp("placeholder") / "bundle"
    with pytest.MonkeyPatch.context() as mp:
        use_fake_converters(mp)
        assert main(["export", "--target", "tflite,coreml", "-o", str(out)]) == 0
    return out


@pytest.fixture
def placeholder_bundle(placeholder_source, tmp_path):
    """A bundle of placeholder files written by ``mobilediff export``; free to tamper with."""
    return copy_bundle(placeholder_source, tmp_path / "bundle")


# ------------------------------------------------------------------ export


def test_export_prints_components_and_writes_a_verified_bundle(capsys, tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    out = tmp_path / "b"
    code, stdout, err = run(
        capsys,
        "export", "--model", "tiny", "--target", "tflite", "--target", "coreml",
        "--recipe", "fp16", "--override", "coreml:unet=palettize-4bit",
        "--steps", "2", "--sampler", "ddim", "--guidance", "5", "-o", out,
    )  # fmt: skip
    assert code == 0, err
    assert "coreml/Unet.mlpackage" in stdout and f"wrote {out}" in stdout
    manifest = read_manifest(out)
    assert manifest["components"]["tflite"]["unet"]["recipe"] == "fp16"
    assert manifest["components"]["coreml"]["unet"]["recipe"] == "palettize-4bit"
    assert manifest["components"]["coreml"]["unet"]["precision"] == "palettized-4bit"
    assert manifest["pipeline"]["guidance"] == {"mode": "cfg", "scale": 5.0, "negative_prompt": ""}
    assert len(manifest["pipeline"]["sampler"]["timesteps"]) == 2
    assert verify_bundle(out) == []


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--target", "metal"], "unknown target 'metal'"),
        (["--target", "tflite", "--recipe", "int9"], "unknown quantization recipe 'int9'"),
        (["--target", "tflite", "--override", "unet"], "must look like"),
        (["--target", "tflite", "--override", "tflite:unet=palettize-4bit"], "does not apply"),
        (["--target", "onnx", "--recipe", "int8-dynamic"], "none of the targets"),
        (["--target", "tflite", "--model", "no-such-model"], "no model named"),
        (["--target", "tflite", "--steps", "0"], "at least 1"),
    ],
)
def test_export_user_errors(capsys, tmp_path, monkeypatch, argv, pattern):
    use_fake_converters(monkeypatch)
    code, _, err = run(capsys, "export", *argv, "-o", tmp_path / "b")
    assert_one_line_error(code, err, pattern)
    assert list(tmp_path.iterdir()) == []


def test_export_w8a8_calibrates_on_the_prompts_file(capsys, tmp_path, monkeypatch):
    import mobilediff_export.export as export_module

    seen = {}

    def load_converter(target):
        convert = fake_converter(target)

        def with_calibration(module, config, component, *args, calibration=None):
            seen[component] = calibration
            return convert(module, config, component, *args)

        return with_calibration

    monkeypatch.setattr(export_module, "load_converter", load_converter)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# shapes\na red circle\n\na blue square\n")
    code, _, err = run(
        capsys,
        "export", "--model", "tiny", "--target", "tflite", "--recipe", "w8a8", "--steps", "1",
        "--calibration-prompts", prompts, "-o", tmp_path / "b",
    )  # fmt: skip
    assert code == 0, err
    calibration = seen["unet"]
    assert calibration is seen["text_encoder"] is seen["vae_decoder"]
    assert calibration.prompts == ("a red circle", "a blue square")
    assert calibration.prompts_from == str(prompts)
    assert len(calibration.for_component("unet")) == 2  # two prompts, one step each
    assert len(calibration.for_component("vae_decoder")) == 2


def test_export_rejects_an_empty_prompts_file(capsys, tmp_path, monkeypatch):
    use_fake_converters(monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# nothing here\n")
    code, _, err = run(
        capsys, "export", "--target", "tflite", "--recipe", "w8a8",
        "--calibration-prompts", prompts, "-o", tmp_path / "b",
    )  # fmt: skip
    assert_one_line_error(code, err, "no calibration prompts")
    assert not (tmp_path / "b").exists()


def test_export_keeps_an_existing_output(capsys, placeholder_bundle):
    before = (placeholder_bundle / MANIFEST).read_bytes()
    code, _, err = run(capsys, "export", "--target", "tflite", "-o", placeholder_bundle)
    assert_one_line_error(code, err, "already exists; pass --force")
    assert (placeholder_bundle / MANIFEST).read_bytes() == before


def test_export_missing_converter(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mobilediff_export.export.coreml", None)
    code, _, err = run(capsys, "export", "--target", "coreml", "-o", tmp_path / "b")
    assert_one_line_error(code, err, "coreml converter is not part of this installation")


def test_a_converter_crash_is_one_line_and_leaves_nothing(capfd, tmp_path, monkeypatch):
    """A converter tool's own exception (coremltools, litert-torch...) is not a traceback."""
    import os

    import mobilediff_export.export as export_module

    def load_converter(target):
        def crash(*_args, **_kwargs):
            os.write(2, b"E0000 tool chatter before the crash\n")
            raise ValueError("compression config conflict detected between ops\nmore detail")

        return crash

    monkeypatch.setattr(export_module, "load_converter", load_converter)
    out = tmp_path / "b"
    code = main(["export", "--model", "tiny", "--target", "tflite", "-o", str(out)])
    err = capfd.readouterr().err
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "tflite/text_encoder" in last and "ValueError: compression config conflict" in last
    assert "more detail" not in last
    assert "tool chatter before the crash" in err  # the captured tail is replayed
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ inspect


def test_inspect_good_bundle(capsys, placeholder_bundle):
    code, out, err = run(capsys, "inspect", placeholder_bundle)
    assert code == 0, err
    for needle in ("tflite", "coreml/Unet.mlpackage", "int8-fp16", "peak memory", "verified"):
        assert needle in out
    code, out, _ = run(capsys, "inspect", "--json", placeholder_bundle)
    summary = json.loads(out)
    assert code == 0 and summary["problems"] == [] and len(summary["components"]) == 6


def _edit(bundle, change):
    manifest = json.loads((bundle / MANIFEST).read_text())
    change(manifest)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("tamper", "pattern"),
    [
        (lambda b: (b / "tflite/unet.tflite").write_bytes(b"evil"), "changed file"),
        (lambda b: (b / "tokenizer/vocab.json").unlink(), "missing file: tokenizer/vocab.json"),
        (lambda b: (b / "tflite/extra.tflite").write_bytes(b"x"), "extra file"),
        (lambda b: _edit(b, lambda m: m.pop("files")), "schema"),
        (
            lambda b: _edit(
                b, lambda m: m["components"]["tflite"]["unet"].update(file="../../etc/passwd")
            ),
            "failed verification",
        ),
        (lambda b: (b / "tflite/link").symlink_to("/etc/passwd"), "symlink: tflite/link"),
    ],
)
def test_inspect_bad_bundles(capsys, placeholder_bundle, tamper, pattern):
    tamper(placeholder_bundle)
    code, out, err = run(capsys, "inspect", placeholder_bundle)
    assert_one_line_error(code, err, pattern)
    assert "problem(s):" in out


def test_inspect_reports_path_escaping(capsys, placeholder_bundle):
    _edit(placeholder_bundle, lambda m: m["tokenizer"].update(merges="/etc/passwd"))
    code, out, _ = run(capsys, "inspect", placeholder_bundle)
    assert code == 1 and "escapes the bundle" in out


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_inspect_not_a_bundle(capsys, tmp_path, what):
    path = tmp_path / "nothing" if what == "missing" else tmp_path
    code, _, err = run(capsys, "inspect", path)
    assert_one_line_error(code, err, "failed verification")


# ------------------------------------------------------------------ validate and generate


def test_validate_user_errors(capsys, tmp_path, placeholder_bundle):
    code, _, err = run(capsys, "validate", tmp_path / "nothing")
    assert_one_line_error(code, err, "bundle not found")
    (placeholder_bundle / "tflite/unet.tflite").write_bytes(b"evil")
    code, _, err = run(capsys, "validate", placeholder_bundle)
    assert_one_line_error(code, err, "failed verification")


def test_generate_from_bundle(capsys, onnx_bundle, tmp_path):
    out_png = tmp_path / "img.png"
    code, out, err = run(
        capsys, "generate", "--bundle", onnx_bundle, "a red circle", "-o", out_png, "--threads", 1
    )
    assert code == 0, err
    assert "(onnx)" in out
    image = Image.open(out_png)
    assert image.size == (64, 64) and image.mode == "RGB"


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--steps", "3"], "a bundle fixes its sampler"),
        (["--sampler", "euler"], "a bundle fixes its sampler"),
        (["--backend", "tflite"], "has no tflite models"),
        (["--guidance", "1"], "batch 2"),
    ],
)
def test_generate_from_bundle_user_errors(capsys, onnx_bundle, tmp_path, argv, pattern):
    code, _, err = run(
        capsys, "generate", "--bundle", onnx_bundle, "x", "-o", tmp_path / "x.png", *argv
    )
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "x.png").exists()


def test_generate_bundle_errors_without_a_bundle(capsys, tmp_path):
    code, _, err = run(
        capsys, "generate", "--bundle", tmp_path / "no", "x", "-o", tmp_path / "x.png"
    )
    assert_one_line_error(code, err, "failed verification")
    code, _, err = run(capsys, "generate", "x", "--backend", "onnx", "-o", tmp_path / "x.png")
    assert_one_line_error(code, err, "--bundle only")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--bundle", "b", "--model", "tiny", "x", "-o", "x.png"])
    assert exc.value.code == 2


def test_console_script_inspect_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mobilediff_export.cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_export_inspect_validate_generate_onnx(capsys, tmp_path):
    bundle = tmp_path / "bundle"
    code, out, err = run(capsys, "export", "--target", "onnx", "-o", bundle)
    assert code == 0, err
    code, out, err = run(capsys, "inspect", bundle)
    assert code == 0, err
    code, out, err = run(capsys, "validate", bundle)
    assert code == 0, err
    assert "passed" in out.splitlines()[-1]
    assert PARITY_REPORT in read_manifest(bundle)["files"]
    code, out, err = run(capsys, "generate", "--bundle", bundle, "a cat", "-o", tmp_path / "c.png")
    assert code == 0, err


def test_shared_bundle_is_untouched(onnx_bundle):
    """The session's shared bundle is read-only for everyone; a test that wrote to it would
    make the others order-dependent."""
    assert verify_bundle(onnx_bundle) == []
    assert "parity" not in read_manifest(onnx_bundle)["reports"]
