"""The samplers' update rules in numpy: DDIM, Euler and one-step (distilled) sampling.

Kotlin and Swift mirror this file, so it is built to be read and copied:

- A sampler is built once from a ``PipelineConfig`` and holds its *explicit* timestep list
  plus the per-step quantities its update rule needs (``alphas_cumprod`` values for DDIM
  and one-step, ``sigmas`` for Euler). ``to_dict`` writes exactly those numbers, so an app
  reads them from the bundle manifest and never recomputes the noise schedule.
- There is no hidden step counter: ``scale_model_input(sample, i)`` and
  ``step(model_output, i, sample, noise)`` take ``i``, the index into ``timesteps``.
- The update rules themselves are three pure functions (``predict_x0``, ``ddim_step``,
  ``euler_step``) over scalars and arrays.

The reference is diffusers (``DDIMScheduler``, ``EulerDiscreteScheduler``); the tests and
the golden vectors in ``tests/vectors/samplers.json`` compare against it. The schedule is
computed in float32 where diffusers computes it in float32; the update rules run in float64
and return the dtype of ``sample``.

A typical loop::

    sampler = make_sampler(config)
    x = noise * sampler.init_noise_sigma
    for i, t in enumerate(sampler.timesteps):
        eps = unet(sampler.scale_model_input(x, i), t, context)
        x = sampler.step(eps, i, x, noise=fresh_noise())  # noise: one-step sampling only
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import PipelineConfig
from .errors import ConfigError

SPACINGS = ("leading", "trailing", "linspace")
PREDICTION_TYPES = ("epsilon", "v_prediction")


# --------------------------------------------------------------------------- noise schedule


def alphas_cumprod(config: PipelineConfig) -> np.ndarray:
    """The cumulative product of ``1 - beta`` over the training timesteps, as float32.

    Bit-identical to diffusers: betas are a float32 linspace (of ``sqrt(beta)`` for
    ``scaled_linear``, then squared in float32), ``alphas = 1 - betas`` in float32, and the
    product accumulates in float64, as torch's CPU ``cumprod`` does for float32, before it
    is rounded to float32. Apps do not recompute this: the manifest carries the values.
    """
    n = config.num_train_timesteps
    if n < 1:
        raise ConfigError(f"pipeline.num_train_timesteps must be at least 1; got {n}")
    if config.beta_schedule == "linear":
        betas = _linspace_float32(config.beta_start, config.beta_end, n)
    elif config.beta_schedule == "scaled_linear":
        roots = _linspace_float32(config.beta_start**0.5, config.beta_end**0.5, n)
        betas = roots * roots
    else:
        raise ConfigError(
            f"pipeline.beta_schedule must be scaled_linear or linear; got {config.beta_schedule!r}"
        )
    alphas = np.float32(1.0) - betas
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def _linspace_float32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(start, end, n, dtype=float32)``, rounding for rounding.

    torch takes the step in float32 and computes each value as one fused multiply-add from
    the nearer end (the first half from ``start``, the rest from ``end``). The product of a
    float32 and a small integer is exact in float64, so float64 arithmetic rounded once to
    float32 reproduces it (checked against torch for every n up to 1200); numpy's float64
    linspace would differ by an ulp in a third of the entries.
    """
    lo, hi = np.float32(start), np.float32(end)
    if n == 1:
        return np.array([lo], dtype=np.float32)
    step = np.float64((hi - lo) / np.float32(n - 1))
    k = np.arange(n, dtype=np.float64)
    from_start = np.float64(lo) + step * k
    from_end = np.float64(hi) - step * (n - 1 - k)
    return np.where(k < n // 2, from_start, from_end).astype(np.float32)


# --------------------------------------------------------------------------- update rules


def predict_x0(
    model_output: np.ndarray, sample: np.ndarray, alpha_cumprod: float, prediction_type: str
) -> np.ndarray:
    """The clean sample x0 implied by the model output at a timestep with ``alpha_cumprod``.

    ``x_t = sqrt(a) x0 + sqrt(1 - a) eps``; an epsilon model predicts ``eps``, a
    v-prediction model predicts ``v = sqrt(a) eps - sqrt(1 - a) x0``.
    """
    x = np.asarray(sample, dtype=np.float64)
    out = np.asarray(model_output, dtype=np.float64)
    sqrt_a = math.sqrt(alpha_cumprod)
    sqrt_b = math.sqrt(1.0 - alpha_cumprod)
    if prediction_type == "epsilon":
        return (x - sqrt_b * out) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * x - sqrt_b * out
    raise ConfigError(f"prediction_type must be one of {PREDICTION_TYPES}; got {prediction_type!r}")


def ddim_step(
    model_output: np.ndarray,
    sample: np.ndarray,
    alpha_cumprod: float,
    alpha_cumprod_prev: float,
    prediction_type: str,
) -> np.ndarray:
    """One deterministic DDIM step (eta = 0, no clipping) from ``alpha_cumprod`` to ``_prev``.

    ``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps`` with x0 and eps both implied by
    the model output.
    """
    x = np.asarray(sample, dtype=np.float64)
    out = np.asarray(model_output, dtype=np.float64)
    sqrt_a = math.sqrt(alpha_cumprod)
    sqrt_b = math.sqrt(1.0 - alpha_cumprod)
    if prediction_type == "epsilon":
        x0 = (x - sqrt_b * out) / sqrt_a
        eps = out
    elif prediction_type == "v_prediction":
        x0 = sqrt_a * x - sqrt_b * out
        eps = sqrt_a * out + sqrt_b * x
    else:
        raise ConfigError(
            f"prediction_type must be one of {PREDICTION_TYPES}; got {prediction_type!r}"
        )
    return math.sqrt(alpha_cumprod_prev) * x0 + math.sqrt(1.0 - alpha_cumprod_prev) * eps


def euler_step(
    model_output: np.ndarray,
    sample: np.ndarray,
    sigma: float,
    sigma_next: float,
    prediction_type: str,
) -> np.ndarray:
    """One Euler step of the probability-flow ODE in sigma space, from ``sigma`` to ``sigma_next``.

    Here the sample lives in the variance-exploding frame ``x = x0 + sigma eps`` (which is
    why the model input is divided by ``sqrt(sigma^2 + 1)``); ``dx/dsigma = (x - x0) / sigma``.
    """
    x = np.asarray(sample, dtype=np.float64)
    out = np.asarray(model_output, dtype=np.float64)
    if prediction_type == "epsilon":
        x0 = x - sigma * out
    elif prediction_type == "v_prediction":
        x0 = out * (-sigma / math.sqrt(sigma * sigma + 1.0)) + x / (sigma * sigma + 1.0)
    else:
        raise ConfigError(
            f"prediction_type must be one of {PREDICTION_TYPES}; got {prediction_type!r}"
        )
    derivative = (x - x0) / sigma
    return x + derivative * (sigma_next - sigma)


# --------------------------------------------------------------------------- timesteps


def spaced_timesteps(
    num_train_timesteps: int, num_inference_steps: int, spacing: str, steps_offset: int
) -> np.ndarray:
    """Descending timesteps for ``num_inference_steps`` steps, as diffusers spaces them.

    float64; ``leading`` and ``trailing`` give whole numbers, ``linspace`` may not (DDIM
    rounds it, Euler keeps the fractions). ``steps_offset`` only applies to ``leading``,
    as in diffusers.
    """
    t_train, n = num_train_timesteps, num_inference_steps
    if not isinstance(n, int | np.integer) or isinstance(n, bool):
        raise ConfigError(f"num_inference_steps must be an integer; got {n!r}")
    if n < 1:
        raise ConfigError(f"num_inference_steps must be at least 1; got {n}")
    if n > t_train:
        raise ConfigError(
            f"num_inference_steps {n} is more than the {t_train} timesteps the model was "
            "trained with"
        )
    k = np.arange(n, dtype=np.float64)
    if spacing == "leading":
        return (k * (t_train // n))[::-1] + steps_offset
    if spacing == "trailing":
        return np.round(t_train - k * (t_train / n)) - 1.0
    if spacing == "linspace":
        return np.linspace(0.0, t_train - 1, n)[::-1].copy()
    raise ConfigError(f"timestep_spacing must be one of {', '.join(SPACINGS)}; got {spacing!r}")


def _short(ts: np.ndarray) -> str:
    """A timestep list for an error message, elided past eight entries."""
    shown = [int(t) if t == int(t) else float(t) for t in ts.tolist()]
    if len(shown) <= 8:
        return str(shown)
    return f"[{', '.join(map(str, shown[:4]))}, ..., {', '.join(map(str, shown[-2:]))}]"


def _check_timesteps(
    timesteps: Any, num_train_timesteps: int, *, integer: bool, where: str
) -> np.ndarray:
    """Validate a timestep list: non-empty, finite, strictly descending, in [0, T - 1]."""
    try:
        ts = np.asarray(timesteps, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a list of numbers; got {timesteps!r}") from None
    if ts.ndim != 1 or ts.size == 0:
        raise ConfigError(f"{where} must be a non-empty list of numbers; got {timesteps!r}")
    if ts.size > num_train_timesteps:
        raise ConfigError(
            f"{where} has {ts.size} steps, more than the {num_train_timesteps} timesteps the "
            "model was trained with"
        )
    if not np.all(np.isfinite(ts)):
        raise ConfigError(f"{where} must be finite numbers; got {ts.tolist()[:8]}")
    if integer and not np.all(ts == np.round(ts)):
        raise ConfigError(f"{where} must be whole numbers for this sampler; got {_short(ts)}")
    if ts.min() < 0 or ts.max() > num_train_timesteps - 1:
        raise ConfigError(f"{where} must lie in [0, {num_train_timesteps - 1}]; got {_short(ts)}")
    if np.any(np.diff(ts) >= 0):
        raise ConfigError(f"{where} must be strictly descending; got {_short(ts)}")
    return ts


def _resolve_timesteps(
    config: PipelineConfig,
    num_inference_steps: int | None,
    timesteps: Sequence[float] | None,
    *,
    integer: bool,
) -> tuple[np.ndarray, bool]:
    """The timestep list from explicit ``timesteps`` or from the config's spacing.

    Returns the list (float64) and whether it was explicit.
    """
    if timesteps is not None:
        if num_inference_steps is not None:
            raise ConfigError("pass either num_inference_steps or timesteps, not both")
        ts = _check_timesteps(
            timesteps, config.num_train_timesteps, integer=integer, where="timesteps"
        )
        return ts, True
    n = config.num_inference_steps if num_inference_steps is None else num_inference_steps
    ts = spaced_timesteps(
        config.num_train_timesteps, n, config.timestep_spacing, config.steps_offset
    )
    if integer:
        ts = np.round(ts)
    where = (
        f"the {n} {config.timestep_spacing}-spaced timesteps (steps_offset {config.steps_offset})"
    )
    return _check_timesteps(ts, config.num_train_timesteps, integer=integer, where=where), False


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


# --------------------------------------------------------------------------- samplers


class Sampler:
    """Base class: an explicit timestep list and an update rule indexed by step.

    Attributes: ``name``; ``timesteps`` (float64, what the UNet is fed, one per step);
    ``init_noise_sigma`` (scale the unit Gaussian starting noise by it);
    ``prediction_type``; ``needs_noise`` (``step`` takes fresh noise before the last step).
    """

    name = "sampler"
    needs_noise = False

    def __init__(self, config: PipelineConfig, timesteps: np.ndarray, explicit: bool) -> None:
        if config.prediction_type not in PREDICTION_TYPES:
            raise ConfigError(
                f"pipeline.prediction_type must be one of {', '.join(PREDICTION_TYPES)}; "
                f"got {config.prediction_type!r}"
            )
        self.config = config
        self.prediction_type = config.prediction_type
        self.timesteps = timesteps
        self.explicit_timesteps = explicit
        self.init_noise_sigma = 1.0

    def __len__(self) -> int:
        return len(self.timesteps)

    def _index(self, i: int) -> int:
        if not isinstance(i, int | np.integer) or not 0 <= i < len(self.timesteps):
            raise IndexError(f"step index {i!r} is outside 0..{len(self.timesteps) - 1}")
        return int(i)

    @staticmethod
    def _pair(model_output: Any, sample: Any) -> tuple[np.ndarray, np.ndarray, np.dtype]:
        out = np.asarray(model_output)
        x = np.asarray(sample)
        if out.shape != x.shape:
            raise ValueError(f"model_output shape {out.shape} differs from sample {x.shape}")
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
        return out, x, dtype

    def model_input_scale(self, i: int) -> float:
        """The factor the sample is multiplied by before the UNet sees it at step ``i``."""
        self._index(i)
        return 1.0

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        """What the UNet is fed at step ``i`` (the sample itself unless a sampler rescales)."""
        self._index(i)
        return np.asarray(sample)

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """The sample after step ``i``, in the dtype of ``sample``."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Everything an app needs to run this sampler, as plain JSON types."""
        return {
            "name": self.name,
            "prediction_type": self.prediction_type,
            "num_train_timesteps": self.config.num_train_timesteps,
            "timestep_spacing": None if self.explicit_timesteps else self.config.timestep_spacing,
            "steps_offset": self.config.steps_offset,
            "num_inference_steps": len(self.timesteps),
            "timesteps": [int(t) for t in self.timesteps],
            "init_noise_sigma": float(self.init_noise_sigma),
        }


class DDIMSampler(Sampler):
    """Deterministic DDIM (eta = 0), as diffusers' ``DDIMScheduler`` with ``clip_sample=False``.

    Step ``i`` goes from ``alphas_cumprod[t_i]`` to ``alphas_cumprod[t_i - T // n]`` (T
    train timesteps, n steps), or to the final alpha once that is below zero: diffusers
    steps back by ``T // n`` whatever the spacing, so for ``linspace`` (and ``trailing``
    when n does not divide T) the previous timestep is *not* the next one in the list. We
    keep that to match diffusers pipelines; ``prev_timesteps`` in ``to_dict`` makes it
    explicit. With an explicit timestep list the previous timestep is the next one in it.

    ``set_alpha_to_one=False`` (the Stable Diffusion setting) ends on ``alphas_cumprod[0]``;
    True ends on 1, a fully clean sample. The default is ``config.set_alpha_to_one``.
    """

    name = "ddim"

    def __init__(
        self,
        config: PipelineConfig,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
        set_alpha_to_one: bool | None = None,
    ) -> None:
        if set_alpha_to_one is None:
            set_alpha_to_one = config.set_alpha_to_one
        ts, explicit = _resolve_timesteps(config, num_inference_steps, timesteps, integer=True)
        super().__init__(config, ts, explicit)
        ac = alphas_cumprod(config).astype(np.float64)
        self.set_alpha_to_one = bool(set_alpha_to_one)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(ac[0])
        idx = ts.astype(np.int64)
        # The previous timestep: the next entry of an explicit list, else T // n back.
        step_back = config.num_train_timesteps // len(idx)
        prev = np.append(idx[1:], -1) if explicit else idx - step_back
        self.prev_timesteps = np.where(prev < 0, -1, prev)
        self.alphas_cumprod = ac[idx]
        self.alphas_cumprod_prev = np.where(
            self.prev_timesteps >= 0,
            ac[np.maximum(self.prev_timesteps, 0)],
            self.final_alpha_cumprod,
        )

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """The sample at the previous timestep; ``noise`` is ignored (eta = 0)."""
        i = self._index(i)
        out, x, dtype = self._pair(model_output, sample)
        prev = ddim_step(
            out,
            x,
            float(self.alphas_cumprod[i]),
            float(self.alphas_cumprod_prev[i]),
            self.prediction_type,
        )
        return prev.astype(dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["set_alpha_to_one"] = self.set_alpha_to_one
        d["prev_timesteps"] = [int(t) for t in self.prev_timesteps]
        d["alphas_cumprod"] = _floats(self.alphas_cumprod)
        d["alphas_cumprod_prev"] = _floats(self.alphas_cumprod_prev)
        return d


class EulerSampler(Sampler):
    """Deterministic Euler, as diffusers' ``EulerDiscreteScheduler`` with its defaults.

    Linear interpolation of the sigma table, no Karras sigmas, final sigma 0, and
    ``s_churn = 0`` so no noise is injected. ``sigmas`` has one entry per step plus the
    final 0. The timesteps are float32 values (``linspace`` spacing gives fractional ones),
    exactly what diffusers feeds the UNet. ``init_noise_sigma`` is the largest sigma for
    ``linspace`` and ``trailing`` spacing and ``sqrt(sigma_max^2 + 1)`` for ``leading``,
    the same rule as diffusers, applied to explicit timestep lists too.
    """

    name = "euler"

    def __init__(
        self,
        config: PipelineConfig,
        num_inference_steps: int | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        ts, explicit = _resolve_timesteps(config, num_inference_steps, timesteps, integer=False)
        ts = ts.astype(np.float32).astype(np.float64)
        super().__init__(config, ts, explicit)
        ac = alphas_cumprod(config)
        table = ((np.float32(1.0) - ac) / ac) ** np.float32(0.5)  # float32, as diffusers
        sigmas = np.interp(ts, np.arange(len(table), dtype=np.float64), table)
        self.sigmas = np.append(sigmas.astype(np.float32), np.float32(0.0)).astype(np.float64)
        sigma_max = np.float32(self.sigmas.max())
        if config.timestep_spacing == "leading":
            self.init_noise_sigma = float((sigma_max * sigma_max + np.float32(1.0)) ** 0.5)
        else:
            self.init_noise_sigma = float(sigma_max)

    def model_input_scale(self, i: int) -> float:
        """``1 / sqrt(sigma_i^2 + 1)``: back from the sigma frame to unit variance."""
        sigma = float(self.sigmas[self._index(i)])
        return 1.0 / math.sqrt(sigma * sigma + 1.0)

    def scale_model_input(self, sample: np.ndarray, i: int) -> np.ndarray:
        """Bring the sample from the sigma frame back to unit variance for the UNet."""
        x = np.asarray(sample)
        sigma = float(self.sigmas[self._index(i)])
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
        scaled = x.astype(np.float64) / math.sqrt(sigma * sigma + 1.0)
        return scaled.astype(dtype, copy=False)

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """The sample at ``sigmas[i + 1]``; ``noise`` is ignored (s_churn = 0)."""
        i = self._index(i)
        out, x, dtype = self._pair(model_output, sample)
        prev = euler_step(
            out, x, float(self.sigmas[i]), float(self.sigmas[i + 1]), self.prediction_type
        )
        return prev.astype(dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["timesteps"] = _floats(self.timesteps)
        d["sigmas"] = _floats(self.sigmas)
        return d


class OneStepSampler(Sampler):
    """Sampling for distilled / DiffusionGAN models: one step, or a few with re-noising.

    At each timestep the model output (epsilon or v) is turned into a clean prediction
    x0. After the last timestep x0 is the result. Before it, x0 is noised again to the
    next timestep with fresh noise, ``x_next = sqrt(a_next) x0 + sqrt(1 - a_next) noise``:
    the multi-step sampling of UFOGen and of consistency models. The caller supplies that
    noise, so runs are reproducible and the apps draw it from their own generator.

    The first timestep must be the last train timestep (999 for 1000), since sampling
    starts from pure noise; the default is one step there. A spacing-derived list must
    therefore use ``trailing`` spacing (or ``linspace`` with two or more steps); ``leading``
    starts lower and is refused rather than silently producing noise.
    """

    name = "onestep"
    needs_noise = True

    def __init__(
        self,
        config: PipelineConfig,
        num_inference_steps: int | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        if timesteps is None and num_inference_steps is None:
            timesteps = (config.num_train_timesteps - 1,)
        ts, explicit = _resolve_timesteps(config, num_inference_steps, timesteps, integer=True)
        if not explicit and ts[0] != config.num_train_timesteps - 1:
            raise ConfigError(
                f"one-step sampling starts from pure noise at t={config.num_train_timesteps - 1}"
                f", but {config.timestep_spacing} spacing with {len(ts)} steps starts at "
                f"t={int(ts[0])}; set pipeline.timestep_spacing to 'trailing' or pass "
                "explicit timesteps"
            )
        super().__init__(config, ts, explicit)
        self.alphas_cumprod = alphas_cumprod(config).astype(np.float64)[ts.astype(np.int64)]

    def step(
        self,
        model_output: np.ndarray,
        i: int,
        sample: np.ndarray,
        noise: np.ndarray | None = None,
    ) -> np.ndarray:
        """x0 after the last step; before it, x0 re-noised to the next timestep with ``noise``."""
        i = self._index(i)
        out, x, dtype = self._pair(model_output, sample)
        x0 = predict_x0(out, x, float(self.alphas_cumprod[i]), self.prediction_type)
        if i == len(self.timesteps) - 1:
            return x0.astype(dtype, copy=False)
        if noise is None:
            raise ValueError(
                f"OneStepSampler.step({i}) re-noises to timestep {int(self.timesteps[i + 1])} "
                "and needs `noise` (a unit Gaussian array shaped like the sample)"
            )
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != x.shape:
            raise ValueError(f"noise shape {noise.shape} differs from sample {x.shape}")
        a_next = float(self.alphas_cumprod[i + 1])
        x_next = math.sqrt(a_next) * x0 + math.sqrt(1.0 - a_next) * noise
        return x_next.astype(dtype, copy=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["alphas_cumprod"] = _floats(self.alphas_cumprod)
        return d


SAMPLERS: dict[str, type[Sampler]] = {
    "ddim": DDIMSampler,
    "euler": EulerSampler,
    "onestep": OneStepSampler,
}


def make_sampler(
    config: PipelineConfig,
    num_inference_steps: int | None = None,
    timesteps: Sequence[float] | None = None,
) -> Sampler:
    """The sampler ``config.sampler`` names, for ``num_inference_steps`` or explicit timesteps.

    With neither given, DDIM and Euler take ``config.num_inference_steps``; one-step
    sampling does too (one-step configs say 1).
    """
    cls = SAMPLERS.get(config.sampler)
    if cls is None:
        raise ConfigError(
            f"pipeline.sampler must be one of {', '.join(SAMPLERS)}; got {config.sampler!r}"
        )
    if cls is OneStepSampler and num_inference_steps is None and timesteps is None:
        num_inference_steps = config.num_inference_steps
    return cls(config, num_inference_steps=num_inference_steps, timesteps=timesteps)


# --------------------------------------------------------------------------- from a manifest


def sampler_from_dict(data: dict[str, Any]) -> Sampler:
    """Rebuild a sampler from its ``to_dict`` (the bundle manifest's ``pipeline.sampler``).

    Nothing is recomputed: the timesteps and the per-step numbers (``alphas_cumprod``,
    ``sigmas``, ...) are taken as written, exactly as the apps read them, so
    ``sampler_from_dict(s.to_dict()).to_dict() == s.to_dict()`` and both step identically.
    A dict that is missing a number its update rule needs, or whose lists disagree in
    length, raises ``ConfigError``.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a sampler is a JSON object, not {type(data).__name__}")
    name = data.get("name")
    cls = SAMPLERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"sampler.name must be one of {', '.join(SAMPLERS)}; got {name!r}")
    timesteps = _number_list(data, "timesteps")
    n = len(timesteps)
    if n == 0:
        raise ConfigError("sampler.timesteps is empty")
    if "num_inference_steps" in data and data["num_inference_steps"] != n:
        raise ConfigError(
            f"sampler.num_inference_steps is {data['num_inference_steps']!r} but there are "
            f"{n} timesteps"
        )
    spacing = data.get("timestep_spacing")
    if spacing is not None and spacing not in SPACINGS:
        raise ConfigError(f"sampler.timestep_spacing must be one of {SPACINGS} or null")
    try:
        config = PipelineConfig(
            prediction_type=data.get("prediction_type", "epsilon"),
            num_train_timesteps=int(data.get("num_train_timesteps", 1000)),
            sampler=name,
            num_inference_steps=n,
            timestep_spacing=spacing or "leading",
            steps_offset=int(data.get("steps_offset", 0)),
            set_alpha_to_one=bool(data.get("set_alpha_to_one", False)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sampler: {exc}") from None
    sampler = cls.__new__(cls)
    Sampler.__init__(sampler, config, timesteps, explicit=spacing is None)
    sampler.init_noise_sigma = _number(data, "init_noise_sigma")
    if isinstance(sampler, DDIMSampler):
        sampler.set_alpha_to_one = config.set_alpha_to_one
        sampler.prev_timesteps = _number_list(data, "prev_timesteps", n).astype(np.int64)
        sampler.alphas_cumprod = _number_list(data, "alphas_cumprod", n)
        sampler.alphas_cumprod_prev = _number_list(data, "alphas_cumprod_prev", n)
        final = sampler.alphas_cumprod_prev[sampler.prev_timesteps < 0]
        sampler.final_alpha_cumprod = float(final[-1]) if final.size else 1.0
    elif isinstance(sampler, EulerSampler):
        sampler.sigmas = _number_list(data, "sigmas", n + 1)
    elif isinstance(sampler, OneStepSampler):
        sampler.alphas_cumprod = _number_list(data, "alphas_cumprod", n)
    return sampler


def _number(data: dict[str, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"sampler.{key} must be a finite number; got {value!r}")
    return float(value)


def _number_list(data: dict[str, Any], key: str, length: int | None = None) -> np.ndarray:
    values = data.get(key)
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise ConfigError(f"sampler.{key} must be a list of numbers")
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ConfigError(f"sampler.{key} must hold finite numbers")
    if length is not None and array.size != length:
        raise ConfigError(f"sampler.{key} has {array.size} entries; expected {length}")
    return array
