r"""CLIP's byte-level BPE tokenizer, from ``vocab.json`` + ``merges.txt``.

It gives the same ids as transformers' ``CLIPTokenizer`` (the fast, ``tokenizers``-backed
one that transformers 5 ships), which is what diffusers pipelines feed their text encoder.
Kotlin and Swift mirror this file; ``tests/vectors/tokenizer.json`` holds the ids all three
must reproduce. A prompt becomes ids in five steps:

1. **Special tokens.** ``<|startoftext|>`` and ``<|endoftext|>`` written literally in the
   prompt (exact case) become their ids; the text between them is tokenized on its own.
2. **Normalize.** Unicode NFC, then every run of whitespace becomes one space, then each
   character is lower-cased on its own (so a final capital sigma becomes ``σ``, not ``ς``).
3. **Pre-tokenize.** ``PATTERN`` splits the text into words: contractions (``'s``, ``'t``,
   ...), runs of letters, single digits, runs of other non-space characters; whitespace is
   dropped. The pattern is matched case-sensitively (the text is already lower-case).
   A word that spells a special token in another case (``<|ENDOFTEXT|>``, lower-cased by
   step 2) is split again into ``<|``, ``endoftext``, ``|>``, as transformers' byte-level
   pre-tokenizer does; it never becomes the special id.
4. **Bytes to symbols.** Each word's UTF-8 bytes map to printable characters through
   ``bytes_to_unicode``; the last symbol gets the end-of-word marker ``</w>``.
5. **BPE.** Adjacent symbols merge, lowest merge rank first, until no ranked pair is left;
   each resulting symbol is a vocabulary entry.

The ids are ``bos + words + eos``, cut to ``max_length`` with ``eos`` kept last, and padded
with ``pad_token_id`` for the model.

Character classes are Unicode's: ``\p{L}`` letters, ``\p{N}`` numbers, ``\s`` the
White_Space property. U+001C..U+001F are *not* whitespace here, although Python's
``str.isspace`` and Java's ``Character.isWhitespace`` say they are; other languages must
use the Unicode property, not their platform's "is space" helper.

Differences from OpenAI's original ``simple_tokenizer.py`` (open_clip uses the same): it
first repairs text with ``ftfy.fix_text`` and ``html.unescape`` (twice), strips it, and
lower-cases the whole string; its pattern is case-insensitive and maps a special token in
any case to its id. Transformers (and therefore we) do none of that, so ``&amp;``,
mojibake such as ``cafÃ©``, a final ``Σ``, a long ``ſ`` after an apostrophe, and
``<|ENDOFTEXT|>`` tokenize differently from OpenAI's code. Diffusers pipelines run
transformers' tokenizer, so we follow it.

Unicode versions: the ids equal transformers' for every character in Python's Unicode
tables (14.0 on Python 3.11), checked code point by code point and on random prompts,
with one exception: the ``tokenizers`` library normalizes with older tables (about Unicode
10), so text with one of the ~100 combining marks added in Unicode 11-14 (Arabic Quranic
annotation marks, two Malayalam viramas, ...) can be NFC-reordered by us and not by
transformers. Characters newer than 14.0 can differ too (class or lower case).
"""

from __future__ import annotations

import gzip
import json
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import numpy as np
import regex

from .config import TokenizerConfig
from .errors import TokenizerError
from .fileio import atomic_write_text

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MERGES_HEADER = "#version: 0.2"

#: CLIP's pre-tokenization pattern (step 3). Matched case-sensitively, like transformers.
PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>"
    r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
_SPECIAL_SPLIT = regex.compile(r"(<\|startoftext\|>|<\|endoftext\|>)")
_WHITESPACE = regex.compile(r"\s+")

#: OpenAI's vocabulary: 256 byte symbols, the same with ``</w>``, 48,894 merges, 2 specials.
OPENAI_NUM_MERGES = 49152 - 256 - 2

_DEFAULT_CONFIG = TokenizerConfig()
_NO_RANK = float("inf")
_CACHE_SIZE = 100_000


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2's, used by CLIP).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
    soft hyphen, ...) take the characters from U+0100 on, in byte order. The dict's order
    (printable bytes first) is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def normalize(text: str) -> str:
    """Step 2: NFC, whitespace runs to one space, per-character lower case."""
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text)
    # Per character, like Rust's char::to_lowercase: str.lower() on the whole string would
    # apply the final-sigma rule, which transformers does not.
    return "".join(ch.lower() for ch in text)


def pre_tokenize(text: str) -> list[str]:
    """Step 3 on normalized text: the words BPE runs on."""
    words: list[str] = []
    for word in PATTERN.findall(text):
        if word in (BOS_TOKEN, EOS_TOKEN):
            words.extend(("<|", word[2:-2], "|>"))
        else:
            words.append(word)
    return words


class CLIPTokenizer:
    """Prompt -> token ids, identical to transformers' ``CLIPTokenizer``."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        config: TokenizerConfig = _DEFAULT_CONFIG,
    ) -> None:
        _check_vocab(vocab, merges, config)
        self.config = config
        self.vocab = dict(vocab)
        self.merge_ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._id_to_token = {i: t for t, i in vocab.items()}
        self._byte_symbols = bytes_to_unicode()
        self._symbol_bytes = {s: b for b, s in self._byte_symbols.items()}
        self._special = {BOS_TOKEN: vocab[BOS_TOKEN], EOS_TOKEN: vocab[EOS_TOKEN]}
        self._cache: dict[str, tuple[int, ...]] = {}

    # --- loading ---------------------------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        vocab_json: str | Path,
        merges_txt: str | Path,
        config: TokenizerConfig = _DEFAULT_CONFIG,
    ) -> CLIPTokenizer:
        return cls(read_vocab(vocab_json), read_merges(merges_txt), config)

    @classmethod
    def from_dir(
        cls, directory: str | Path, config: TokenizerConfig = _DEFAULT_CONFIG
    ) -> CLIPTokenizer:
        """Load ``vocab.json`` + ``merges.txt`` from a folder, else its ``tokenizer.json``.

        transformers 5 saves only ``tokenizer.json`` (the ``tokenizers`` library's file,
        which carries the same vocabulary and merges); Hub folders usually have both.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise TokenizerError(f"tokenizer folder not found: {directory}")
        vocab_json, merges_txt = directory / "vocab.json", directory / "merges.txt"
        if not vocab_json.exists() and (directory / "tokenizer.json").is_file():
            return cls.from_tokenizer_json(directory / "tokenizer.json", config)
        return cls.from_files(vocab_json, merges_txt, config)

    @classmethod
    def from_tokenizer_json(
        cls, path: str | Path, config: TokenizerConfig = _DEFAULT_CONFIG
    ) -> CLIPTokenizer:
        """The BPE model inside a ``tokenizers`` ``tokenizer.json``."""
        path = Path(path)
        model = _read_json(path)
        model = model.get("model") if isinstance(model, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise TokenizerError(f"{path} does not hold a BPE tokenizer model")
        vocab, raw_merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not isinstance(raw_merges, list):
            raise TokenizerError(f"{path}: the BPE model lacks its vocab or merges")
        merges = []
        for rank, merge in enumerate(raw_merges):
            parts = merge.split(" ") if isinstance(merge, str) else merge
            if (
                not isinstance(parts, list)
                or len(parts) != 2
                or not all(isinstance(p, str) and p for p in parts)
            ):
                raise TokenizerError(f"{path}: merge {rank} is malformed: {merge!r}")
            merges.append((parts[0], parts[1]))
        return cls(vocab, merges, config)

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``vocab.json`` + ``merges.txt`` (merges in rank order), atomically each."""
        merges = sorted(self.merge_ranks, key=self.merge_ranks.__getitem__)
        return write_bpe_files(directory, self.vocab, merges)

    # --- encoding --------------------------------------------------------------------------

    def encode(self, text: str | bytes) -> list[int]:
        """``bos + tokens + eos``, cut to ``max_length`` with ``eos`` kept last; no padding."""
        ids = [self.config.bos_token_id]
        for i, part in enumerate(_SPECIAL_SPLIT.split(_as_text(text))):
            if i % 2:  # odd parts are the special tokens themselves
                ids.append(self._special[part])
            elif part:
                for word in pre_tokenize(normalize(part)):
                    ids.extend(self._bpe(word))
        return [*ids[: self.config.max_length - 1], self.config.eos_token_id]

    def __call__(self, text: str | bytes) -> np.ndarray:
        """The model input for one prompt: int64 ids of shape ``(max_length,)``."""
        ids = self.encode(text)
        out = np.full(self.config.max_length, self.config.pad_token_id, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def tokenize(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """A batch of prompts: int64 ids of shape ``(len(texts), max_length)``."""
        if isinstance(texts, str | bytes):
            raise TypeError("tokenize takes a list of prompts; use tokenizer(text) for one")
        out = np.full((len(texts), self.config.max_length), self.config.pad_token_id, np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Ids back to (normalized) text, for logs and debugging; not a strict inverse."""
        special = {self.config.bos_token_id, self.config.eos_token_id, self.config.pad_token_id}
        tokens = []
        for i in map(int, ids):
            if skip_special_tokens and i in special:
                continue
            if i not in self._id_to_token:
                raise TokenizerError(f"token id {i} is not in the vocabulary")
            tokens.append(self._id_to_token[i])
        symbols = "".join(tokens).replace(END_OF_WORD, " ")
        data = bytes(self._symbol_bytes[ch] if ch != " " else 32 for ch in symbols)
        return data.decode("utf-8", errors="replace").strip()

    def _bpe(self, word: str) -> tuple[int, ...]:
        """Step 4 and 5 for one word, memoized (prompts repeat words a lot)."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = [self._byte_symbols[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        ranks = self.merge_ranks
        while len(symbols) > 1:
            best = min(pairwise(symbols), key=lambda pair: ranks.get(pair, _NO_RANK))
            if best not in ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = tuple(self.vocab[s] for s in symbols)
        if len(self._cache) < _CACHE_SIZE:
            self._cache[word] = ids
        return ids


# --- files ----------------------------------------------------------------------------------


def read_vocab(path: str | Path) -> dict[str, int]:
    """``vocab.json``: a JSON object from token string to id."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object of token -> id")
    for token, index in data.items():
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise TokenizerError(f"{path}: token {token!r} has id {index!r}, not an integer >= 0")
    return data


def read_merges(path: str | Path) -> list[tuple[str, str]]:
    """``merges.txt``: an optional ``#version`` line, then one ``left right`` pair a line."""
    path = Path(path)
    lines = _read_text(path, "merges file").split("\n")
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = []
    for number, line in enumerate(lines, start=2):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(
                f"{path}:{number}: a merge is two tokens and a space, got {line!r}"
            )
        merges.append((parts[0], parts[1]))
    return merges


def read_prompt_file(path: str | Path) -> str:
    """A prompt from a UTF-8 text file (a BOM is dropped, surrounding whitespace kept)."""
    text = _read_text(Path(path), "prompt file")
    return text[1:] if text.startswith("\ufeff") else text


def convert_openai_bpe(bpe_gz: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` -> ``vocab.json`` + ``merges.txt``.

    Builds the vocabulary exactly as OpenAI's ``SimpleTokenizer`` does: the 256 byte
    symbols, the same with ``</w>``, the 48,894 merges joined, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (49,408 tokens). Both files are written atomically.
    """
    bpe_gz, out_dir = Path(bpe_gz), Path(out_dir)
    try:
        text = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"BPE file not found: {bpe_gz}") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{bpe_gz} is not a gzipped UTF-8 BPE file: {exc}") from None
    lines = text.split("\n")[1 : 1 + OPENAI_NUM_MERGES]  # line 0 is a header
    if lines and not lines[-1]:
        lines.pop()
    if len(lines) != OPENAI_NUM_MERGES:
        raise TokenizerError(
            f"{bpe_gz} has {len(lines)} merges; OpenAI's CLIP vocabulary has {OPENAI_NUM_MERGES}"
        )
    merges = []
    for number, line in enumerate(lines, start=2):
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{bpe_gz}:{number}: malformed merge {line!r}")
        merges.append((parts[0], parts[1]))
    symbols = list(bytes_to_unicode().values())
    tokens = [
        *symbols,
        *(s + END_OF_WORD for s in symbols),
        *(a + b for a, b in merges),
        BOS_TOKEN,
        EOS_TOKEN,
    ]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise TokenizerError(f"{bpe_gz}: merges produce duplicate tokens")
    return write_bpe_files(out_dir, vocab, merges)


def write_bpe_files(
    directory: str | Path, vocab: dict[str, int], merges: Sequence[tuple[str, str]]
) -> tuple[Path, Path]:
    """``vocab.json`` + ``merges.txt`` as transformers writes them, each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = directory / "vocab.json", directory / "merges.txt"
    atomic_write_text(vocab_path, json.dumps(vocab, ensure_ascii=False) + "\n")
    atomic_write_text(merges_path, MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab_path, merges_path


def _check_vocab(
    vocab: dict[str, int], merges: Sequence[tuple[str, str]], config: TokenizerConfig
) -> None:
    missing = [
        s for b in bytes_to_unicode().values() for s in (b, b + END_OF_WORD) if s not in vocab
    ]
    if missing:
        raise TokenizerError(
            f"vocabulary lacks byte symbol {missing[0]!r} ({len(missing)} missing); "
            "it is not a byte-level CLIP vocabulary"
        )
    if config.max_length < 2:
        raise TokenizerError(
            f"tokenizer.max_length {config.max_length} leaves no room for bos, eos"
        )
    for name, token, index in (
        ("bos_token_id", BOS_TOKEN, config.bos_token_id),
        ("eos_token_id", EOS_TOKEN, config.eos_token_id),
    ):
        if vocab.get(token) != index:
            raise TokenizerError(
                f"tokenizer.{name} is {index} but the vocabulary has {token} at {vocab.get(token)}"
            )
    if config.pad_token_id not in set(vocab.values()):
        raise TokenizerError(
            f"tokenizer.pad_token_id {config.pad_token_id} is not in the vocabulary"
        )
    for rank, (left, right) in enumerate(merges):
        if left + right not in vocab:
            raise TokenizerError(
                f"merge {rank} ({left!r} {right!r}) makes {left + right!r}, "
                "which is not in the vocabulary"
            )


def _as_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"prompt is not valid UTF-8: {exc}") from None
    if not isinstance(text, str):
        raise TypeError(f"a prompt is str or UTF-8 bytes, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(f"prompt is not valid Unicode text (lone surrogate?): {exc}") from None
    return text


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise TokenizerError(f"{what} {path} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{what} {path} is not UTF-8 text: {exc}") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path, "vocabulary file"))
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{path} is not valid JSON: {exc}") from None
