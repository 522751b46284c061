"""Where training runs: device, processes (DDP under ``torchrun``) and mixed precision.

One code path for a laptop CPU and a GPU cluster, chosen by flags, not by a fork:

    mobilediff train teacher --config demo                     one CPU process
    torchrun --nproc_per_node 8 -m mobilediff_export.cli train teacher --config demo \\
        --ddp --amp bf16                                       8 GPUs, bf16 autocast

``--ddp`` reads the ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables torchrun sets
and joins a process group (NCCL on CUDA, Gloo on CPU); each process trains on its own
slice of every global batch and the gradients are averaged by ``DistributedDataParallel``.
Only rank 0 writes checkpoints, logs and outputs. ``--amp fp16`` adds a gradient scaler;
``bf16`` needs none. Nothing here touches CUDA unless CUDA is what runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import MobileDiffError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    ddp: bool = False
    amp: str | None = None
    progress: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_rank(self, batch_size: int) -> int:
        """This process's share of a global batch."""
        if batch_size % self.world_size:
            raise MobileDiffError(
                f"batch size {batch_size} does not split over {self.world_size} processes"
            )
        return batch_size // self.world_size

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        if self.amp == "fp16":
            return torch.amp.GradScaler(self.device.type)
        return None

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` on this device, inside DDP when running distributed."""
        module = module.to(self.device)
        if not self.ddp:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def barrier(self) -> None:
        if self.ddp:
            dist.barrier()

    def all_mean(self, value: float) -> float:
        """The mean of a scalar over all processes (for logs)."""
        if not self.ddp:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") else module


def make_runtime(
    ddp: bool = False,
    amp: str | None = None,
    device: str | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> Runtime:
    """Set up this process: threads, device, and the process group when ``ddp``."""
    if amp is not None and amp not in AMP_DTYPES:
        raise MobileDiffError(f"--amp must be one of {', '.join(AMP_DTYPES)}; got {amp!r}")
    if threads:
        torch.set_num_threads(threads)
    rank, world, local = 0, 1, 0
    if ddp:
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise MobileDiffError(
                "--ddp needs torchrun (RANK and WORLD_SIZE are not set); "
                "run: torchrun --nproc_per_node N -m mobilediff_export.cli train ... --ddp"
            )
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, ddp, amp, progress)


@contextlib.contextmanager
def single_process_group(path: str) -> Iterator[None]:
    """A one-process Gloo group (file rendezvous): the DDP path, testable on one CPU."""
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
