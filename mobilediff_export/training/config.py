"""The training recipe as plain data: one JSON file per recipe, strict like the model configs.

A recipe names the model to train (a whole ``ModelConfig``: text encoder, UNet, VAE
decoder, tokenizer and the pipeline the distilled student ships with), the data set, and
one section per stage. ``models/training/demo.json`` is the embedded demo model's recipe,
``models/training/tiny.json`` the seconds-long one the tests run.

Stages and what they leave in the run folder (``runs/<name>`` unless given)::

    vae       vae/            encoder + decoder (AutoencoderKL layout), latent scale
    teacher   teacher/model   text encoder + UNet, trained jointly with CFG dropout (EMA)
    distill   distill/model   progressive distillation down to ``student_steps`` steps
    gan       gan/model       DiffusionGAN (UFOGen-style) fine-tuning to one step
    classifier classifier/    the evaluation classifier (colour, shape, relation heads)
    eval      eval/           caption accuracy and Fréchet distance per model
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, from_dict, read_json, to_dict
from ..errors import ConfigError


@dataclass(frozen=True)
class DataConfig:
    """The synthetic data set (see ``training.data``); image size comes from the model."""

    seed: int = 0
    holdout_fraction: float = 0.15
    kind_weights: tuple[float, ...] = (0.45, 0.40, 0.15)
    """Share of single-object, relation and count scenes."""
    colour_jitter: int = 10
    supersample: int = 4

    def __post_init__(self) -> None:
        if len(self.kind_weights) != 3 or min(self.kind_weights) < 0 or not sum(self.kind_weights):
            raise ConfigError("data.kind_weights needs 3 non-negative weights, not all zero")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError("data.holdout_fraction must lie strictly between 0 and 1")


@dataclass(frozen=True)
class LoopConfig:
    """What every stage's training loop shares."""

    steps: int = 1000
    batch_size: int = 32
    """Global batch; with DDP each process takes batch_size / world_size."""
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    log_every: int = 50

    def check(self, where: str) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"{where} needs steps >= 1, batch_size >= 1 and lr > 0")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ConfigError(f"{where}.checkpoint_every and log_every must be at least 1")


@dataclass(frozen=True)
class VAEStage(LoopConfig):
    """(a) The autoencoder: L1 + L2 + image-gradient reconstruction and a small KL term."""

    kl_weight: float = 1e-6
    edge_weight: float = 1.0
    scale_samples: int = 512
    """Images encoded after training to set the latent scale to 1 / std."""

    def __post_init__(self) -> None:
        self.check("vae")


@dataclass(frozen=True)
class TeacherStage(LoopConfig):
    """(b) Text encoder + UNet from scratch, v-prediction, classifier-free guidance dropout."""

    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    """Min-SNR loss weighting (Hang et al. 2023); 0 turns it off."""
    guidance_scale: float = 3.0
    """The teacher's sampling guidance: what distillation folds in and eval uses."""
    sample_steps: int = 32

    def __post_init__(self) -> None:
        self.check("teacher")
        if not 0.0 <= self.cond_dropout < 1.0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("teacher.cond_dropout and ema_decay must lie in [0, 1)")


@dataclass(frozen=True)
class DistillStage(LoopConfig):
    """(c) Progressive distillation (Salimans & Ho 2022), guidance folded in (Meng et al.).

    The first round's teacher is the guided teacher on a ``start_steps`` grid; each round
    halves the steps, the student of one round being the teacher of the next, until
    ``student_steps``. Round ``r`` runs ``round_steps[r]`` steps (default: ``steps`` each):
    the first round, which also folds the guidance in, is the hard one.
    """

    start_steps: int = 32
    student_steps: int = 8
    round_steps: tuple[int, ...] = ()
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.check("distill")
        n = self.start_steps
        while n > self.student_steps:
            n //= 2
        if n != self.student_steps or self.start_steps <= self.student_steps:
            raise ConfigError(
                "distill.start_steps must be student_steps times a power of two (> 1)"
            )
        if self.round_steps and (len(self.round_steps) != self.rounds or min(self.round_steps) < 1):
            raise ConfigError(
                f"distill.round_steps needs one positive step count per round ({self.rounds})"
            )

    @property
    def rounds(self) -> int:
        return (self.start_steps // self.student_steps).bit_length() - 1

    @property
    def steps_per_round(self) -> tuple[int, ...]:
        return self.round_steps or (self.steps,) * self.rounds

    def round_of(self, step: int) -> tuple[int, int]:
        """``(round, step within the round)`` for a global step."""
        for r, n in enumerate(self.steps_per_round):
            if step < n:
                return r, step
            step -= n
        raise IndexError("step past the last round")


@dataclass(frozen=True)
class GANStage(LoopConfig):
    """(d) DiffusionGAN fine-tuning to one step (UFOGen-style).

    The generator (from the distilled student) maps ``x_t`` at a timestep of
    ``generator_timesteps`` to a clean latent in one step. The discriminator (the
    student's encoder half + a head) compares real and generated latents after both are
    noised to a random ``t' <= disc_max_timestep``, text-conditioned. The generator also
    pays ``recon_weight`` times the distance to the data latent ``x_t`` was made from
    (UFOGen's reconstruction term) and ``distill_weight`` times the distance to the
    student's ``student_steps``-step sample from the same noise (a pool of
    ``distill_pool`` pairs drawn at the start).
    """

    lr_d: float = 2e-4
    adv_weight: float = 0.1
    recon_weight: float = 0.0
    distill_weight: float = 1.0
    distill_pool: int = 2048
    disc_max_timestep: int = 500
    generator_timesteps: tuple[int, ...] = (999,)
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        self.check("gan")
        if self.recon_weight < 0 or self.distill_weight < 0 or self.adv_weight < 0:
            raise ConfigError("gan weights cannot be negative")
        if self.distill_weight > 0 and self.distill_pool < 1:
            raise ConfigError("gan.distill_pool must be at least 1 when distill_weight > 0")
        if not self.generator_timesteps:
            raise ConfigError("gan.generator_timesteps needs at least one timestep")


@dataclass(frozen=True)
class ClassifierStage(LoopConfig):
    """The evaluation classifier, trained on the train split's real images."""

    blur_probability: float = 0.5
    noise_std: float = 0.05
    val_images: int = 512

    def __post_init__(self) -> None:
        self.check("classifier")


@dataclass(frozen=True)
class EvalStage:
    """Evaluation on held-out (validation) captions."""

    num_captions: int = 256
    teacher_steps: int = 32
    batch_size: int = 64
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.num_captions < 2 or self.teacher_steps < 1 or self.batch_size < 1:
            raise ConfigError("eval needs num_captions >= 2, teacher_steps >= 1, batch_size >= 1")


@dataclass(frozen=True)
class Recipe:
    """A whole training recipe; see the module docstring."""

    name: str
    model: ModelConfig
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    vae: VAEStage = field(default_factory=VAEStage)
    teacher: TeacherStage = field(default_factory=TeacherStage)
    distill: DistillStage = field(default_factory=DistillStage)
    gan: GANStage = field(default_factory=GANStage)
    classifier: ClassifierStage = field(default_factory=ClassifierStage)
    eval: EvalStage = field(default_factory=EvalStage)
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = self.model.pipeline
        if p.prediction_type != "v_prediction":
            raise ConfigError(
                "training needs model.pipeline.prediction_type 'v_prediction' "
                "(progressive distillation is defined for it)"
            )
        if p.timestep_spacing != "trailing" or p.steps_offset != 0:
            raise ConfigError(
                "training needs model.pipeline.timestep_spacing 'trailing' with steps_offset 0, "
                "so every sampler starts from pure noise at the last timestep"
            )
        if p.num_train_timesteps % self.distill.student_steps:
            raise ConfigError(
                f"distill.student_steps {self.distill.student_steps} must divide "
                f"num_train_timesteps {p.num_train_timesteps}"
            )
        last = p.num_train_timesteps - 1
        if any(not 0 <= t <= last for t in self.gan.generator_timesteps):
            raise ConfigError(f"gan.generator_timesteps must lie in [0, {last}]")
        if not 0 <= self.gan.disc_max_timestep <= last:
            raise ConfigError(f"gan.disc_max_timestep must lie in [0, {last}]")

    @property
    def image_size(self) -> int:
        return self.model.pipeline.image_size

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        return from_dict(cls, data)


def recipes_dir() -> Path:
    from ..checkpoints import models_dir

    return models_dir() / "training"


def load_recipe(path_or_name: str | Path) -> Recipe:
    """A recipe from a JSON path, or by name from ``models/training/``."""
    path = Path(path_or_name)
    if not path.exists() and isinstance(path_or_name, str) and "/" not in path_or_name:
        candidate = recipes_dir() / f"{path_or_name}.json"
        if candidate.exists():
            path = candidate
        else:
            known = ", ".join(sorted(p.stem for p in recipes_dir().glob("*.json"))) or "none"
            raise ConfigError(f"no training recipe named {path_or_name!r} (known: {known})")
    return Recipe.from_dict(read_json(path))
