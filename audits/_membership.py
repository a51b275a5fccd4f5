"""Membership inference: can an attacker tell training rows (members) from unseen rows?

An attack gives every row a score, higher meaning "more likely a member"; thresholding the
score trades true positives (members caught) against false positives (non-members accused).
This module measures an attack from its scores on equal numbers of members and non-members:

* ``auc``: area under the ROC curve (0.5 = chance);
* ``balanced_accuracy``: (TPR + TNR) / 2 at the best threshold, and ``advantage`` = TPR - FPR
  there (the threshold is chosen on the same rows, which favours the attacker: a cautious
  choice for a privacy audit);
* ``tpr_at_fpr``: the highest TPR whose FPR is at most 1 % and 0.1 % (Carlini et al. 2022,
  "Membership inference attacks from first principles"): what matters is confidently
  identifying *some* members. With m non-members the smallest non-zero FPR is 1/m; below
  that the rate is measured at FPR 0 (``fpr_resolution`` says so).

Intervals come from seeded bootstrap resamples of members and non-members separately.

**Empirical ε.** An (ε, δ)-DP training algorithm bounds every attack:
TPR ≤ e^ε·FPR + δ and 1 - FPR ≤ e^ε·(1 - TPR) + δ. Each ROC point therefore implies
ε ≥ max(log((TPR - δ) / FPR), log((1 - FPR - δ) / (1 - TPR))). ``point_estimate`` is the largest
such value from the observed rates (finite points only); ``lower_bound`` replaces the rates
by exact Clopper-Pearson bounds (TPR low, FPR high) with a Bonferroni correction over all
ROC points, so it holds with the stated confidence for every threshold at once (Jagielski et
al. 2020; Nasr et al. 2021). With a few hundred rows it is weak by design: a large
``lower_bound`` is strong evidence of leakage, a small one is not evidence of privacy.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from audits._intervals import clopper_pearson, estimate, finite_or_none, percentile_interval

FPR_LEVELS = {"1pct": 0.01, "0_1pct": 0.001}
MAX_ROC_POINTS = 200


def _roc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    fpr, tpr, _ = roc_curve(labels, np.concatenate([member_scores, nonmember_scores]), drop_intermediate=False)
    return fpr, tpr


def attack_rates(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """AUC, best-threshold balanced accuracy and advantage, and TPR at each FPR level."""
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    scores = np.concatenate([member_scores, nonmember_scores])
    fpr, tpr = _roc(member_scores, nonmember_scores)
    advantage = float(np.max(tpr - fpr))
    rates = {
        "auc": float(roc_auc_score(labels, scores)),
        "balanced_accuracy": 0.5 + advantage / 2,
        "advantage": advantage,
    }
    for name, level in FPR_LEVELS.items():
        rates[f"tpr_at_{name}_fpr"] = float(tpr[fpr <= level + 1e-12].max())
    return rates


def downsample_curve(fpr: np.ndarray, tpr: np.ndarray, max_points: int = MAX_ROC_POINTS) -> list[list[float]]:
    """At most `max_points` ROC points that keep the curve's step shape and both ends.

    Per distinct FPR only the lowest and highest TPR are kept (the ends of each vertical
    step); if that is still too many, points are taken evenly along the curve.
    """
    points: list[list[float]] = []
    for x, y in zip(np.asarray(fpr, dtype=float).tolist(), np.asarray(tpr, dtype=float).tolist()):
        if len(points) >= 2 and points[-1][0] == x and points[-2][0] == x:
            points[-1][1] = max(points[-1][1], y)  # extend the current vertical step
        else:
            points.append([x, y])
    if len(points) > max_points:
        chosen = np.unique(np.round(np.linspace(0, len(points) - 1, max_points)).astype(int))
        points = [points[i] for i in chosen]
    return points


def _epsilon_at(tpr: np.ndarray, fpr: np.ndarray, delta: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where((fpr > 0) & (tpr - delta > 0), np.log((tpr - delta) / fpr), -np.inf)
        second = np.where((tpr < 1) & (1 - fpr - delta > 0), np.log((1 - fpr - delta) / (1 - tpr)), -np.inf)
    return np.maximum(first, second)


def empirical_epsilon(member_scores: np.ndarray, nonmember_scores: np.ndarray, delta: float, confidence: float) -> dict:
    """The ε that the attack's ROC points imply; see the module docstring."""
    n_members, n_nonmembers = len(member_scores), len(nonmember_scores)
    fpr, tpr = _roc(member_scores, nonmember_scores)
    point = _epsilon_at(tpr, fpr, delta)
    finite = np.isfinite(point)
    best = int(np.argmax(np.where(finite, point, -np.inf))) if finite.any() else None
    # exact bounds on every ROC point at once: two one-sided bounds per point, union bound
    points = len(fpr)
    level = 1 - (1 - confidence) / points
    tpr_low = np.array([clopper_pearson(round(t * n_members), n_members, level)[0] for t in tpr])
    fpr_high = np.array([clopper_pearson(round(f * n_nonmembers), n_nonmembers, level)[1] for f in fpr])
    conservative = _epsilon_at(tpr_low, fpr_high, delta)
    return {
        "delta": delta,
        "confidence": confidence,
        "point_estimate": finite_or_none(max(0.0, float(point[best]))) if best is not None else 0.0,
        "point_estimate_at": {"fpr": float(fpr[best]), "tpr": float(tpr[best])} if best is not None else None,
        "lower_bound": max(0.0, float(np.max(conservative))) if np.isfinite(conservative).any() else 0.0,
        "method": "Clopper-Pearson bounds on TPR/FPR, Bonferroni over all ROC thresholds",
    }


def attack_report(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, n_boot: int, ci_level: float,
                  rng: np.random.Generator, delta: float) -> dict:
    """Every reported number of one attack, with bootstrap intervals, ROC points and ε bounds."""
    member_scores = np.asarray(member_scores, dtype=float)
    nonmember_scores = np.asarray(nonmember_scores, dtype=float)
    point = attack_rates(member_scores, nonmember_scores)
    resampled = {name: [] for name in point}
    for _ in range(n_boot):
        members = member_scores[rng.integers(0, len(member_scores), len(member_scores))]
        nonmembers = nonmember_scores[rng.integers(0, len(nonmember_scores), len(nonmember_scores))]
        for name, value in attack_rates(members, nonmembers).items():
            resampled[name].append(value)
    report = {}
    for name, value in point.items():
        low, high = percentile_interval(np.array(resampled[name]), ci_level) if n_boot else (None, None)
        report[name] = estimate(value, low, high)
    fpr, tpr = _roc(member_scores, nonmember_scores)
    report["roc_curve"] = downsample_curve(fpr, tpr)
    report["fpr_resolution"] = 1.0 / len(nonmember_scores)
    report["empirical_epsilon"] = empirical_epsilon(member_scores, nonmember_scores, delta, ci_level)
    report["mean_score"] = {"members": float(member_scores.mean()), "non_members": float(nonmember_scores.mean())}
    return report


def full_roc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ROC point (for the evidence file)."""
    return _roc(np.asarray(member_scores, dtype=float), np.asarray(nonmember_scores, dtype=float))


def default_delta(n_members: int) -> float:
    """δ used for the empirical bound of a run without a recorded δ: 1 / (10 N)."""
    return 1.0 / (10 * max(n_members, 1)) if n_members else math.nan
