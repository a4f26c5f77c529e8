"""Uncertainty: bootstrap confidence intervals over users and a paired test between two models."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(
    values: np.ndarray, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean and percentile bootstrap interval of a per-user metric."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = max(1, 8_000_000 // max(len(values), 1))  # replicates per draw: memory bounded for millions of users
    means = np.concatenate(
        [
            values[rng.integers(0, len(values), size=(min(rows, n_boot - i), len(values)))].mean(1)
            for i in range(0, n_boot, rows)
        ]
    )
    return float(values.mean()), float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_test(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Paired comparison of per-user metrics of two models on the same users.

    Wilcoxon signed-rank p-value, plus the paired bootstrap interval of the mean difference (a - b).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a - b
    mean, lo, hi = bootstrap_ci(diff, n_boot=n_boot, seed=seed)
    from scipy import stats  # on use, not by every process that loads the assets (docs/architecture.md)

    p = float(stats.wilcoxon(a, b, zero_method="zsplit").pvalue) if np.any(diff != 0) else 1.0
    return {"mean_diff": mean, "ci_low": lo, "ci_high": hi, "p_wilcoxon": p, "users": len(diff)}
