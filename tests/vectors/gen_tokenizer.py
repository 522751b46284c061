"""Generate ``tests/vectors/tokenizer.json``: CLIP token ids from transformers' CLIPTokenizer.

The reference is transformers' ``CLIPTokenizer`` loaded from ``models/tokenizer/`` (OpenAI's
vocabulary); our Python, Kotlin and Swift tokenizers must reproduce every id. Run from the
repository root:

    python tests/vectors/gen_tokenizer.py

The output is deterministic (fixed prompt order, sorted keys, no timestamps), so running
it again without a change in transformers or the vocabulary rewrites the same bytes.

File layout, kept plain for other languages::

    {"cases": [{"ids": [...], "padded": [...], "text": "..."}, ...],
     "meta": {"bos_token_id": 49406, "max_length": 77, ...}}

``ids`` is the unpadded encoding (bos, tokens, eos; cut to ``max_length``), ``padded`` the
model input of exactly ``max_length`` ids, padded with ``pad_token_id``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VOCAB_DIR = REPO / "models" / "tokenizer"
OUT = Path(__file__).resolve().parent / "tokenizer.json"
MAX_LENGTH = 77

_LONG_PROMPT = (
    "A breathtaking panoramic view of an ancient mountain monastery at golden hour, "
    "surrounded by cherry blossom trees, misty valleys and waterfalls, intricate wooden "
    "architecture, prayer flags fluttering in the wind, monks walking on stone paths, "
    "volumetric lighting, ultra detailed, 8k resolution, cinematic composition, "
    "trending on artstation, painted by a master of traditional Chinese landscape art, "
    "soft pastel colours, dramatic clouds, reflections in a still lake"
)

#: The prompts, grouped by what they exercise. Append new ones at the end of a group.
PROMPTS: list[str] = [
    # plain prompts and case
    "a photo of a cat",
    "an astronaut riding a horse on mars, digital art, highly detailed",
    "A Photo Of A CAT",
    "ALL CAPS PROMPT: A MAJESTIC LION",
    "sNaKe_CaSe_words and camelCaseWords and kebab-case-words",
    "1girl, solo, masterpiece, best quality, (ultra-detailed:1.2), [background]",
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    # empty and whitespace
    "",
    " ",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand  runs   of    spaces",
    "\t",
    "\n\n\n",
    "non\u00a0breaking\u2003em space\u3000ideographic space",
    "next\u0085line \u2028line separator \u2029paragraph separator",
    "\x1c\x1d\x1e\x1f information separators are not whitespace here",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom",
    "soft\u00adhyphen",
    "control\x00chars\x07\x1b[0m",
    # accents and normalization (NFC)
    "caf\u00e9 cr\u00e8me br\u00fbl\u00e9e",
    "cafe\u0301 (decomposed e + combining acute)",
    "na\u00efve r\u00e9sum\u00e9 fa\u00e7ade co\u00f6perate",
    "\u00c5ngstr\u00f6m \u0152uvre Stra\u00dfe \u1e9e",
    "a\u0308\u0301 stacked marks e\u0327\u0306 o\u0323\u0302",
    "\u2126 ohm sign, \u212a kelvin sign, \u212b angstrom sign",
    "\ufb01 ligature \ufb00 and \u01c4 \u01c5 \u01c6 digraphs",
    "\uff26\uff35\uff2c\uff2c\uff37\uff29\uff24\uff34\uff28 \uff54\uff45\uff58\uff54",
    # scripts
    "\u039f\u0394\u039f\u03a3 \u03a3\u03af\u03c3\u03c5\u03c6\u03bf\u03c2 final sigma",
    "\u0130stanbul \u0131s\u0131k dotted and dotless i",
    "\u041c\u043e\u0441\u043a\u0432\u0430 \u0437\u0438\u043c\u043e\u0439, \u0441\u043d\u0435\u0433",
    "\u6771\u4eac\u306e\u591c\u666f\u3001\u30cd\u30aa\u30f3\u304c\u8f1d\u304f",
    "\u4e00\u53ea\u53ef\u7231\u7684\u732b\u5728\u8349\u5730\u4e0a",
    "\uc11c\uc6b8\uc758 \ubd04 \ud48d\uacbd",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e",
    "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\u13a0\u13a1\u13a2 Cherokee",
    "Tokyo\u6771\u4eac\u041c\u043e\u0441\u043a\u0432\u0430mixed",
    # emoji and symbols
    "emoji \U0001f431\U0001f680\u2728",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family, "
    "\U0001f44d\U0001f3fd thumbs",
    "\U0001f1ef\U0001f1f5 flag \u2764\ufe0f heart",
    "music \u266a\u266b symbols \u2122 \u00a9 \u00ae",
    "math \u2211\u222b\u221a\u221e \u2260 \u2264 \u2265",
    # apostrophes and contractions
    "don't stop, it's fine, we're here, I've, I'm, you'll, he'd",
    "DON'T IT'S WE'RE THEY'VE I'M YOU'LL HE'D",
    "rock 'n' roll 'quoted' ''s '''",
    "'s at the start and ' alone",
    "\u2019curly\u2019 apostrophe it\u2019s",
    "'\u017f long s after an apostrophe",
    # punctuation and numbers
    "punctuation!!! ??? ... --- ;;; :) (^_^) [brackets] {braces}",
    "numbers 1234567890 3.14159 1,000,000 2024-01-01",
    "\u00bd \u00b2 \u00b3 \u2460 \u216b \u0663 \u096a unicode numerals",
    "email@example.com https://example.com/path?q=1&x=2#frag",
    "C++ C# .NET node.js",
    # HTML and mojibake (OpenAI's tokenizer would clean these; transformers does not)
    "Tom &amp; Jerry &lt;3 &quot;quoted&quot; &#39;x&#39;",
    "<b>bold</b> <img src='x'>",
    "mojibake caf\u00c3\u00a9 \u00c3\u00a9t\u00c3\u00a9",
    # special tokens written in the prompt
    "hello<|endoftext|>world",
    "<|startoftext|>already marked<|endoftext|>",
    "<|ENDOFTEXT|> in upper case is plain text",
    "x<|endoftext|>!",
    # truncation to 77
    "a " * 75,
    "a " * 76,
    "a very detailed " * 30,
    _LONG_PROMPT,
    "\U0001f431" * 40,
    "\U0001f9d1\u200d\U0001f680 " * 30,
    "\u6771\u4eac" * 60,
]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(vocab_dir: Path = VOCAB_DIR) -> dict:
    """The vector file's content, computed with transformers' CLIPTokenizer."""
    import tokenizers
    import transformers
    from transformers import CLIPTokenizer

    ref = CLIPTokenizer.from_pretrained(str(vocab_dir))
    cases = []
    for text in PROMPTS:
        ids = ref(text, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        padded = ref(text, truncation=True, max_length=MAX_LENGTH, padding="max_length")[
            "input_ids"
        ]
        cases.append({"ids": list(ids), "padded": list(padded), "text": text})
    meta = {
        "bos_token_id": ref.bos_token_id,
        "eos_token_id": ref.eos_token_id,
        "generator": "tests/vectors/gen_tokenizer.py",
        "max_length": MAX_LENGTH,
        "merges_sha256": sha256(vocab_dir / "merges.txt"),
        "pad_token_id": ref.pad_token_id,
        "reference": "transformers.CLIPTokenizer",
        "tokenizers_version": tokenizers.__version__,
        "transformers_version": transformers.__version__,
        "vocab": "models/tokenizer (OpenAI CLIP bpe_simple_vocab_16e6)",
        "vocab_sha256": sha256(vocab_dir / "vocab.json"),
    }
    return {"cases": cases, "meta": meta}


def dumps(data: dict) -> str:
    """JSON with one case per line: stable, diff-friendly, and plain for any parser."""
    case_lines = ",\n".join(
        "    " + json.dumps(case, sort_keys=True, ensure_ascii=True) for case in data["cases"]
    )
    meta = json.dumps(data["meta"], sort_keys=True, ensure_ascii=True, indent=2)
    meta = meta.replace("\n", "\n  ")
    return f'{{\n  "cases": [\n{case_lines}\n  ],\n  "meta": {meta}\n}}\n'


def generate(out_path: Path = OUT) -> None:
    """Write the vector file to ``out_path``."""
    out_path = Path(out_path)
    text = dumps(build())
    tmp = out_path.with_name(f".{out_path.name}.partial")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(out_path)


if __name__ == "__main__":
    generate(OUT)
    print(f"wrote {OUT.relative_to(REPO)} ({len(PROMPTS)} cases)")
