"""A site's privacy odometer: every DP release of a run, kept in the site's own state folder.

A site's budget is spent when an update leaves it, whatever happens to the update next: the
coordinator may discard it, never receive it, or the site may crash right after sending. The
odometer therefore lives on the site's disk (``<state-dir>/run-<run>/odometer.json``, written
atomically, mode 0600), never in the SuperNode's memory, and is written *before* the update
is handed to Flower:

- ``begin(round)`` marks the round in progress before training starts;
- ``record_release(...)`` appends the round's (σ, q, steps) and the accountant state, and
  clears the mark — only then does the reply leave;
- ``record_failure(round, steps_taken)`` notes a round that raised before any release, with
  the steps it took before raising (not released, but taken on the data).

A process that finds a round still marked in progress when it opens the odometer knows the
previous process died mid-round, before its release: the round is recorded as
``interrupted`` (nothing left the site). The accountant state restored for the next round,
and so the per-run cap (``privacy.target_epsilon``), is the one saved with the last release,
so a SuperNode restart never resets the budget. The whole history is what the site states,
signed, to the coordinator (`secure_ft.privacy.signed_history`).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from secure_ft.errors import PrivacyError
from secure_ft.records.atomic_files import atomic_write_text, json_text

log = logging.getLogger(__name__)

ODOMETER_FILE = "odometer.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _steps_by_setting(history: list[list[float]]) -> Counter:
    counts: Counter = Counter()
    for sigma, rate, steps in history:
        counts[(float(sigma), float(rate))] += int(steps)
    return counts


class SiteOdometer:
    """One site's DP releases in one federated run (see the module docstring)."""

    def __init__(self, path: Path, state: dict[str, Any]):
        self.path = Path(path)
        self.state = state

    @classmethod
    def open(cls, state_dir: Path, site: str, run: str) -> "SiteOdometer":
        """The odometer of `run` at this site; a round left in progress is recorded as interrupted."""
        path = Path(state_dir) / ODOMETER_FILE
        if path.is_file():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                # never start again from zero: a lost odometer would under-state ε
                raise PrivacyError(f"{path}: the site's privacy odometer is unreadable ({error}); restore it from "
                                   "a backup — starting from zero would under-state this site's ε") from None
            if state.get("site") != site or state.get("run") != run:
                raise PrivacyError(f"{path}: the odometer belongs to site {state.get('site')!r}, run "
                                   f"{state.get('run')!r}, not site {site!r}, run {run!r}")
        else:
            state = {"site": site, "run": run, "sigma": None, "rows": None, "engine_state": None,
                     "releases": [], "not_released": [], "in_progress": None}
        odometer = cls(path, state)
        if state.get("in_progress") is not None:
            round_ = int(state["in_progress"])
            log.warning("site %s: round %d was interrupted before its update left this site (the previous process "
                        "stopped mid-round); recorded as not released", site, round_)
            state["not_released"].append({"round": round_, "reason": "interrupted", "at": _now()})
            state["in_progress"] = None
            odometer.save()
        return odometer

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json_text(self.state), mode=0o600)

    # -- the run's noise -------------------------------------------------------------------

    def noise_for(self, rows: int) -> float | None:
        """σ this site started the run with, if it had the same number of rows."""
        if self.state.get("sigma") is not None and self.state.get("rows") == rows:
            return float(self.state["sigma"])
        return None

    def keep_noise(self, sigma: float, rows: int) -> None:
        self.state["sigma"], self.state["rows"] = float(sigma), int(rows)
        self.save()

    @property
    def engine_state(self) -> dict[str, Any] | None:
        return self.state.get("engine_state")

    # -- rounds ----------------------------------------------------------------------------

    def begin(self, round_: int) -> None:
        self.state["in_progress"] = int(round_)
        self.save()

    def history(self) -> list[list[float]]:
        return [[r["noise_multiplier"], r["sample_rate"], r["steps"]] for r in self.state["releases"]]

    def record_release(self, round_: int, accountant_history: list[list[float]], engine_state: dict[str, Any]) -> None:
        """Record what this round releases (the accountant's steps beyond the last release) before it leaves."""
        before, after = _steps_by_setting(self.history()), _steps_by_setting(accountant_history)
        if any(after[key] < count for key, count in before.items()):
            raise PrivacyError(f"{self.path}: the accountant holds fewer steps than the odometer already recorded; "
                               "the site's accounting is inconsistent, stop and report this")
        added = [(key, after[key] - before[key]) for key in after if after[key] > before[key]]
        if not added:  # no step this round (budget spent): the update still left, with zero new steps
            last = accountant_history[-1] if accountant_history else [0.0, 1.0, 0]
            added = [((float(last[0]), float(last[1])), 0)]
        for (sigma, rate), steps in added:
            self.state["releases"].append({"round": int(round_), "noise_multiplier": float(sigma),
                                           "sample_rate": float(rate), "steps": int(steps), "at": _now()})
        self.state["engine_state"] = engine_state
        self.state["in_progress"] = None
        self.save()

    def record_failure(self, round_: int, steps_taken: list[list[float]] | None = None) -> None:
        """A round that raised before its release: nothing left the site.

        `steps_taken` are the (σ, q, steps) the round took before it raised; nothing of them was
        released, but a simulated federation counts them on the data set's ledger
        (`federated.simulation_budget`: steps taken on the data count).
        """
        if self.state.get("in_progress") == int(round_):
            self.state["not_released"].append({"round": int(round_), "reason": "failed", "at": _now(),
                                               "steps_taken": [[float(s), float(q), int(k)]
                                                               for s, q, k in (steps_taken or []) if int(k) > 0]})
            self.state["in_progress"] = None
            self.save()

    def released_in(self, round_: int) -> bool:
        return any(int(release["round"]) == int(round_) for release in self.state["releases"])

    def statement(self, key_sha256: str | None, guarantee: dict[str, Any]) -> dict[str, Any]:
        """What the site states to the coordinator: its whole released history in this run."""
        return {
            "site": self.state["site"],
            "run": self.state["run"],
            "key_sha256": key_sha256,
            "accountant": str(guarantee["accountant"]),
            "delta": float(guarantee["delta"]),
            "epsilon": guarantee.get("epsilon"),
            "max_grad_norm": float(guarantee["max_grad_norm"]),
            "dataset_size": int(guarantee["dataset_size"]),
            "target_epsilon": guarantee.get("target_epsilon"),
            "opacus_version": guarantee.get("opacus_version"),
            "data_fingerprint": guarantee.get("data_fingerprint"),
            "releases": [{key: release[key] for key in ("round", "noise_multiplier", "sample_rate", "steps")}
                         for release in self.state["releases"]],
            "not_released": [{key: entry[key] for key in ("round", "reason")} for entry in self.state["not_released"]],
            "stated_at": _now(),
        }
