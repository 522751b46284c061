"""Export a model to a bundle: one converter per target, one component at a time.

``export_bundle`` is what ``mobilediff export`` calls::

    load the model (weights, tokenizer)
    for component in text_encoder, unet, vae_decoder:
        for target in targets:               # tflite, coreml, onnx
            convert it at the static shapes of signatures.component_io
        free it (del + gc) before the next, so peak memory is one component's
    write tokenizer files and bundle.json, verify, rename into place (bundle.write_bundle)

Converters live in ``export/<target>.py`` as ``convert_<target>(module, config, component,
out_path, recipe, rewrites) -> ComponentArtifact`` and are imported only when their target
is asked for, so a missing converter or converter library fails with a clear error for
that target alone.

Rewrites (``export/rewrite.py``) are per target: each mobile target starts from
``rewrite.DEFAULT_REWRITES[target]`` and ``--rewrite [TARGET:]NAME[=VALUE]`` changes one
switch (``attention=sdpa``, ``fuse_qkv=off``, ``fold_timesteps``, ``none`` for no
rewrites at all). ``fold_timesteps`` folds the manifest's own timestep list. The ONNX
target is the host reference and never gets rewrites.
"""

from __future__ import annotations

import gc
import importlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError, MobileDiffError
from ..quiet import native_output_captured
from .artifacts import COMPONENTS, TARGETS, Component, ComponentArtifact, Target
from .quantize import Recipe, resolve_recipe

#: The model ``mobilediff export`` exports when none is given (a name in ``models/``).
DEFAULT_MODEL = "demo"
DEFAULT_TARGETS: tuple[Target, ...] = ("tflite", "coreml")

#: What each target's converter needs installed, for the error when it is missing.
_TARGET_PACKAGES = {
    "tflite": "litert-torch and ai-edge-litert",
    "coreml": "coremltools",
    "onnx": "onnx, onnxscript and onnxruntime",
}

Converter = Callable[..., ComponentArtifact]


class ConversionError(MobileDiffError):
    """A converter tool (litert-torch, ai_edge_quantizer, coremltools, torch.onnx) failed."""


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_TARGETS",
    "ConversionError",
    "check_rewrites_fit_recipes",
    "export_bundle",
    "load_converter",
    "parse_overrides",
    "parse_rewrites",
    "parse_targets",
    "plan_recipes",
]


def parse_targets(targets: str | Iterable[str] | None) -> tuple[Target, ...]:
    """Targets from a list and/or comma lists (``["tflite,onnx", "coreml"]``), deduplicated."""
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        targets = [targets]
    chosen: list[Target] = []
    for item in targets:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            if name not in TARGETS:
                raise ConfigError(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
            if name not in chosen:
                chosen.append(name)  # type: ignore[arg-type]
    if not chosen:
        raise ConfigError(f"no target given (known: {', '.join(TARGETS)})")
    return tuple(chosen)


def parse_overrides(overrides: dict[str, str] | Iterable[str] | None) -> dict[str, str]:
    """Per-component recipes: ``{"coreml:unet": "palettize-4bit", "vae_decoder": "fp16"}``.

    Accepts that dict or CLI strings ``TARGET:COMPONENT=RECIPE`` / ``COMPONENT=RECIPE``.
    A key without a target applies to every exported target that the recipe applies to.
    """
    if overrides is None:
        return {}
    items = (
        list(overrides.items())
        if isinstance(overrides, dict)
        else [_split_override(text) for text in overrides]
    )
    parsed: dict[str, str] = {}
    for key, recipe in items:
        target, _, component = key.rpartition(":")
        if target and target not in TARGETS:
            raise ConfigError(
                f"override {key}: unknown target {target!r} (known: {', '.join(TARGETS)})"
            )
        if component not in COMPONENTS:
            raise ConfigError(
                f"override {key}: unknown component {component!r} (known: {', '.join(COMPONENTS)})"
            )
        parsed[key] = recipe
    return parsed


def _split_override(text: str) -> tuple[str, str]:
    key, sep, recipe = text.partition("=")
    if not sep or not key.strip() or not recipe.strip():
        raise ConfigError(
            f"override {text!r} must look like TARGET:COMPONENT=RECIPE or COMPONENT=RECIPE "
            "(e.g. coreml:unet=palettize-4bit)"
        )
    return key.strip(), recipe.strip()


def plan_recipes(
    targets: Iterable[Target],
    recipe: str | None = None,
    overrides: dict[str, str] | None = None,
) -> dict[tuple[Target, Component], Recipe]:
    """The recipe of every (target, component), checked before any work starts."""
    from .quantize import get_recipe

    overrides = parse_overrides(overrides)
    if recipe is not None:
        get_recipe(recipe)
    targets = tuple(targets)
    plan: dict[tuple[Target, Component], Recipe] = {}
    for key, name in overrides.items():
        target, _, component = key.rpartition(":")
        chosen = get_recipe(name)
        if target and target not in targets:
            raise ConfigError(f"override {key}: target {target} is not being exported")
        if not target and not any(t in chosen.targets for t in targets):
            raise ConfigError(
                f"override {key}={name}: recipe {name} applies to "
                f"{', '.join(sorted(chosen.targets))}, none of the targets being exported"
            )
    for target in targets:
        for component in COMPONENTS:
            per_target = {}
            bare = overrides.get(component)
            if bare is not None and target in get_recipe(bare).targets:
                per_target[component] = bare
            if f"{target}:{component}" in overrides:
                per_target[component] = overrides[f"{target}:{component}"]
            plan[target, component] = resolve_recipe(target, component, recipe, per_target)
    if recipe is not None and not any(r.name == recipe for r in plan.values()):
        raise ConfigError(
            f"recipe {recipe} applies to {', '.join(sorted(get_recipe(recipe).targets))}, "
            f"none of the targets being exported ({', '.join(targets)})"
        )
    return plan


_REWRITE_SWITCHES = (
    "fuse_qkv",
    "gelu_tanh",
    "linear_as_conv",
    "phase_upsample",
    "winograd",
    "split_linear",
    "fold_timesteps",
)
_REWRITE_CHOICES = {"attention": ("default", "split_heads", "sdpa"),
                    "group_norm": ("default", "decomposed")}  # fmt: skip
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")
MOBILE_TARGETS: tuple[Target, ...] = ("tflite", "coreml")


def parse_rewrites(
    specs: Iterable[str] | None, targets: Iterable[Target] = MOBILE_TARGETS
) -> dict[Target, dict[str, Any]]:
    """``--rewrite [TARGET:]NAME[=VALUE]`` strings -> per-target changes to the defaults.

    NAME is a ``rewrite.RewriteOptions`` field: the switches ``fuse_qkv``, ``gelu_tanh``,
    ``linear_as_conv``, ``phase_upsample``, ``winograd``, ``split_linear``,
    ``fold_timesteps`` (VALUE on/off, default on), or ``attention`` (default, split_heads,
    sdpa) and ``group_norm`` (default, decomposed); ``none`` starts from no rewrites
    instead of the target's defaults. Without TARGET a rewrite applies to every mobile
    target being exported. Checked here, before any work.
    """
    targets = tuple(targets)
    mobile = [t for t in targets if t in MOBILE_TARGETS]
    changes: dict[Target, dict[str, Any]] = {}
    for text in specs or ():
        key, sep, value = (part.strip() for part in text.partition("="))
        target, _, name = key.rpartition(":")
        if target == "onnx":
            raise ConfigError(
                f"rewrite {text}: the onnx target is the host reference and takes no rewrites"
            )
        if target and target not in MOBILE_TARGETS:
            raise ConfigError(f"rewrite {text}: unknown target {target!r} (tflite or coreml)")
        if target and target not in targets:
            raise ConfigError(f"rewrite {text}: target {target} is not being exported")
        if name == "none" and not sep:
            parsed: Any = None
        elif name in _REWRITE_SWITCHES:
            if sep and value.lower() not in _ON + _OFF:
                raise ConfigError(f"rewrite {text}: {name} is on or off, not {value!r}")
            parsed = not sep or value.lower() in _ON
        elif name in _REWRITE_CHOICES:
            if value not in _REWRITE_CHOICES[name]:
                raise ConfigError(
                    f"rewrite {text}: {name} must be one of {', '.join(_REWRITE_CHOICES[name])}"
                )
            parsed = value
        else:
            known = ", ".join((*_REWRITE_SWITCHES, *_REWRITE_CHOICES, "none"))
            raise ConfigError(f"rewrite {text}: unknown rewrite {name!r} (known: {known})")
        for t in [target] if target else mobile:
            if name == "none":
                changes[t] = {"none": True}  # type: ignore[index]
            else:
                changes.setdefault(t, {})[name] = parsed  # type: ignore[index]
    if specs and not mobile:
        raise ConfigError("rewrites apply to tflite and coreml; neither is being exported")
    return changes


def rewrite_options(target: Target, changes: dict[str, Any], timesteps: Iterable[float]) -> Any:
    """The ``RewriteOptions`` for one target: its defaults with ``changes`` (see above).

    None for the onnx reference. ``fold_timesteps`` becomes the sampler's timestep list.
    """
    if target == "onnx":
        return None
    from .rewrite import DEFAULT_REWRITES, RewriteOptions

    changes = dict(changes)
    base = RewriteOptions() if changes.pop("none", False) else DEFAULT_REWRITES[target]
    if not changes:
        return base
    fold = changes.pop("fold_timesteps", None)
    options = replace(base, **changes)
    if fold is True:
        options = replace(options, fold_timesteps=tuple(float(t) for t in timesteps))
    elif fold is False:
        options = replace(options, fold_timesteps=None)
    return options


def check_rewrites_fit_recipes(
    plan: dict[tuple[Target, Component], Recipe], changes: dict[Target, dict[str, Any]]
) -> None:
    """Refuse, before any work, a rewrite a component's recipe cannot take (see
    ``rewrite.settle_for_weights``: Winograd with int8 weights)."""
    from .rewrite import settle_for_weights

    for (target, _component), recipe in plan.items():
        # The timestep list only fills fold_timesteps, which no recipe constrains.
        options = rewrite_options(target, changes.get(target, {}), (0.0,))
        if options is not None:
            settle_for_weights(options, recipe.weights)


def load_converter(target: Target) -> Converter:
    """``convert_<target>`` from ``export/<target>.py``, imported now, with a clear error."""
    module_name = f"{__name__}.{target}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise MobileDiffError(
                f"the {target} converter is not part of this installation "
                f"(mobilediff_export/export/{target}.py is missing)"
            ) from None
        raise MobileDiffError(
            f"the {target} target needs {_TARGET_PACKAGES[target]}, but {exc.name} cannot "
            "be imported: pip install -e '.[export]'"
        ) from None
    converter = getattr(module, f"convert_{target}", None)
    if converter is None:
        raise MobileDiffError(f"{module_name} has no convert_{target} function")
    return converter


def export_bundle(
    model: str | Path | None = None,
    out: str | Path = "bundle",
    targets: str | Iterable[str] | None = DEFAULT_TARGETS,
    recipe: str | None = None,
    overrides: dict[str, str] | Iterable[str] | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    guidance: float | None = None,
    force: bool = False,
    progress: bool = True,
    negative_prompt: str = "",
    rewrites: Iterable[str] | None = None,
    calibration_prompts: str | Path | None = None,
) -> Path:
    """Export ``model`` (default ``DEFAULT_MODEL``) to the bundle folder ``out``.

    ``recipe`` names one quantization recipe for every component where it applies (else
    each target's default, see ``quantize``); ``overrides`` sets single components.
    ``steps``, ``sampler`` and ``guidance`` fix the sampling the manifest records (the
    model config's otherwise); guidance > 1 exports the UNet at batch 2. ``rewrites`` are
    ``[TARGET:]NAME[=VALUE]`` changes to each mobile target's default rewrites (see
    ``parse_rewrites``). A full-integer recipe (LiteRT ``w8a8``) calibrates its activation
    ranges on what the PyTorch pipeline feeds each network for the prompts in the file
    ``calibration_prompts``, else in the model folder's ``calibration_prompts.txt``, else
    on ``calibration.DEFAULT_PROMPTS``. Everything is checked before the model is loaded;
    nothing is left behind on failure.
    """
    chosen_targets = parse_targets(targets)
    plan = plan_recipes(chosen_targets, recipe, parse_overrides(overrides))
    rewrite_changes = parse_rewrites(rewrites, chosen_targets)
    check_rewrites_fit_recipes(plan, rewrite_changes)
    out = Path(out)
    if out.exists() and not force:
        raise MobileDiffError(f"{out} already exists; pass --force to replace it")
    if steps is not None and steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if calibration_prompts is not None:
        from .calibration import read_prompts

        read_prompts(calibration_prompts)  # a bad file fails now, not after the model loads

    # The converter tools print to fds 1/2 directly: captured, replayed only on failure.
    with native_output_captured() as console:
        converters = {target: load_converter(target) for target in chosen_targets}
        bar = _StageProgress(len(COMPONENTS) * len(chosen_targets), progress, console)
        try:
            _export_components(
                model,
                out,
                converters,
                plan,
                rewrite_changes,
                bar,
                sampling=(steps, sampler, guidance),
                force=force,
                negative_prompt=negative_prompt,
                calibration_prompts=calibration_prompts,
            )
        finally:
            bar.close()
    return out


def _export_components(
    model: str | Path | None,
    out: Path,
    converters: dict[Target, Converter],
    plan: dict[tuple[Target, Component], Recipe],
    rewrite_changes: dict[Target, dict[str, Any]],
    bar: _StageProgress,
    sampling: tuple[int | None, str | None, float | None],
    force: bool,
    negative_prompt: str,
    calibration_prompts: str | Path | None = None,
) -> None:
    """``export_bundle``'s work once the options are checked: load, convert, write."""
    from ..bundle import write_bundle
    from ..checkpoints import load_model
    from ..schedulers import make_sampler

    chosen_targets = list(converters)
    steps, sampler, guidance = sampling
    bar.stage("model", "load")
    loaded = load_model(model if model is not None else DEFAULT_MODEL)
    config = _with_sampling(loaded.config, steps, sampler, guidance)
    chosen_sampler = make_sampler(config.pipeline, num_inference_steps=steps)
    # None leaves a converter its own defaults (rewrite.DEFAULT_REWRITES[target]).
    options = {
        t: rewrite_options(t, rewrite_changes[t], chosen_sampler.timesteps)
        if t in rewrite_changes
        else None
        for t in chosen_targets
    }
    calibration = None
    if any(t == "tflite" and needs_calibration(r) for (t, _), r in plan.items()):
        bar.stage("model", "calibrate")
        calibration = collect_export_calibration(
            loaded, config, calibration_prompts, negative_prompt
        )
    with write_bundle(
        out,
        config=config,
        tokenizer=loaded.tokenizer,
        sampler=chosen_sampler,
        source=loaded.source,
        source_sha256=loaded.source_sha256,
        negative_prompt=negative_prompt,
        force=force,
    ) as writer:
        for component in COMPONENTS:
            module = loaded.modules.pop(component)
            for target in chosen_targets:
                bar.stage(f"{target}/{component}", f"convert ({plan[target, component].name})")
                started = time.perf_counter()
                recipe = plan[target, component]
                extra = {"calibration": calibration} if target == "tflite" and calibration else {}
                try:
                    artifact = converters[target](
                        module,
                        config,
                        component,
                        writer.path_for(target, component),
                        recipe,
                        options[target],
                        **extra,
                    )
                except MobileDiffError:
                    raise
                except Exception as exc:  # a converter tool's own failure: one line, no trace
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    raise ConversionError(
                        f"{target}/{component} ({recipe.name}): the converter failed with "
                        f"{type(exc).__name__}: {first} (MOBILEDIFF_VERBOSE=1 shows its output)"
                    ) from exc
                artifact.details.setdefault(
                    "export_seconds", round(time.perf_counter() - started, 2)
                )
                artifact.details.setdefault("peak_rss_bytes_so_far", _peak_rss_bytes())
                writer.add(artifact)
                bar.advance()
            del module
            gc.collect()
        bar.stage("bundle", "hash and verify")


def needs_calibration(recipe: Recipe) -> bool:
    """Whether a LiteRT recipe needs activation ranges (full integer).

    ``mixed`` measures on a few synthetic samples instead: a pipeline run of a paper-size
    model would cost it minutes for two samples.
    """
    return recipe.activations == "int8"


def collect_export_calibration(
    loaded, config, prompts_file: str | Path | None = None, negative_prompt: str = ""
):
    """Calibration inputs from the PyTorch pipeline at the bundle's own sampling.

    ``loaded`` is a ``checkpoints.LoadedModel``, ``config`` the config the bundle records.
    """
    from ..pipeline import Pipeline
    from .calibration import calibration_prompts, collect_calibration

    prompts, origin = calibration_prompts(loaded.source, prompts_file)
    pipeline = replace(Pipeline.from_loaded(loaded), config=config)
    calibration = collect_calibration(pipeline, prompts, negative_prompt=negative_prompt)
    return replace(calibration, prompts_from=origin)


def _peak_rss_bytes() -> int | None:
    """The process's peak resident memory so far (Linux and macOS), for the export report."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _with_sampling(config, steps: int | None, sampler: str | None, guidance: float | None):
    """The model config with the sampling the bundle records (static shapes follow it)."""
    pipeline = config.pipeline
    changes: dict[str, Any] = {}
    if sampler is not None:
        changes["sampler"] = sampler
    if steps is not None:
        changes["num_inference_steps"] = steps
    if guidance is not None:
        changes["guidance_scale"] = float(guidance)
    if not changes:
        return config
    return replace(config, pipeline=replace(pipeline, **changes))


class _StageProgress:
    """Progress over the (target, component) conversions, naming the current stage.

    On a terminal, a bar; in a pipe or a CI log, one line per stage with the time the
    previous one took. ``stream`` is the original stderr (converter output is captured).
    """

    def __init__(self, total: int, enabled: bool, stream: TextIO) -> None:
        self._bar, self._stream, self._enabled = None, stream, enabled
        self._done, self._total = 0, total
        self._started = time.perf_counter()
        if enabled and stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc="export", unit="model", dynamic_ncols=True, file=stream
            )

    def stage(self, what: str, stage: str) -> None:
        if self._bar is not None:
            self._bar.set_description(f"{what}: {stage}")
        elif self._enabled:
            elapsed = time.perf_counter() - self._started
            self._stream.write(
                f"export [{self._done}/{self._total}, {elapsed:.0f}s] {what}: {stage}\n"
            )
            self._stream.flush()

    def advance(self) -> None:
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
