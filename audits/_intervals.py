"""Confidence intervals used by the audits: seeded bootstrap resamples and exact binomial bounds.

Every audit that reports an interval draws its resamples here, from a NumPy generator seeded
with the run's seed, so the same model on the same data gives the same intervals.

* :func:`bootstrap_counts` returns how often each row appears in each resample (the
  multinomial view of "draw n rows with replacement"); metrics that are sums over rows
  (confusion counts) are then one matrix product or `bincount` per resample.
* :func:`percentile_interval` turns resampled values into an equal-tailed percentile interval,
  ignoring resamples where the value was undefined (NaN), and says how many were ignored.
* :func:`simultaneous_intervals` gives intervals for many smooth estimates at once (group-rate
  differences) that all cover their targets together with the stated probability: the
  bootstrap max-t (studentized maximum) band.
* :func:`clopper_pearson` is the exact binomial interval, used where a rate must be bounded
  with guaranteed coverage (the empirical ε lower bound of the privacy audit).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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


def simultaneous_intervals(blocks: Iterable[tuple[np.ndarray, ...]],
                           level: float) -> tuple[list[tuple[np.ndarray, np.ndarray]], float | None]:
    """Bootstrap max-t intervals that cover every estimate of every block at once with probability `level`.

    Estimate k has a point value ``v_k`` with a standard error ``s_k`` and, in resample b, a
    value ``v*_bk`` with a standard error ``s*_bk`` computed the same way from that resample.
    The critical value ``c`` is the `level` quantile, over resamples, of the studentized maximum
    ``max_k |v*_bk - v_k| / s*_bk``, and estimate k's interval is ``v_k +/- c * s_k``. Taking the
    maximum over all estimates in each resample makes the coverage simultaneous while keeping
    the estimates' correlation (less conservative than Bonferroni), and studentizing each
    resample by its own standard error makes the statistic nearly pivotal, which is what gives
    the bootstrap-t its better small-sample coverage than intervals scaled by the resamples'
    spread (Hall 1992, *The Bootstrap and Edgeworth Expansion*, ch. 3): the studentized max-t
    construction of Romano & Wolf (2005, "Exact and approximate stepdown methods for multiple
    hypothesis testing", JASA 100), as a simultaneous band (Montiel Olea & Plagborg-Moller 2019,
    J. Applied Econometrics 34). Every interval contains its point estimate. It suits smooth
    estimates (differences of rates); a max or min over them is bounded by the caller from these
    intervals, not resampled itself.

    Parameters
    ----------
    blocks
        Tuples ``(point (P,), resamples (B, P))`` or ``(point, resamples, point_se (P,),
        resample_se (B, P))``, consumed once (a generator keeps memory at one block); all blocks
        form one family. Without standard errors, the resamples' standard deviation serves as
        ``s_k`` and ``s*_bk`` (not studentized per resample).
    level
        Simultaneous coverage, e.g. 0.95.

    Returns
    -------
    One ``(low, high)`` pair of (P,) arrays per block, and the critical value (None when no
    estimate varied). An estimate defined (not NaN) in fewer than half the resamples, or whose
    point is NaN, gets ``(-inf, inf)`` (the caller clips to the parameter's range); one whose
    resamples never vary gets ``(point, point)`` and does not enter the maximum.
    """
    kept, running = [], None
    for block in blocks:
        point = np.asarray(block[0], dtype=float)
        resamples = np.asarray(block[1], dtype=float).reshape(-1, len(point))
        defined = (~np.isnan(resamples)).sum(axis=0)
        usable = (defined >= max(2, len(resamples) / 2)) & ~np.isnan(point)
        spread = np.zeros(len(point))
        if usable.any():
            spread[usable] = np.nanstd(resamples[:, usable], axis=0, ddof=1)
        varies = usable & (spread > 1e-12)
        if len(block) > 2:
            se, resample_se = np.asarray(block[2], dtype=float), np.asarray(block[3], dtype=float)
            varies &= se > 0
        else:
            se, resample_se = spread, np.broadcast_to(spread, resamples.shape)
        if varies.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.abs(resamples[:, varies] - point[varies]) / resample_se[:, varies]
            block_max = np.where(np.isnan(t), -np.inf, t).max(axis=1)
            running = block_max if running is None else np.maximum(running, block_max)
        kept.append((point, se, usable, varies))
    critical = None
    if running is not None and (running > -np.inf).any():
        critical = float(np.quantile(running[running > -np.inf], level))
    intervals = []
    for point, se, usable, varies in kept:
        low, high = np.full(len(point), -np.inf), np.full(len(point), np.inf)
        low[usable], high[usable] = point[usable], point[usable]
        if critical is not None:
            low[varies] = point[varies] - critical * se[varies]
            high[varies] = point[varies] + critical * se[varies]
        intervals.append((low, high))
    return intervals, critical


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
