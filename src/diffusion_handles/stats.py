"""Small statistics shared by the benchmarks and the model comparisons (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float | None], n_resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Mean and percentile-bootstrap confidence interval of ``values`` (None/NaN dropped).

    Returns ``{"mean", "lo", "hi", "n"}`` (``None`` entries when no value is left).
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))  # (R, n) resample indices
    means = v[idx].mean(axis=1)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(v.size)}


__all__ = ["bootstrap_ci"]
