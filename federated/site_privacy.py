"""The accountant inputs a DP site sends with every update, so the coordinator can recompute its ε.

A deployed site trains on a machine the coordinator never sees; its ε alone would have to be
taken on trust. With each training reply a site therefore sends everything its accountant
used — the accountant's name, δ, and the full history of (σ, q, steps) — plus the ε it
computed. The coordinator keeps the last report of every site in ``privacy.json``
(`federated.handoff`), and the gate and ``secure-ft privacy RUN`` recompute each site's ε
from those inputs with a fresh accountant (`secure_ft.privacy.accountants`).

On the wire it is one JSON string in the reply's ``site`` record (key ``privacy``): Flower's
metric records carry numbers only, and metrics are averaged across sites, which would be
meaningless for σ or q.
"""

from __future__ import annotations

import json
import math
from typing import Any

REQUIRED = ("accountant", "delta", "history", "noise_multiplier", "sample_rate", "steps")


def site_privacy_report(guarantee: dict[str, Any], history: list[list[float]]) -> dict[str, Any]:
    """What a site reports: its stated (ε, δ) and every accountant input behind it."""
    epsilon = guarantee.get("epsilon")
    return {
        "epsilon": None if epsilon is None or not math.isfinite(float(epsilon)) else float(epsilon),
        "delta": float(guarantee["delta"]),
        "accountant": str(guarantee["accountant"]),
        "history": [[float(sigma), float(rate), int(steps)] for sigma, rate, steps in history],
        "noise_multiplier": float(guarantee["noise_multiplier"]),
        "sample_rate": float(guarantee["sample_rate"]),
        "steps": int(guarantee["steps"]),
        "max_grad_norm": float(guarantee["max_grad_norm"]),
        "dataset_size": int(guarantee["dataset_size"]),
        "target_epsilon": guarantee.get("target_epsilon"),
        "opacus_version": guarantee.get("opacus_version"),
        "data_fingerprint": guarantee.get("data_fingerprint"),
    }


def encode_site_privacy(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True)


def decode_site_privacy(text: object) -> dict[str, Any] | None:
    """A site's report as sent, or None when the reply carries none or a malformed one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        report = json.loads(text)
    except ValueError:
        return None
    if not isinstance(report, dict) or any(key not in report for key in REQUIRED):
        return None
    if not isinstance(report["history"], list):
        return None
    return report
