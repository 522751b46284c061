"""Regenerate ``models/tokenizer/`` from OpenAI's CLIP BPE vocabulary.

The vocabulary ships inside the open-clip-torch wheel on PyPI. This script downloads that
wheel (no dependencies, no install) into a temporary folder, takes
``open_clip/bpe_simple_vocab_16e6.txt.gz`` out of it, checks its sha256, and converts it
with ``mobilediff_export.tokenizer.convert_openai_bpe`` into ``vocab.json`` + ``merges.txt``
(the files transformers' CLIPTokenizer and our tokenizer read), next to a LICENSE and a
README that say where they came from.

    python scripts/fetch_clip_vocab.py [--out models/tokenizer] [--wheel PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mobilediff_export.fileio import atomic_write_text  # noqa: E402
from mobilediff_export.tokenizer import convert_openai_bpe  # noqa: E402

PACKAGE = "open-clip-torch==3.3.0"
MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

LICENSE = """\
The files vocab.json and merges.txt in this folder are converted from
bpe_simple_vocab_16e6.txt.gz of OpenAI's CLIP (https://github.com/openai/CLIP), as
redistributed in the open-clip-torch package on PyPI. They are under OpenAI CLIP's license:

MIT License

Copyright (c) 2021 OpenAI

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

README = f"""\
# CLIP tokenizer vocabulary

OpenAI's CLIP byte-level BPE vocabulary (49,408 tokens, 48,894 merges), the one every
Stable Diffusion 1.x / MobileDiffusion text encoder uses, in the layout transformers'
`CLIPTokenizer` and `mobilediff_export.tokenizer.CLIPTokenizer` read:

- `vocab.json`: token -> id (256 byte symbols, the same with `</w>`, the merges joined,
  then `<|startoftext|>` = 49406 and `<|endoftext|>` = 49407)
- `merges.txt`: `#version: 0.2`, then one merge per line, highest priority first

Source: `{MEMBER}` in the PyPI wheel `{PACKAGE}`
(sha256 of the .gz: `{SHA256}`), converted by
`mobilediff_export.tokenizer.convert_openai_bpe`. License: MIT, Copyright (c) 2021 OpenAI
(see `LICENSE`).

Regenerate (needs PyPI access):

    python scripts/fetch_clip_vocab.py
"""


def download_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(dest)],
        check=True,
    )
    wheels = sorted(dest.glob("open_clip_torch-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download left no open_clip_torch wheel in {dest}")
    return wheels[0]


def extract_bpe(wheel: Path, dest: Path) -> Path:
    """Take the BPE file out of the wheel and check it is the one we expect."""
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise SystemExit(f"{MEMBER} in {wheel.name} has sha256 {digest}, expected {SHA256}")
    out = dest / Path(MEMBER).name
    out.write_bytes(data)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "tokenizer")
    parser.add_argument("--wheel", type=Path, help="use this open-clip-torch wheel; no download")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download_wheel(Path(tmp))
        bpe_gz = extract_bpe(wheel, Path(tmp))
        vocab, merges = convert_openai_bpe(bpe_gz, args.out)
    atomic_write_text(args.out / "LICENSE", LICENSE)
    atomic_write_text(args.out / "README.md", README)
    for path in (vocab, merges):
        print(f"{path}  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
