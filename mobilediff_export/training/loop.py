"""The loop every stage shares: steps, progress, atomic checkpoints and exact resume.

A stage is an object with ``total_steps``, ``train_step(step, generator)``,
``state_dict()`` / ``load_state_dict()`` and ``finish()``. ``run_stage`` drives it::

    <run>/<stage>/checkpoint.safetensors   every checkpoint_every steps, and when
                                           interrupted (``state.py``: no pickle)
    <run>/<stage>/log.jsonl       one line of metrics every log_every steps
    <run>/<stage>/done.json       written last: steps, wall and CPU seconds, final metrics,
                                  fingerprint

Exact resume. Every random draw of step ``k`` comes from a generator seeded by
``(seed, stage, k, rank)`` and every batch of data from scene indices fixed by ``k``, so
the checkpoint only has to hold the step, the weights, the optimizer (and EMA, grad
scaler) state and torch's global RNG state; a resumed run then computes exactly what an
uninterrupted run would. Ctrl-C or SIGTERM is deferred to the end of the current step,
which is checkpointed before the loop exits (a second Ctrl-C stops at once, leaving the
previous checkpoint).

Checkpoints and outputs are written atomically (temporary file, then rename). A
checkpoint is a safetensors file whose metadata holds the state's structure as JSON
(``state.py``); nothing is ever unpickled.

Fingerprints. ``done.json`` records a hash of what the stage trains from (the networks,
the data, its own recipe section) and of the stages it depends on, so ``train all``
skips a finished stage only while nothing it depends on changed (retuning the GAN stage
does not retrain the teacher), and a checkpoint from another recipe is refused instead
of resumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import MobileDiffError
from ..fileio import atomic_write_text
from .config import LoopConfig, Recipe
from .runtime import Runtime
from .state import load_state, save_state

CHECKPOINT = "checkpoint.safetensors"
DONE = "done.json"
LOG = "log.jsonl"

# Which finished stages each stage reads.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "vae": (),
    "teacher": ("vae",),
    "distill": ("vae", "teacher"),
    "gan": ("vae", "distill"),
    "classifier": (),
}


class StageInterrupted(MobileDiffError):
    """Training stopped early (Ctrl-C, SIGTERM or ``stop_after``); a checkpoint was saved."""


class Stage(Protocol):
    name: str
    loop: LoopConfig

    @property
    def total_steps(self) -> int: ...

    def train_step(self, step: int, generator: torch.Generator) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def finish(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- small helpers


def step_generator(seed: int, stage: str, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator for one step of one stage on one process."""
    digest = hashlib.sha256(f"{seed}/{stage}/{step}/{rank}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def randn(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Gaussian noise drawn on the CPU generator (the same numbers on any device)."""
    return torch.randn(shape, generator=generator).to(device)


def learning_rate(loop: LoopConfig, step: int, total: int | None = None) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak at the last step."""
    total = total or loop.steps
    warm = min(1.0, (step + 1) / max(loop.warmup_steps, 1))
    progress = min(1.0, step / max(total - 1, 1))
    return loop.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class EMA:
    """An exponential moving average of a module's weights, with the usual warm-up."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        import copy

        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, p in zip(self.module.parameters(), module.parameters(), strict=True):
            ema.lerp_(p.detach().to(ema.dtype), 1.0 - decay)
        for ema, b in zip(self.module.buffers(), module.buffers(), strict=True):
            ema.copy_(b)


def adamw(module: nn.Module, loop: LoopConfig) -> torch.optim.AdamW:
    """The stages' optimizer: AdamW at the stage's learning rate and weight decay."""
    return torch.optim.AdamW(module.parameters(), lr=loop.lr, weight_decay=loop.weight_decay)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    grad_clip: float,
    scaler: torch.amp.GradScaler | None,
) -> float:
    """Backward, clip, step (through the fp16 grad scaler when there is one); the grad norm."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(norm)


# --------------------------------------------------------------------------- fingerprints


# Model metadata a stage's result does not depend on (applied when a model is exported).
METADATA = ("name", "description", "notes")


def recipe_hash(recipe: Recipe, stage: str) -> str:
    """Hash of what ``stage`` trains from: the networks, the data and its own section."""
    full = recipe.to_dict()
    model = {k: v for k, v in full["model"].items() if k not in METADATA}
    relevant = {"model": model, "data": full["data"], stage: full[stage]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def read_done(run_dir: Path, stage: str) -> dict[str, Any] | None:
    path = run_dir / stage / DONE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def fingerprint(recipe: Recipe, run_dir: Path, stage: str) -> str:
    """Hash of the stage's part of the recipe and of the finished stages it reads."""
    parts = [recipe_hash(recipe, stage), stage]
    for up in UPSTREAM.get(stage, ()):
        done = read_done(run_dir, up)
        if done is None:
            raise MobileDiffError(
                f"stage {stage} needs stage {up} first: run `mobilediff train {up}` "
                f"(or `mobilediff train all`) with the same --run-dir {run_dir}"
            )
        parts.append(done["fingerprint"])
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def check_checkpoint(path: Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint's contents, or None if there is none; refuses another recipe's."""
    if not path.is_file():
        return None
    state = load_state(path)
    if state.get("fingerprint") != expected:
        raise MobileDiffError(
            f"{path} was written for another recipe or other upstream stages; "
            "pass --restart to train this stage from scratch"
        )
    return state


# --------------------------------------------------------------------------- interrupts


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[dict[str, bool]]:
    """Turn the first SIGINT / SIGTERM into a flag the loop checks between steps."""
    flag = {"stop": False}
    if not _in_main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:  # a second one: stop now
            raise KeyboardInterrupt
        flag["stop"] = True
        print(
            "\nstopping after this step (checkpointing); press Ctrl-C again to abort",
            file=sys.stderr,
            flush=True,
        )

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------- the loop


class _Progress:
    """A tqdm bar on a terminal, one log line per ``log_every`` steps otherwise."""

    def __init__(self, name: str, start: int, total: int, enabled: bool) -> None:
        self.name, self.total, self.enabled = name, total, enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True)
        self.t0, self.s0 = time.perf_counter(), start

    def update(self, step: int, metrics: dict[str, float] | None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(1)
            if metrics:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
            return
        if metrics is not None:
            done = step + 1 - self.s0
            rate = done / max(time.perf_counter() - self.t0, 1e-9)
            eta = (self.total - step - 1) / max(rate, 1e-9)
            shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            print(
                f"[{self.name}] step {step + 1}/{self.total} {shown} "
                f"({rate:.2f} it/s, eta {eta / 60:.1f} min)",
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_stage(
    stage: Stage,
    recipe: Recipe,
    run_dir: Path,
    runtime: Runtime,
    restart: bool = False,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train ``stage`` to the end, resuming from its checkpoint; returns its done record.

    A stage already finished with the same fingerprint is skipped (its record returned)
    unless ``restart``. ``stop_after`` stops (with a checkpoint) once that many steps are
    done, as an interruption would: ``StageInterrupted`` is raised.
    """
    stage_dir = run_dir / stage.name
    expected = fingerprint(recipe, run_dir, stage.name)
    ckpt_path = stage_dir / CHECKPOINT
    if restart:
        for name in (CHECKPOINT, DONE):
            (stage_dir / name).unlink(missing_ok=True)
    done = read_done(run_dir, stage.name)
    if done is not None and done.get("fingerprint") == expected:
        if runtime.is_main:
            print(f"[{stage.name}] already done ({done['steps']} steps); skipping", flush=True)
        return done

    start, elapsed, cpu = 0, 0.0, 0.0
    if ckpt_path.is_file():
        state = check_checkpoint(ckpt_path, expected)
        assert state is not None
        stage.load_state_dict(state["stage"])
        torch.set_rng_state(state["torch_rng"])
        start, elapsed = int(state["step"]), float(state["elapsed"])
        cpu = float(state.get("cpu_seconds", 0.0))
        if runtime.is_main:
            print(f"[{stage.name}] resuming at step {start}/{stage.total_steps}", flush=True)

    def save(step: int) -> None:
        if runtime.is_main:
            save_state(
                ckpt_path,
                {
                    "step": step,
                    "elapsed": elapsed + time.perf_counter() - t0,
                    "cpu_seconds": cpu + time.process_time() - c0,
                    "fingerprint": expected,
                    "stage": stage.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                },
            )
        runtime.barrier()

    seed = recipe.data.seed
    loop = stage.loop
    progress = _Progress(stage.name, start, stage.total_steps, runtime.is_main and runtime.progress)
    t0, c0 = time.perf_counter(), time.process_time()
    log_lines: list[str] = []
    last: dict[str, float] = {}
    step = start
    try:
        with deferred_interrupts() as flag:
            for step in range(start, stage.total_steps):
                metrics = stage.train_step(
                    step, step_generator(seed, stage.name, step, runtime.rank)
                )
                last = {k: runtime.all_mean(v) for k, v in metrics.items()}
                logged = (step + 1) % loop.log_every == 0 or step + 1 == stage.total_steps
                progress.update(step, last if logged else None)
                if logged and runtime.is_main:
                    log_lines.append(json.dumps({"step": step + 1, **last}))
                stopping = flag["stop"] or (stop_after is not None and step + 1 >= stop_after)
                checkpoint = (step + 1) % loop.checkpoint_every == 0 or stopping
                if checkpoint and step + 1 < stage.total_steps:
                    _append_log(stage_dir, log_lines, runtime)
                    save(step + 1)
                if stopping and step + 1 < stage.total_steps:
                    raise StageInterrupted(
                        f"stage {stage.name} stopped at step {step + 1}/{stage.total_steps}; "
                        "run the same command again to resume"
                    )
    finally:
        progress.close()
    _append_log(stage_dir, log_lines, runtime)
    outputs = stage.finish()
    seconds = elapsed + time.perf_counter() - t0
    record = {
        "stage": stage.name,
        "steps": stage.total_steps,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu + time.process_time() - c0, 1),
        "threads": torch.get_num_threads(),
        "world_size": runtime.world_size,
        "metrics": last,
        "outputs": outputs,
        "fingerprint": expected,
    }
    if runtime.is_main:
        atomic_write_text(stage_dir / DONE, json.dumps(record, indent=2) + "\n")
        ckpt_path.unlink(missing_ok=True)
        print(
            f"[{stage.name}] done: {stage.total_steps} steps in {seconds / 60:.1f} min", flush=True
        )
    runtime.barrier()
    return record


def _append_log(stage_dir: Path, lines: list[str], runtime: Runtime) -> None:
    if lines and runtime.is_main:
        stage_dir.mkdir(parents=True, exist_ok=True)
        with (stage_dir / LOG).open("a", encoding="utf-8") as fh:
            fh.write("".join(line + "\n" for line in lines))
        lines.clear()
