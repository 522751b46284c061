"""This CPU's matmul peak, measured in the same run as the model timings it normalises.

A square fp32 matmul (``torch.mm``, which lands in the oneDNN / MKL sgemm) at the thread
count the models ran with is the best dense throughput a network can hope for here;
``achieved GFLOP/s / peak`` says how much of the machine a component uses. The peak is the
*best* of several repeats (the hardware's capability, less the noise of a shared machine);
the median is kept beside it so a reader can see how noisy the run was.
"""

from __future__ import annotations

from typing import Any

from .stats import summarize, time_ms


def measure_matmul_peak(
    threads: int, size: int = 4096, repeats: int = 8, warmup: int = 2
) -> dict[str, Any]:
    """GFLOP/s of an fp32 ``size``x``size`` matmul at ``threads`` threads (2 FLOPs per MAC)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn((size, size), generator=generator)
        b = torch.randn((size, size), generator=generator)
        out = torch.empty((size, size))
        flops = 2.0 * size**3
        with torch.inference_mode():
            for _ in range(warmup):
                torch.mm(a, b, out=out)
            times = [time_ms(lambda: torch.mm(a, b, out=out))[0] for _ in range(repeats)]
    finally:
        torch.set_num_threads(previous)
    rates = [flops / (ms / 1e3) / 1e9 for ms in times]
    return {
        "method": f"torch.mm fp32 {size}x{size} @ {size}x{size}, best of {repeats} after "
        f"{warmup} warm-up",
        "threads": threads,
        "size": size,
        "peak_gflops": round(max(rates), 1),
        "median_gflops": round(sorted(rates)[len(rates) // 2], 1),
        "time_ms": summarize(times),
    }


def fraction_of_peak(flops: int | float | None, ms: float | None, peak_gflops: float) -> dict:
    """Achieved GFLOP/s of ``flops`` in ``ms`` and its fraction of ``peak_gflops``."""
    if not flops or not ms or peak_gflops <= 0:
        return {"gflops": None, "fraction_of_peak": None}
    achieved = flops / (ms / 1e3) / 1e9
    return {"gflops": round(achieved, 2), "fraction_of_peak": round(achieved / peak_gflops, 4)}
