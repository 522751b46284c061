"""The CLI: real output on good input, one clear line and a non-zero exit on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from mobilediff_export.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert pattern in lines[0], lines[0]


def test_info_lists_models(capsys):
    code, out, _ = run(capsys, "info")
    assert code == 0
    assert "mobilediffusion" in out and "tiny" in out


def test_info_paper_model(capsys):
    code, out, _ = run(capsys, "info", "mobilediffusion")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    unet_params = int(rows["unet"][1].replace(",", ""))
    assert abs(unet_params - 386e6) / 386e6 < 0.05
    assert "TFLOP" in out


def test_generate_writes_png(capsys, tmp_path):
    out_png = tmp_path / "img.png"
    code, out, err = run(
        capsys, "generate", "--model", "tiny", "a red circle", "-o", str(out_png), "--steps", "2"
    )
    assert code == 0, err
    image = Image.open(out_png)
    assert image.format == "PNG" and image.mode == "RGB"
    assert "wrote" in out
    code, _, err = run(capsys, "generate", "--model", "tiny", "x", "-o", str(out_png))
    assert_one_line_error(code, err, "--force")


def test_generate_from_diffusers_folder(capsys, sd_folder, tmp_path):
    out_png = tmp_path / "img.png"
    code, _, err = run(
        capsys,
        "generate",
        "--model",
        str(sd_folder),
        "a cat",
        "-o",
        str(out_png),
        "--steps",
        "2",
        "--guidance",
        "1",
    )
    assert code == 0, err
    assert Image.open(out_png).size == (32, 32)


@pytest.mark.parametrize(
    ("setup", "pattern"),
    [
        ("missing", "model path not found"),
        ("truncated", "corrupt or truncated"),
        ("shape", "has shape"),
        ("unknown_key", "unknown config key"),
    ],
)
def test_generate_bad_model(capsys, tmp_path, sd_folder, setup, pattern):
    folder = tmp_path / "model"
    if setup != "missing":
        shutil.copytree(sd_folder, folder)
    if setup == "truncated":
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    elif setup == "shape":
        config_path = folder / "unet" / "config.json"
        config = json.loads(config_path.read_text())
        config["block_out_channels"] = [32, 96]
        config_path.write_text(json.dumps(config))
    elif setup == "unknown_key":
        folder = tmp_path / "model.json"
        folder.write_text(json.dumps({"name": "x", "unet": {"wings": 2}}))
    code, _, err = run(
        capsys, "generate", "--model", str(folder), "a cat", "-o", str(tmp_path / "x.png")
    )
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "x.png").exists()


def test_generate_non_utf8_prompt_file(capsys, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"caf\xe9 au lait")
    code, _, err = run(
        capsys, "generate", "--prompt-file", str(prompt), "-o", str(tmp_path / "x.png")
    )
    assert_one_line_error(code, err, "UTF-8")


def test_generate_needs_a_prompt(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "-o", str(tmp_path / "x.png"))
    assert_one_line_error(code, err, "no prompt")


def test_console_script_has_no_traceback(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilediff_export.cli",
            "generate",
            "--model",
            str(tmp_path / "nope"),
            "hi",
            "-o",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
