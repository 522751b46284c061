"""The synthetic captioned data set: flat shapes drawn on the fly, with English captions.

No downloads: every image is drawn from its scene description, and every scene is drawn
from a random generator seeded by ``(seed, split, stream, index)``, so scene ``i`` of a
split is the same on every machine, in every process and after every resume.

Three kinds of scene, each with its caption templates::

    single     "a red circle on a blue background"      one object; size words optional
               "a small yellow triangle on a black background"
    relation   "a red circle left of a blue square"     two different objects, left of /
               "a green square above a white triangle    right of / above / below, the
                on a purple background"                  background named half the time
    count      "two orange circles on a green background"  two or three identical objects

The train / validation split holds out *captions*, not images: each scene kind has a
key (single: colour, shape, background; relation: the two objects and the axis, in
canonical order; count: number, colour, shape, background) and a seeded hash sends
``holdout_fraction`` of the keys to validation only. The models never see a held-out
combination, so evaluation measures whether they compose what they learned.

A relation is stored canonically (``first`` is the left or the upper object) so that
"a red circle left of a blue square" and "a blue square right of a red circle" are one
key and one set of classifier labels; ``SceneLabels`` are what the evaluation classifier
predicts from pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (250, 220, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (250, 135, 20),
    "purple": (140, 60, 180),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
KINDS: tuple[str, ...] = ("single", "relation", "count")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
AXES: tuple[str, ...] = ("none", "horizontal", "vertical")
SIZES: tuple[str, ...] = ("small", "big")
COUNT_WORDS = {2: "two", 3: "three"}
SPLITS = {"train": 0, "val": 1}

# Object sizes as a fraction of the image side (the bounding box of the shape).
SIZE_RANGES = {
    "small": (0.28, 0.34),
    "big": (0.44, 0.52),
    "relation": (0.34, 0.40),
    "count": (0.25, 0.29),
}


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    cx: float
    """Centre, in fractions of the image side."""
    cy: float
    size: float
    """Bounding-box side, in fractions of the image side."""


@dataclass(frozen=True)
class Scene:
    """What to draw and what the caption says about it."""

    kind: str
    background: str
    objects: tuple[SceneObject, ...]
    caption: str
    axis: str = "none"
    """For relations: ``horizontal`` (objects[0] is left) or ``vertical`` (objects[0] above)."""
    size_word: str | None = None
    """For single objects whose caption names the size."""
    names_background: bool = True
    colour_jitter: tuple[int, ...] = ()

    @property
    def labels(self) -> SceneLabels:
        return SceneLabels.of(self)


@dataclass(frozen=True)
class SceneLabels:
    """The attributes the evaluation classifier predicts, as class indices.

    ``first`` is the only object of a single scene, the repeated object of a count scene
    and the left (horizontal) or upper (vertical) object of a relation; ``second`` is the
    other object of a relation and ``none`` (index ``len(...)``) otherwise.
    """

    background: int
    count: int  # 0, 1, 2 for one, two, three objects
    first_colour: int
    first_shape: int
    second_colour: int
    second_shape: int
    axis: int
    size: int  # 0 small, 1 big; only meaningful for single scenes

    @classmethod
    def of(cls, scene: Scene) -> SceneLabels:
        first = scene.objects[0]
        second = scene.objects[1] if scene.kind == "relation" else None
        size = 0
        if scene.kind == "single":
            size = 1 if first.size >= SIZE_RANGES["big"][0] else 0
        return cls(
            background=COLOUR_NAMES.index(scene.background),
            count=len(scene.objects) - 1,
            first_colour=COLOUR_NAMES.index(first.colour),
            first_shape=SHAPES.index(first.shape),
            second_colour=COLOUR_NAMES.index(second.colour) if second else len(COLOUR_NAMES),
            second_shape=SHAPES.index(second.shape) if second else len(SHAPES),
            axis=AXES.index(scene.axis),
            size=size,
        )

    def as_array(self) -> np.ndarray:
        return np.array([getattr(self, name) for name in LABEL_HEADS], dtype=np.int64)


# Classifier heads: name -> number of classes.
LABEL_HEADS: dict[str, int] = {
    "background": len(COLOUR_NAMES),
    "count": 3,
    "first_colour": len(COLOUR_NAMES),
    "first_shape": len(SHAPES),
    "second_colour": len(COLOUR_NAMES) + 1,
    "second_shape": len(SHAPES) + 1,
    "axis": len(AXES),
    "size": len(SIZES),
}


def checked_heads(scene: Scene) -> tuple[str, ...]:
    """The label heads a caption of this scene makes a claim about."""
    heads = ["count", "first_colour", "first_shape"]
    if scene.names_background:
        heads.append("background")
    if scene.kind == "relation":
        heads += ["second_colour", "second_shape", "axis"]
    if scene.kind == "single" and scene.size_word is not None:
        heads.append("size")
    return tuple(heads)


# --------------------------------------------------------------------------- keys and split


def _key_fraction(key: tuple, seed: int) -> float:
    digest = hashlib.sha256(repr((seed, key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def all_keys(kind: str) -> list[tuple]:
    """Every caption key of a scene kind (see the module docstring)."""
    objects = [(c, s) for c in COLOUR_NAMES for s in SHAPES]
    if kind == "single":
        return [(c, s, bg) for c, s in objects for bg in COLOUR_NAMES if bg != c]
    if kind == "relation":
        return [(a, b, axis) for a in objects for b in objects if a != b for axis in AXES[1:]]
    if kind == "count":
        return [
            (n, c, s, bg) for n in COUNT_WORDS for c, s in objects for bg in COLOUR_NAMES if bg != c
        ]
    raise ValueError(f"unknown scene kind {kind!r}")


@dataclass(frozen=True)
class SyntheticShapes:
    """The data set: ``scene(split, index)`` and batches of rendered images and captions.

    ``stream`` separates independent uses of one split (each training stage draws its
    own scenes); the held-out keys depend on ``seed`` only.
    """

    image_size: int = 32
    seed: int = 0
    holdout_fraction: float = 0.15
    kind_weights: tuple[float, float, float] = (0.45, 0.40, 0.15)
    colour_jitter: int = 10
    supersample: int = 4

    @cached_property
    def keys(self) -> dict[str, dict[str, list[tuple]]]:
        """``keys[split][kind]``: the caption keys each split draws from."""
        out: dict[str, dict[str, list[tuple]]] = {"train": {}, "val": {}}
        for kind in KINDS:
            keys = all_keys(kind)
            held = [k for k in keys if _key_fraction(k, self.seed) < self.holdout_fraction]
            kept = [k for k in keys if _key_fraction(k, self.seed) >= self.holdout_fraction]
            out["train"][kind], out["val"][kind] = kept, held
        return out

    def rng(self, split: str, stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, SPLITS[split], stream, index])

    def scene(self, split: str, index: int, stream: int = 0) -> Scene:
        """Scene ``index`` of ``split``; the same arguments always give the same scene."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        rng = self.rng(split, stream, index)
        weights = np.asarray(self.kind_weights, dtype=np.float64)
        kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
        keys = self.keys[split][kind]
        if not keys:
            raise ValueError(f"the {split} split has no {kind} captions; check holdout_fraction")
        key = keys[int(rng.integers(len(keys)))]
        return _make_scene(kind, key, rng, self.colour_jitter)

    def scenes(self, split: str, indices: range | list[int], stream: int = 0) -> list[Scene]:
        return [self.scene(split, i, stream) for i in indices]

    def render(self, scene: Scene) -> np.ndarray:
        return render(scene, self.image_size, self.supersample)

    def batch(
        self, split: str, indices: range | list[int], stream: int = 0
    ) -> tuple[np.ndarray, list[str], list[Scene]]:
        """Images as float32 ``(B, 3, S, S)`` in [-1, 1], their captions and scenes."""
        scenes = self.scenes(split, indices, stream)
        images = np.stack([self.render(s) for s in scenes]).astype(np.float32)
        images = images.transpose(0, 3, 1, 2) / 127.5 - 1.0
        return images, [s.caption for s in scenes], scenes


# --------------------------------------------------------------------------- scenes


def _jitter(rng: np.random.Generator, amount: int, slots: int) -> tuple[int, ...]:
    """RGB offsets for the background and each distinct object colour, 3 per slot."""
    return tuple(int(v) for v in rng.integers(-amount, amount + 1, size=3 * slots))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _make_scene(kind: str, key: tuple, rng: np.random.Generator, jitter: int) -> Scene:
    if kind == "single":
        colour, shape, background = key
        size_word = SIZES[int(rng.integers(2))]
        lo, hi = SIZE_RANGES[size_word]
        size = float(rng.uniform(lo, hi))
        cx, cy = (float(rng.uniform(size / 2 + 0.04, 1 - size / 2 - 0.04)) for _ in range(2))
        named = bool(rng.integers(2))
        words = f"{size_word} {colour}" if named else colour
        caption = (
            f"{_article(words)} {words} {shape} on {_article(background)} {background} background"
        )
        objects = (SceneObject(colour, shape, cx, cy, size),)
        return Scene(
            kind,
            background,
            objects,
            caption,
            size_word=size_word if named else None,
            colour_jitter=_jitter(rng, jitter, 2),
        )
    if kind == "relation":
        (ca, sa), (cb, sb), axis = key
        used = {ca, cb}
        background = [c for c in COLOUR_NAMES if c not in used][
            int(rng.integers(len(COLOUR_NAMES) - len(used)))
        ]
        sizes = [float(rng.uniform(*SIZE_RANGES["relation"])) for _ in range(2)]
        # Along the axis: first before second with a clear gap between them; across it:
        # close enough that the relation is unambiguous.
        margin, gap = 0.03, float(rng.uniform(0.06, 0.12))
        span = 1 - 2 * margin - sizes[0] - sizes[1] - gap  # free room along the axis
        start = margin + sizes[0] / 2 + float(rng.uniform(0, max(span, 0.0)))
        along = [start, start + (sizes[0] + sizes[1]) / 2 + gap]
        if along[1] + sizes[1] / 2 > 1 - margin:  # keep the pair inside: shift it back
            along = [a - (along[1] + sizes[1] / 2 - (1 - margin)) for a in along]
        centre = float(rng.uniform(0.35, 0.65))
        across = [
            float(np.clip(centre + rng.uniform(-0.1, 0.1), s / 2 + 0.03, 1 - s / 2 - 0.03))
            for s in sizes
        ]
        if axis == "horizontal":
            pos = [(along[0], across[0]), (along[1], across[1])]
        else:
            pos = [(across[0], along[0]), (across[1], along[1])]
        objects = (
            SceneObject(ca, sa, pos[0][0], pos[0][1], sizes[0]),
            SceneObject(cb, sb, pos[1][0], pos[1][1], sizes[1]),
        )
        # Say it either way round: "A left of B" or "B right of A".
        flipped = bool(rng.integers(2))
        word = {"horizontal": ("left of", "right of"), "vertical": ("above", "below")}[axis]
        subject, other, relation = (
            (objects[1], objects[0], word[1]) if flipped else (objects[0], objects[1], word[0])
        )
        caption = (
            f"{_article(subject.colour)} {subject.colour} {subject.shape} {relation} "
            f"{_article(other.colour)} {other.colour} {other.shape}"
        )
        named = bool(rng.integers(2))
        if named:
            caption += f" on {_article(background)} {background} background"
        return Scene(
            kind,
            background,
            objects,
            caption,
            axis=axis,
            names_background=named,
            colour_jitter=_jitter(rng, jitter, 3),
        )
    if kind == "count":
        n, colour, shape, background = key
        size = float(rng.uniform(*SIZE_RANGES["count"]))
        centres: list[tuple[float, float]] = []
        while len(centres) < n:  # rejection sampling: no two objects overlap
            c = tuple(float(v) for v in rng.uniform(size / 2 + 0.03, 1 - size / 2 - 0.03, 2))
            if all(max(abs(c[0] - x), abs(c[1] - y)) > size + 0.03 for x, y in centres):
                centres.append(c)  # type: ignore[arg-type]
        objects = tuple(SceneObject(colour, shape, x, y, size) for x, y in centres)
        caption = (
            f"{COUNT_WORDS[n]} {colour} {shape}s on {_article(background)} {background} background"
        )
        return Scene(kind, background, objects, caption, colour_jitter=_jitter(rng, jitter, 2))
    raise ValueError(f"unknown scene kind {kind!r}")


# --------------------------------------------------------------------------- drawing


def _colour(name: str, jitter: tuple[int, ...]) -> tuple[int, int, int]:
    base = COLOURS[name]
    return tuple(int(np.clip(v + d, 0, 255)) for v, d in zip(base, jitter, strict=True))  # type: ignore[return-value]


def render(scene: Scene, size: int, supersample: int = 4) -> np.ndarray:
    """The scene as uint8 RGB ``(size, size, 3)``, drawn large and box-filtered down."""
    big = size * supersample
    jitter = list(scene.colour_jitter) or [0] * 3 * (len(scene.objects) + 1)
    slots = len(jitter) // 3
    background = _colour(scene.background, jitter[:3])
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    for k, obj in enumerate(scene.objects):
        slot = min(k + 1, slots - 1)  # repeated objects share one colour
        fill = _colour(obj.colour, jitter[3 * slot : 3 * slot + 3])
        half = obj.size * big / 2
        x, y = obj.cx * big, obj.cy * big
        box = (x - half, y - half, x + half, y + half)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}")
    if supersample > 1:
        image = image.resize((size, size), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def preview_grid(
    data: SyntheticShapes, split: str, count: int, scale: int = 4, stream: int = 0
) -> tuple[Image.Image, list[str]]:
    """A contact sheet of ``count`` scenes (upscaled ``scale`` times) and their captions."""
    scenes = data.scenes(split, range(count), stream)
    return contact_sheet([data.render(s) for s in scenes], scale), [s.caption for s in scenes]


def contact_sheet(images: list[np.ndarray], scale: int = 4, columns: int = 8) -> Image.Image:
    """uint8 RGB images in a grid, each upscaled with nearest neighbour, 2 px apart."""
    if not images:
        raise ValueError("no images for the contact sheet")
    h, w = images[0].shape[:2]
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    pad = 2
    sheet = Image.new("RGB", (columns * (w * scale + pad) + pad, rows * (h * scale + pad) + pad))
    sheet.paste((128, 128, 128), (0, 0, sheet.width, sheet.height))
    for i, img in enumerate(images):
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        r, c = divmod(i, columns)
        sheet.paste(tile, (pad + c * (w * scale + pad), pad + r * (h * scale + pad)))
    return sheet


# --------------------------------------------------------------------------- parsing

_OBJ = r"(?:an? )?(?:(small|big) )?(\w+) (circle|square|triangle)"
_BG = r"(?: on an? (\w+) background)?"


def caption_key(caption: str) -> tuple[str, tuple] | None:
    """The (kind, key) a caption of this grammar states, or None if it is not one."""
    import re

    text = caption.strip().lower()
    m = re.fullmatch(_OBJ + _BG, text)
    if m and m.group(4) and m.group(2) in COLOURS and m.group(4) in COLOURS:
        return "single", (m.group(2), m.group(3), m.group(4))
    m = re.fullmatch(_OBJ + r" (left of|right of|above|below) " + _OBJ + _BG, text)
    if m and m.group(2) in COLOURS and m.group(6) in COLOURS:
        a, b = (m.group(2), m.group(3)), (m.group(6), m.group(7))
        relation = m.group(4)
        axis = "horizontal" if relation in ("left of", "right of") else "vertical"
        first, second = (b, a) if relation in ("right of", "below") else (a, b)
        return "relation", (first, second, axis)
    m = re.fullmatch(r"(two|three) (\w+) (circle|square|triangle)s" + _BG, text)
    if m and m.group(2) in COLOURS and m.group(4) in COLOURS:
        n = 2 if m.group(1) == "two" else 3
        return "count", (n, m.group(2), m.group(3), m.group(4))
    return None


def is_held_out(data: SyntheticShapes, caption: str) -> bool | None:
    """Whether a caption's combination is held out of training (None: not our grammar)."""
    parsed = caption_key(caption)
    if parsed is None:
        return None
    kind, key = parsed
    return key in set(data.keys["val"][kind])
