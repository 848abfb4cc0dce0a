"""Percentile bootstrap of a mean: the interval every rate and score of a method reports."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CONFIDENCE = 0.95
# Index-matrix elements drawn at once (4M int64 = 32 MB): bounds memory for many values.
_BLOCK_ELEMENTS = 1 << 22


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_boot: int = 1000, seed: int = 0,
                   confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean of ``values`` ``(n,)`` with a percentile bootstrap interval over them.

    Returns ``{"mean", "ci_low", "ci_high", "n"}``; the interval is widened to include the mean
    (float rounding can put it outside when every resample is equal).  No values: NaNs, n = 0.
    A rate is the mean of 0/1 values.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.shape[0]
    if n == 0:
        return {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    step = max(1, _BLOCK_ELEMENTS // n)
    means = np.concatenate([x[rng.integers(0, n, size=(min(step, n_boot - lo), n))].mean(axis=1)
                            for lo in range(0, n_boot, step)])
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    mean = float(x.mean())
    return {"mean": mean, "ci_low": float(min(low, mean)), "ci_high": float(max(high, mean)),
            "n": int(n)}
