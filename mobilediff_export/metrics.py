"""Error figures of a converted model's outputs against the PyTorch original.

One definition for every report (``validate``'s parity.json, the Core ML Linux checks,
the benchmarks), so their figures read alike::

    max_abs_error    max |ref - got|
    mean_abs_error   mean |ref - got|
    output_scale     max |ref|
    relative_error   max_abs_error / output_scale   (issue "Export": "within 1e-4 of the
                                                     output scale")
    psnr_db          20 log10(peak / RMSE), peak = the reference's range (max - min),
                     capped at PSNR_CAP_DB (identical outputs)

Non-finite outputs give None for every error figure: a NaN never passes a threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PSNR_CAP_DB = 100.0


def psnr_from_mse(mse: float, peak: float) -> float:
    """20 log10(peak / sqrt(mse)), capped at ``PSNR_CAP_DB``."""
    if mse <= 0.0 or peak <= 0.0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 20.0 * math.log10(peak / math.sqrt(mse)))


def psnr_db(reference: np.ndarray, other: np.ndarray, peak: float) -> float:
    """20 log10(peak / RMSE) of ``other`` against ``reference``, capped."""
    diff = np.asarray(reference, np.float64) - np.asarray(other, np.float64)
    return psnr_from_mse(float(np.mean(diff * diff)), peak)


def error_figures(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """The figures above for two arrays of the same shape."""
    reference = np.asarray(reference, np.float64)
    other = np.asarray(other, np.float64)
    scale = float(np.abs(reference).max())
    if not np.all(np.isfinite(other)):
        return {
            "max_abs_error": None,
            "mean_abs_error": None,
            "output_scale": scale,
            "relative_error": None,
            "psnr_db": None,
        }
    err = np.abs(reference - other)
    max_err = float(err.max())
    mse = float(np.mean(err * err))
    return {
        "max_abs_error": max_err,
        "mean_abs_error": float(err.mean()),
        "output_scale": scale,
        "relative_error": max_err / scale if scale > 0 else max_err,
        "psnr_db": psnr_from_mse(mse, float(reference.max() - reference.min())),
    }
