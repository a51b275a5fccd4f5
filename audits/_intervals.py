"""Confidence intervals used by the audits: seeded bootstrap resamples and exact binomial bounds.

Every audit that reports an interval draws its resamples here, from a NumPy generator seeded
with the run's seed, so the same model on the same data gives the same intervals.

* :func:`bootstrap_counts` returns how often each row appears in each resample (the
  multinomial view of "draw n rows with replacement"); metrics that are sums over rows
  (confusion counts) are then one matrix product or `bincount` per resample.
* :func:`percentile_interval` turns resampled values into an equal-tailed percentile interval,
  ignoring resamples where the value was undefined (NaN), and says how many were ignored.
* :func:`clopper_pearson` is the exact binomial interval, used where a rate must be bounded
  with guaranteed coverage (the empirical ε lower bound of the privacy audit).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def bootstrap_counts(n_rows: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n_rows) integer matrix: row i's multiplicity in resample b (each row sums to n_rows)."""
    if n_rows == 0 or n_boot == 0:
        return np.zeros((n_boot, n_rows), dtype=np.int64)
    return rng.multinomial(n_rows, np.full(n_rows, 1.0 / n_rows), size=n_boot)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Equal-tailed percentile interval of the defined (non-NaN) samples along axis 0.

    Returns (None, None) when fewer than half the resamples gave a defined value: an interval
    built from a minority of resamples would describe a different population.
    """
    values = np.asarray(samples, dtype=float)
    defined = values[~np.isnan(values)]
    if len(values) == 0 or len(defined) < max(2, len(values) / 2):
        return None, None
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(defined, [tail, 1.0 - tail])
    return float(low), float(high)


def percentile_intervals(samples: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Column-wise :func:`percentile_interval` of a (n_boot, ...) array; NaN where undefined."""
    values = np.asarray(samples, dtype=float)
    flat = values.reshape(values.shape[0], -1)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    for column in range(flat.shape[1]):
        bounds = percentile_interval(flat[:, column], level)
        if bounds[0] is not None:
            low[column], high[column] = bounds
    return low.reshape(values.shape[1:]), high.reshape(values.shape[1:])


def clopper_pearson(successes: int, trials: int, level: float) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval for successes / trials."""
    if trials <= 0:
        return 0.0, 1.0
    alpha = 1.0 - level
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2, successes, trials - successes + 1))
    high = 1.0 if successes == trials else float(stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    return low, high


def wilson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for successes / trials (better coverage than the normal one near 0 and 1)."""
    if trials <= 0:
        return 0.0, 1.0
    z = float(stats.norm.ppf(0.5 + level / 2))
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def finite_or_none(value: float | None) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def estimate(value: float | None, low: float | None = None, high: float | None = None) -> dict[str, float | None]:
    """A point estimate with its interval, the shape every audit reports numbers in."""
    return {"value": finite_or_none(value), "ci_lower": finite_or_none(low), "ci_upper": finite_or_none(high)}
