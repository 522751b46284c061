"""The CLIP tokenizer: ids equal to transformers' CLIPTokenizer, files, conversion, errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mobilediff_export.config import TokenizerConfig
from mobilediff_export.errors import TokenizerError
from mobilediff_export.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    OPENAI_NUM_MERGES,
    CLIPTokenizer,
    bytes_to_unicode,
    convert_openai_bpe,
    normalize,
    read_prompt_file,
)

REPO = Path(__file__).resolve().parents[1]
VOCAB_DIR = REPO / "models" / "tokenizer"
VECTORS = REPO / "tests" / "vectors" / "tokenizer.json"
sys.path.insert(0, str(REPO / "tests" / "vectors"))

import gen_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_dir(VOCAB_DIR)


@pytest.fixture(scope="module")
def reference():
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(VOCAB_DIR))


@pytest.fixture(scope="module")
def vectors() -> dict:
    return json.loads(VECTORS.read_text(encoding="utf-8"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the real vocabulary ---------------------------------------------------------------


def test_checked_in_vocabulary_is_openais():
    vocab = json.loads((VOCAB_DIR / "vocab.json").read_text(encoding="utf-8"))
    merges = (VOCAB_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == 49408
    assert sorted(vocab.values()) == list(range(49408))
    assert vocab[BOS_TOKEN] == 49406 and vocab[EOS_TOKEN] == 49407
    assert merges[0] == "#version: 0.2"
    assert len(merges) == 1 + OPENAI_NUM_MERGES
    assert (VOCAB_DIR / "LICENSE").read_text().count("Copyright (c) 2021 OpenAI") == 1
    assert "fetch_clip_vocab.py" in (VOCAB_DIR / "README.md").read_text()


def test_vector_file_matches_the_checked_in_vocabulary(vectors):
    meta = vectors["meta"]
    assert meta["vocab_sha256"] == sha256(VOCAB_DIR / "vocab.json")
    assert meta["merges_sha256"] == sha256(VOCAB_DIR / "merges.txt")
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == (
        49406,
        49407,
        49407,
    )
    assert len(vectors["cases"]) >= 60


def test_ids_equal_the_vector_file(tokenizer, vectors):
    mismatches = []
    for case in vectors["cases"]:
        ids = tokenizer.encode(case["text"])
        padded = tokenizer(case["text"])
        if ids != case["ids"] or padded.tolist() != case["padded"]:
            mismatches.append(case["text"])
    assert not mismatches, f"{len(mismatches)} prompts differ, first: {mismatches[0]!r}"


def test_batch_equals_the_vector_file(tokenizer, vectors):
    cases = vectors["cases"]
    batch = tokenizer.tokenize([case["text"] for case in cases])
    assert batch.dtype == np.int64 and batch.shape == (len(cases), 77)
    assert batch.tolist() == [case["padded"] for case in cases]


def test_vector_file_is_up_to_date(vectors):
    """Regenerating gives the same cases; if this fails, run tests/vectors/generate.py."""
    pytest.importorskip("transformers")
    fresh = gen_tokenizer.build()
    assert fresh["cases"] == vectors["cases"]
    unversioned = {k: v for k, v in fresh["meta"].items() if not k.endswith("_version")}
    assert unversioned.items() <= vectors["meta"].items()


def _fuzz_prompts(tokenizer: CLIPTokenizer, n: int) -> list[str]:
    """Seeded random prompts mixing vocabulary words, prompt characters and separators."""
    rng = random.Random(1234)
    words = [t.removesuffix("</w>") for t in list(tokenizer.vocab)[512:49406:7]]
    chars = sorted({ch for text in gen_tokenizer.PROMPTS for ch in text})
    extras = [" ", "  ", "\t", "\n", "'s", "'LL", "<|endoftext|>", "<|ENDOFTEXT|>", "!!", "7"]
    prompts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 25)):
            r = rng.random()
            if r < 0.5:
                parts.append(rng.choice(words).upper() if rng.random() < 0.1 else rng.choice(words))
            elif r < 0.8:
                parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 4))))
            else:
                parts.append(rng.choice(extras))
            if rng.random() < 0.5:
                parts.append(" ")
        prompts.append("".join(parts))
    return prompts


def test_ids_equal_transformers_live(tokenizer, reference):
    prompts = list(gen_tokenizer.PROMPTS) + _fuzz_prompts(tokenizer, 400)
    expected = reference(prompts, truncation=True, max_length=77)["input_ids"]
    mismatches = [p for p, ids in zip(prompts, expected, strict=True) if tokenizer.encode(p) != ids]
    assert not mismatches, f"{len(mismatches)} prompts differ, first: {mismatches[0]!r}"


def test_known_ids(tokenizer):
    assert tokenizer.encode("a photo of a cat") == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tokenizer.encode("") == [49406, 49407]
    assert tokenizer.decode(tokenizer.encode("A Photo of a CAT!")) == "a photo of a cat !"


def test_truncation_keeps_eos_last(tokenizer):
    ids = tokenizer.encode("a very long prompt " * 40)
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    assert 49407 not in ids[:-1]
    assert tokenizer.encode("a " * 75) == [49406, *[320] * 75, 49407]
    assert tokenizer.encode("a " * 76) == [49406, *[320] * 75, 49407]


def test_call_pads_to_max_length(tokenizer):
    ids = tokenizer("a cat")
    assert ids.dtype == np.int64 and ids.shape == (77,)
    assert ids[:4].tolist() == [49406, 320, 2368, 49407]
    assert (ids[4:] == 49407).all()
    short = CLIPTokenizer(
        tokenizer.vocab, list(tokenizer.merge_ranks), TokenizerConfig(max_length=8, pad_token_id=0)
    )
    assert short("a cat").tolist() == [49406, 320, 2368, 49407, 0, 0, 0, 0]
    assert short.encode("a b c d e f g h") == [49406, 320, 321, 322, 323, 324, 325, 49407]


def test_normalization_is_what_transformers_does():
    assert normalize("Caf\u00e9  \t\nBar") == "caf\u00e9 bar"
    assert normalize("cafe\u0301") == "caf\u00e9"  # NFC
    assert normalize("\u039f\u0394\u039f\u03a3") == "\u03bf\u03b4\u03bf\u03c3"  # no final sigma
    assert normalize("&amp;") == "&amp;"  # no HTML unescaping
    assert normalize("caf\u00c3\u00a9") == "caf\u00e3\u00a9"  # no ftfy


def test_special_tokens_in_the_prompt(tokenizer):
    assert tokenizer.encode("a<|endoftext|>b") == [49406, 320, 49407, 321, 49407]
    upper = tokenizer.encode("<|ENDOFTEXT|>")
    assert 49407 not in upper[1:-1] and len(upper) > 3


def test_tokenize_rejects_a_single_string(tokenizer):
    with pytest.raises(TypeError):
        tokenizer.tokenize("a cat")


# --- a tiny synthetic vocabulary -------------------------------------------------------

SYNTHETIC_MERGES = [
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o</w>"),
    ("w", "o"),
    ("wo", "r"),
    ("wor", "l"),
    ("worl", "d</w>"),
    ("b", "c</w>"),  # ranked before ("a", "b"): "abc" must become a + bc</w>
    ("a", "b"),
]


def write_synthetic(folder: Path, merges=SYNTHETIC_MERGES) -> dict[str, int]:
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {t: i for i, t in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + lines, encoding="utf-8")
    return vocab


def synthetic_config(vocab: dict[str, int]) -> TokenizerConfig:
    return TokenizerConfig(
        max_length=16, bos_token_id=vocab[BOS_TOKEN], eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )  # fmt: skip


def test_synthetic_vocabulary(tmp_path):
    vocab = write_synthetic(tmp_path)
    tok = CLIPTokenizer.from_dir(tmp_path, synthetic_config(vocab))
    bos, eos = vocab[BOS_TOKEN], vocab[EOS_TOKEN]
    assert tok.encode("Hello, World!") == [
        bos, vocab["hello</w>"], vocab[",</w>"], vocab["world</w>"], vocab["!</w>"], eos,
    ]  # fmt: skip
    assert tok.encode("abc") == [bos, vocab["a"], vocab["bc</w>"], eos]
    assert tok.encode("hellow") == [bos, vocab["hell"], vocab["o"], vocab["w</w>"], eos]
    ids = tok.encode("hello " * 20)
    assert len(ids) == 16 and ids[-1] == eos


def test_synthetic_vocabulary_equals_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = write_synthetic(tmp_path)
    ours = CLIPTokenizer.from_dir(tmp_path, synthetic_config(vocab))
    ref = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    for text in ["Hello, World!", "abc abcabc", "hellow world", "héllo wörld 🐱", ""]:
        assert ours.encode(text) == ref(text, truncation=True, max_length=16)["input_ids"]


# --- errors -----------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        CLIPTokenizer.from_dir(tmp_path / "nope")
    write_synthetic(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(TokenizerError, match="merges file not found"):
        CLIPTokenizer.from_dir(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"a": "x"}', "not an integer"),
        (b'{"a": 1.5}', "not an integer"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_malformed_vocab(tmp_path, content, message):
    write_synthetic(tmp_path)
    (tmp_path / "vocab.json").write_bytes(content)
    with pytest.raises(TokenizerError, match=message):
        CLIPTokenizer.from_dir(tmp_path)


def test_malformed_merges(tmp_path):
    vocab = write_synthetic(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\nh e l\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"merges.txt:3"):
        CLIPTokenizer.from_dir(tmp_path, synthetic_config(vocab))
    (tmp_path / "merges.txt").write_text("q z\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="'qz'"):
        CLIPTokenizer.from_dir(tmp_path, synthetic_config(vocab))


def test_vocab_that_is_not_byte_level(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, BOS_TOKEN: 1, EOS_TOKEN: 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerError, match="byte symbol"):
        CLIPTokenizer.from_dir(tmp_path)


def test_special_ids_must_match_the_vocabulary(tmp_path):
    write_synthetic(tmp_path)
    with pytest.raises(TokenizerError, match="bos_token_id is 49406"):
        CLIPTokenizer.from_dir(tmp_path)  # default ids are OpenAI's, not the synthetic ones


def test_non_utf8_prompts(tokenizer, tmp_path):
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        tokenizer.encode(b"caf\xe9")
    assert tokenizer.encode("café".encode()) == tokenizer.encode("café")
    with pytest.raises(TokenizerError, match="surrogate"):
        tokenizer.encode("bad \ud800 text")
    with pytest.raises(TokenizerError, match="surrogate"):
        tokenizer("bad \udcff text")


def test_read_prompt_file(tmp_path):
    path = tmp_path / "prompt.txt"
    path.write_bytes("\ufeffa photo of a caf\u00e9\n".encode())
    assert read_prompt_file(path) == "a photo of a caf\u00e9\n"
    path.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(TokenizerError, match="not UTF-8"):
        read_prompt_file(path)
    with pytest.raises(TokenizerError, match="not found"):
        read_prompt_file(tmp_path / "missing.txt")


# --- converting OpenAI's BPE file -------------------------------------------------------


def synthetic_bpe_gz(path: Path, extra: int = 10) -> list[str]:
    """A file shaped like OpenAI's: a header, then more merges than the vocabulary uses."""
    symbols = list(bytes_to_unicode().values())
    pairs = [f"{a} {b}" for a in symbols for b in symbols][: OPENAI_NUM_MERGES + extra]
    path.write_bytes(
        gzip.compress(("bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(pairs)).encode())
    )
    return pairs[:OPENAI_NUM_MERGES]


def test_convert_openai_bpe_synthetic(tmp_path):
    merges = synthetic_bpe_gz(tmp_path / "bpe.txt.gz")
    out = tmp_path / "out"
    convert_openai_bpe(tmp_path / "bpe.txt.gz", out)
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "vocab.json"]  # no temp files
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408
    symbols = list(bytes_to_unicode().values())
    assert vocab["!"] == 0 and vocab[symbols[255]] == 255 and vocab["!</w>"] == 256
    assert vocab[merges[0].replace(" ", "")] == 512
    assert vocab[merges[-1].replace(" ", "")] == 49405
    assert (vocab[BOS_TOKEN], vocab[EOS_TOKEN]) == (49406, 49407)
    lines = (out / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and lines[1:] == merges
    assert CLIPTokenizer.from_dir(out).encode("") == [49406, 49407]


def test_convert_openai_bpe_rejects_bad_input(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        convert_openai_bpe(tmp_path / "missing.gz", tmp_path / "out")
    (tmp_path / "plain.gz").write_bytes(b"not gzip at all")
    with pytest.raises(TokenizerError, match="not a gzipped"):
        convert_openai_bpe(tmp_path / "plain.gz", tmp_path / "out")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"header\ni n\nt h\n"))
    with pytest.raises(TokenizerError, match="48894"):
        convert_openai_bpe(tmp_path / "short.gz", tmp_path / "out")
    assert not (tmp_path / "out" / "vocab.json").exists()


def _open_clip_wheel() -> Path:
    """The open-clip-torch 3.3.0 wheel that scripts/setup.sh downloads (tests never download)."""
    default = REPO / ".venv" / "downloads" / "open_clip_torch-3.3.0-py3-none-any.whl"
    path = Path(os.environ.get("MOBILEDIFF_OPEN_CLIP_WHEEL", default))
    assert path.is_file(), f"{path} is missing: run scripts/setup.sh, which downloads it"
    return path


def test_convert_openai_bpe_real_round_trip(tmp_path):
    wheel = _open_clip_wheel()
    data = zipfile.ZipFile(wheel).read("open_clip/bpe_simple_vocab_16e6.txt.gz")
    assert hashlib.sha256(data).hexdigest() == (
        "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    )
    (tmp_path / "bpe.gz").write_bytes(data)
    convert_openai_bpe(tmp_path / "bpe.gz", tmp_path / "out")
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / "out" / name).read_bytes() == (VOCAB_DIR / name).read_bytes()
