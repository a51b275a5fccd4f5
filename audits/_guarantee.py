"""The formal privacy guarantee a run claims: its `privacy.json`, read and validated.

The DP engine writes ``privacy.json`` into the run directory of every differentially private
run; a run without it was trained without DP. Agreed schema::

    {"epsilon": float, "delta": float, "accountant": "prv|rdp|gdp", "noise_multiplier": float,
     "max_grad_norm": float, "sample_rate": float, "steps": int, "epochs": int,
     "dataset_size": int, "trained": "full|lora|top_k", "opacus_version": str,
     "epsilon_history": [[step, epsilon], ...],
     # federated runs, optionally:
     "sites": {site: {"epsilon": float, "delta": float}}, "central": {"epsilon": float, "delta": float}}

ε may be written as null or a non-finite number when the accountant could not bound it; it
is then read as +∞ (no guarantee).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_ft.errors import AuditError
from secure_ft.records.run_directory import PRIVACY_FILE



@dataclass(frozen=True)
class ScopedGuarantee:
    """(ε, δ) of one scope: the run, the central aggregate, or one federated site."""

    scope: str  # "run", "central" or "site:<name>"
    epsilon: float  # +inf when unbounded
    delta: float


@dataclass
class PrivacyGuarantee:
    path: Path
    scopes: list[ScopedGuarantee]
    details: dict[str, Any] = field(default_factory=dict)  # the other recorded fields, as written
    site_details: dict[str, dict[str, Any]] = field(default_factory=dict)  # a federation's sites, as written

    def canary_noise(self) -> tuple[float | None, float | None, str]:
        """(σ, C) a canary run imitating this run trains with, and where they come from.

        A central run's own σ and C. A federation states them per site: the least noisy site's
        (the smallest σ), so the canaries measure the weakest noise any site's records had; when
        a site trained without DP, (None, None) — so did its records.
        """
        if self.details.get("noise_multiplier") is not None and self.details.get("max_grad_norm") is not None:
            return float(self.details["noise_multiplier"]), float(self.details["max_grad_norm"]), "the run"
        noises = [(values.get("noise_multiplier"), values.get("max_grad_norm"), site)
                  for site, values in sorted(self.site_details.items())]
        if not noises or any(sigma is None or clip is None for sigma, clip, _ in noises):
            return None, None, "none (the run states no noise multiplier for every site)" if noises else "none"
        sigma, clip, site = min(noises, key=lambda item: (float(item[0]), item[2]))
        return float(sigma), float(clip), f"site {site}, the least noisy of {len(noises)}"

    @property
    def delta(self) -> float | None:
        """The δ of the run (or of the central aggregate), for the empirical ε bound."""
        for scope in self.scopes:
            if scope.scope in ("run", "central"):
                return scope.delta
        return max((scope.delta for scope in self.scopes), default=None)


def _number(value: Any, where: str, name: str, allow_unbounded: bool) -> float:
    if value is None and allow_unbounded:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuditError(f"{where}: field {name!r} must be a number, got {value!r}; the DP engine wrote a bad ledger")
    number = float(value)
    if math.isnan(number) or number < 0:
        raise AuditError(f"{where}: field {name!r} must be a non-negative number, got {value!r}")
    if math.isinf(number) and not allow_unbounded:
        raise AuditError(f"{where}: field {name!r} must be finite, got {value!r}")
    return number


def _scope(raw: Any, scope: str, where: str) -> ScopedGuarantee:
    if not isinstance(raw, dict) or "epsilon" not in raw or "delta" not in raw:
        raise AuditError(f"{where}: {scope} must be an object with 'epsilon' and 'delta', got {raw!r}")
    return ScopedGuarantee(
        scope,
        _number(raw["epsilon"], where, f"{scope}.epsilon", allow_unbounded=True),
        _number(raw["delta"], where, f"{scope}.delta", allow_unbounded=False),
    )


def read_guarantee(run_dir: Path) -> PrivacyGuarantee | None:
    """The run's guarantee, or None when the run has no privacy.json (not trained with DP)."""
    path = Path(run_dir) / PRIVACY_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AuditError(f"{path}: not a valid JSON privacy ledger ({error}); re-run training to rewrite it") from None
    if not isinstance(raw, dict):
        raise AuditError(f"{path}: expected a JSON object with epsilon and delta")
    where = str(path)
    scopes = []
    if "epsilon" in raw or "delta" in raw:
        scopes.append(_scope(raw, "run", where))
    if raw.get("central") is not None:
        scopes.append(_scope(raw["central"], "central", where))
    sites = raw.get("sites") or {}
    if not isinstance(sites, dict):
        raise AuditError(f"{path}: 'sites' must map site names to {{epsilon, delta}}")
    for site, values in sorted(sites.items()):
        scopes.append(_scope(values, f"site:{site}", where))
    if not scopes:
        raise AuditError(f"{path}: no 'epsilon'/'delta' recorded (neither for the run, 'central' nor 'sites')")
    details = {key: value for key, value in raw.items() if key not in ("epsilon", "delta", "central", "sites")}
    site_details = {site: dict(values) for site, values in sites.items()}
    return PrivacyGuarantee(path=path, scopes=scopes, details=details, site_details=site_details)
