"""The evaluation classifier: does an image show what its caption says?

A small CNN trained on the same synthetic generator (train split only, so it never saw a
held-out caption either) predicts every attribute a caption can claim
(``data.LABEL_HEADS``: background, count, the first object's colour and shape, the second
object's colour and shape, the relation's axis, the size)::

    image [B,3,S,S] ── 3 x (conv3x3 ─ GN ─ SiLU ─ conv3x3 ─ GN ─ SiLU ─ 2x2 pool)
        ── adaptive pool to 4x4 (positions kept: "left of" is a position) ── flatten
        ── linear 256 ─ SiLU ─ linear 128 = features ─ SiLU ─ one linear head per attribute

A generated image *shows its caption* when every head the caption makes a claim about
(``data.checked_heads``) predicts the caption's value. The 128 features are what the
Fréchet distance is computed on. Training images are lightly blurred and noised so the
judge is not thrown by the softness of decoded images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from ..fileio import atomic_write_text
from .config import Recipe
from .data import LABEL_HEADS, Scene, checked_heads
from .loop import adamw, learning_rate, optimizer_step, randn, set_lr
from .outputs import save_safetensors
from .runtime import Runtime, unwrap
from .vae import batch_indices, make_data

STREAM = 5
FEATURES = 128


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(8, cout),
        nn.SiLU(),
        nn.MaxPool2d(2),
    )


class CaptionClassifier(nn.Module):
    """``forward(images in [-1, 1]) -> (features [B,128], {head: logits})``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _block(3, width),
            _block(width, 2 * width),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * width * 16, 256), nn.SiLU(), nn.Linear(256, FEATURES)
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(FEATURES, n) for name, n in LABEL_HEADS.items()}
        )

    def forward(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        features = self.fc(self.body(images))
        h = F.silu(features)
        return features, {name: head(h) for name, head in self.heads.items()}


def labels_tensor(scenes: list[Scene]) -> Tensor:
    return torch.from_numpy(np.stack([s.labels.as_array() for s in scenes]))


def head_mask(scenes: list[Scene]) -> Tensor:
    """Which heads each scene's caption makes a claim about (the size of a single object
    is always defined, so it is trained on even when the caption does not name it)."""
    names = list(LABEL_HEADS)
    mask = torch.zeros(len(scenes), len(names), dtype=torch.bool)
    for i, s in enumerate(scenes):
        heads = set(checked_heads(s)) | {"background", "second_colour", "second_shape", "axis"}
        if s.kind == "single":
            heads.add("size")
        for j, name in enumerate(names):
            mask[i, j] = name in heads
    return mask


def augment(x: Tensor, generator: torch.Generator, blur_p: float, noise_std: float) -> Tensor:
    """Blur a random share of the images (3x3 box, random strength) and add a little noise."""
    b = x.shape[0]
    kernel = torch.full((3, 1, 3, 3), 1 / 9, device=x.device)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    amount = torch.rand(b, generator=generator).to(x.device)
    amount = amount * (torch.rand(b, generator=generator).to(x.device) < blur_p)
    x = x + amount[:, None, None, None] * (blurred - x)
    scale = torch.rand(b, generator=generator).to(x.device) * noise_std
    return x + scale[:, None, None, None] * randn(tuple(x.shape), generator, x.device)


def classify(
    model: CaptionClassifier, images: np.ndarray, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB ``(N, S, S, 3)`` -> features ``(N, 128)`` and predictions ``(N, heads)``."""
    device = next(model.parameters()).device
    feats, preds = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).to(device)
            x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            f, logits = model(x)
            feats.append(f.cpu().numpy())
            preds.append(np.stack([logits[n].argmax(1).cpu().numpy() for n in LABEL_HEADS], 1))
    return np.concatenate(feats), np.concatenate(preds)


def load_classifier(run_dir: Path, device: torch.device | str = "cpu") -> CaptionClassifier:
    model = CaptionClassifier()
    model.load_state_dict(load_file(str(run_dir / "classifier" / "classifier.safetensors")))
    return model.to(device).eval()


class ClassifierTraining:
    """Trains the evaluation classifier; its held-out accuracy goes to ``done.json``."""

    name = "classifier"

    def __init__(self, recipe: Recipe, run_dir: Path, runtime: Runtime) -> None:
        self.recipe, self.run_dir, self.runtime = recipe, run_dir, runtime
        self.loop = recipe.classifier
        self.data = make_data(recipe)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.data.seed + 5)
            model = CaptionClassifier()
        self.model = runtime.wrap(model)
        self.optimizer = adamw(self.model, self.loop)

    @property
    def total_steps(self) -> int:
        return self.loop.steps

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        rt, loop = self.runtime, self.loop
        images, _, scenes = self.data.batch(
            "train", batch_indices(step, loop.batch_size, rt), STREAM
        )
        x = augment(
            torch.from_numpy(images).to(rt.device), generator, loop.blur_probability, loop.noise_std
        )
        labels = labels_tensor(scenes).to(rt.device)
        mask = head_mask(scenes).to(rt.device)
        set_lr(self.optimizer, learning_rate(loop, step))
        with rt.autocast():
            _, logits = self.model(x)
        loss = torch.zeros((), device=rt.device)
        correct = 0.0
        for j, name in enumerate(LABEL_HEADS):
            ce = F.cross_entropy(logits[name].float(), labels[:, j], reduction="none")
            m = mask[:, j].float()
            loss = loss + (ce * m).sum() / m.sum().clamp(min=1)
            correct += float(
                (
                    ((logits[name].argmax(1) == labels[:, j]).float() * m).sum()
                    / m.sum().clamp(min=1)
                ).item()
            )
        optimizer_step(loss, self.optimizer, list(self.model.parameters()), loop.grad_clip, None)
        return {"loss": loss.item(), "acc": correct / len(LABEL_HEADS)}

    def state_dict(self) -> dict[str, Any]:
        return {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def finish(self) -> dict[str, Any]:
        model: CaptionClassifier = unwrap(self.model)  # type: ignore[assignment]
        n = self.loop.val_images
        scenes = self.data.scenes("val", range(n), STREAM)
        images = np.stack([self.data.render(s) for s in scenes])
        _, preds = classify(model, images)
        accuracy = caption_accuracy(preds, scenes)
        if self.runtime.is_main:
            out = self.run_dir / self.name
            save_safetensors(out / "classifier.safetensors", model.state_dict())
            import json

            atomic_write_text(out / "accuracy.json", json.dumps(accuracy, indent=2) + "\n")
        return {"val_accuracy": accuracy}


def caption_accuracy(preds: np.ndarray, scenes: list[Scene]) -> dict[str, float]:
    """The share of images whose every claimed attribute is predicted right, and per group.

    Groups: ``colour`` (every colour the caption names, background included), ``shape``,
    ``relation`` (the axis and which object is first, relation captions only), ``count``
    and ``size`` (where the caption names one).
    """
    names = list(LABEL_HEADS)
    groups = {
        "colour": ("first_colour", "second_colour", "background"),
        "shape": ("first_shape", "second_shape"),
        "relation": ("axis", "first_colour", "first_shape", "second_colour", "second_shape"),
        "count": ("count",),
        "size": ("size",),
    }
    hits = {"caption": [], **{g: [] for g in groups}}
    for pred, scene in zip(preds, scenes, strict=True):
        truth = scene.labels.as_array()
        claimed = checked_heads(scene)
        ok = {h: bool(pred[names.index(h)] == truth[names.index(h)]) for h in claimed}
        hits["caption"].append(all(ok.values()))
        for group, heads in groups.items():
            if group == "relation" and scene.kind != "relation":
                continue
            relevant = [ok[h] for h in heads if h in ok]
            if relevant:
                hits[group].append(all(relevant))
    return {k: round(float(np.mean(v)), 4) for k, v in hits.items() if v}
