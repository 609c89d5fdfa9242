"""Summary statistics: the mean and a percentile bootstrap confidence interval."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["bootstrap_ci"]


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the sample mean and the percentile bootstrap interval of the mean, with a fixed RNG so a
    report is reproducible. NaN values are left out; with no finite value all three are NaN."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
