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


def paired_comparison(pairs: Sequence[tuple[object, float, float]], level: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """A setting against a baseline on the same prompts and seeds.

    ``pairs`` are ``(prompt, score, baseline score)``, one per prompt-seed pair. Returns ``pairs`` (how many are
    finite on both sides), ``diff_mean`` (mean of score − baseline), its percentile bootstrap interval
    ``diff_ci_low`` / ``diff_ci_high`` resampling *prompts* (all seeds of a drawn prompt come along, so seeds of one
    prompt are not counted as independent evidence), and ``win_rate``, the fraction of pairs where the setting
    scores higher (ties count one half).
    """
    finite = [(p, a, b) for p, a, b in pairs
              if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)]
    nan = float("nan")
    if not finite:
        return {"pairs": 0, "diff_mean": nan, "diff_ci_low": nan, "diff_ci_high": nan, "win_rate": nan}
    diffs = np.asarray([a - b for _, a, b in finite], dtype=np.float64)
    prompts = list(dict.fromkeys(p for p, _, _ in finite))
    index = {p: i for i, p in enumerate(prompts)}
    group = np.asarray([index[p] for p, _, _ in finite])
    sums = np.bincount(group, weights=diffs, minlength=len(prompts))
    counts = np.bincount(group, minlength=len(prompts)).astype(np.float64)
    if len(prompts) > 1:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, len(prompts), size=(resamples, len(prompts)))
        means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
        alpha = (1 - level) / 2
        low, high = float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
    else:  # one prompt: nothing to resample
        low = high = float(diffs.mean())
    wins = float(np.mean(np.where(diffs > 0, 1.0, np.where(diffs == 0, 0.5, 0.0))))
    return {"pairs": len(finite), "diff_mean": float(diffs.mean()), "diff_ci_low": low, "diff_ci_high": high,
            "win_rate": wins}
