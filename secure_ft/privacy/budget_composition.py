"""A data set's cumulative ε: every recorded run composed by one accountant.

Each DP-SGD step is a Poisson-subsampled Gaussian mechanism given by (σ, q). Runs on the same
data compose like the steps inside one run (sequential composition: each release may depend
on the data afresh), so the data set's privacy loss is that of the concatenated history of
every run's (σ, q, steps) segments — heterogeneous σ and q included.

Which accountant composes, and how tight it is
----------------------------------------------
Opacus' **PRV** accountant (Gopi et al. 2021) composes a heterogeneous history exactly as it
composes one run: each distinct (σ, q) becomes a privacy random variable, self-composed by
its steps, and all are convolved numerically (FFT). It states an upper bound on ε within
``eps_error`` = 0.01 of the optimal ε for that history — the tightest of Opacus' rigorous
accountants, and far below adding the runs' ε (which is what basic composition gives). The
ledger also states Opacus' **RDP** bound for the same history (summing Rényi curves, then
converting), a looser rigorous bound, as a cross-check. The accountant a run used for its
own ε does not matter here: the segments are mechanism parameters, not ε values.

Kinds of run
------------
Central training runs (``train``), deployed sites' lifetime odometers (``site``), simulated
federations (``federated simulation``: one entry holding every site's history, composed
*sequentially* — each record sits in one site, but parallel composition would need every
later run to map the same records to the same sites, which the ledger cannot verify; see
`federated.simulation_budget`) and the privacy audit's throw-away canary runs
(``canary audit``, `audits._canary`). A federation's server-side (client-level) DP is kept
with its entry, its unit (a site) named, and not added to the record-level composition.

δ is the smallest of the δ every recorded run used and the policy's ``privacy.max_delta``
(a smaller δ gives the larger, safer ε; for a single run it is that run's own δ, so the
ledger then states exactly the run's ε). A non-private run, or a history so noisy-
less that the accountant gives no finite bound, makes the cumulative ε unbounded (∞).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from secure_ft.privacy.accountants import epsilon_from_history, normalise_history
from secure_ft.privacy.budget_ledger import counted_history, status_of

COMPOSING_ACCOUNTANT = "prv"
CROSS_CHECK_ACCOUNTANT = "rdp"
COMPOSITION_NOTE = ("composed by Opacus' PRV accountant over every recorded (σ, q, steps) segment: an upper bound "
                    "within eps_error 0.01 of the optimal ε for the whole history (RDP's looser bound is shown beside)")


def _epsilon(accountant: str, history: list[list[float]], delta: float) -> float:
    return epsilon_from_history(accountant, _by_setting(normalise_history(history)), float(delta))


def _by_setting(history: tuple) -> tuple:
    """Steps at the same (σ, q) added up, first appearance first.

    Composition does not depend on the order of the mechanisms (PRV convolves their privacy
    loss distributions; RDP adds their curves), so this is the same history — and PRV's cost
    grows with the number of distinct segments (a federation's sites and rounds repeat one
    setting many times).
    """
    totals: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        totals[(sigma, rate)] = totals.get((sigma, rate), 0) + steps
    return tuple((sigma, rate, steps) for (sigma, rate), steps in totals.items())


def composed_epsilon(histories: list[list[list[float]]], delta: float, accountant: str = COMPOSING_ACCOUNTANT) -> float:
    """ε of the concatenation of `histories` at `delta` (∞ when any of them is None: a non-private run)."""
    if any(history is None for history in histories):
        return math.inf
    return _epsilon(accountant, [entry for history in histories for entry in history], delta)


def budget_delta(entries: list[dict[str, Any]], policy_delta: float | None, planned_delta: float | None = None) -> float | None:
    """The δ cumulative ε is stated at (see the module docstring); None when nothing gives one."""
    deltas = [float(entry["delta"]) for entry in entries if entry.get("delta") is not None]
    deltas += [float(value) for value in (planned_delta, policy_delta) if value is not None]
    return min(deltas) if deltas else None


def _counted(entry: dict[str, Any]) -> list[list[float]] | None:
    return None if entry["mechanism"] == "none" else counted_history(entry)


@dataclass
class BudgetStatement:
    """A data set's ledger composed: each run's ε and the cumulative ε after it, at one δ."""

    fingerprint: str
    delta: float | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    cumulative_epsilon: float = 0.0
    rdp_epsilon: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        finite = lambda value: value if value is None or math.isfinite(value) else None  # noqa: E731 (JSON: null = ∞)
        unbounded = lambda value: value is not None and math.isinf(value)  # noqa: E731
        return {
            "fingerprint": self.fingerprint, "delta": self.delta, "accountant": COMPOSING_ACCOUNTANT,
            "note": COMPOSITION_NOTE, "cumulative_epsilon": finite(self.cumulative_epsilon),
            "cumulative_unbounded": math.isinf(self.cumulative_epsilon),
            "rdp_cumulative_epsilon": finite(self.rdp_epsilon), "runs": len(self.rows),
            "entries": [{**row, "epsilon": finite(row["epsilon"]), "epsilon_unbounded": unbounded(row["epsilon"]),
                         "cumulative_epsilon": finite(row["cumulative_epsilon"]),
                         "cumulative_unbounded": unbounded(row["cumulative_epsilon"])} for row in self.rows],
        }


def compose_ledger(fingerprint: str, entries: list[dict[str, Any]], delta: float | None, *,
                   running: bool = True) -> BudgetStatement:
    """Each entry's own ε and the cumulative ε after it, oldest first, at `delta`.

    ``running=False`` composes only the whole ledger (one accountant call instead of one per
    entry); the earlier rows' cumulative ε is then None.
    """
    statement = BudgetStatement(fingerprint, delta)
    histories: list[list[list[float]] | None] = []
    for entry in entries:
        counted = _counted(entry)
        histories.append(counted)
        if delta is None:  # only non-private runs so far: nothing gives a δ, and nothing is bounded
            own = cumulative = math.inf
        else:
            own = composed_epsilon([counted], delta)
            last = len(histories) == len(entries)
            cumulative = composed_epsilon(histories, delta) if running or last else None
        statement.rows.append({
            "entry": entry["entry"], "run": entry["run"], "run_dir": entry.get("run_dir"), "kind": entry.get("kind"),
            "kind_note": kind_note(entry), "composition": entry.get("composition"), "central": entry.get("central"),
            "site": entry.get("site"), "date": entry["started_at"], "status": status_of(entry),
            "mechanism": mechanism_text(entry), "steps": None if counted is None else sum(int(e[2]) for e in counted),
            "epsilon": own, "cumulative_epsilon": cumulative,
        })
    if entries:
        statement.cumulative_epsilon = statement.rows[-1]["cumulative_epsilon"]
        statement.rdp_epsilon = (math.inf if delta is None else
                                 composed_epsilon(histories, delta, CROSS_CHECK_ACCOUNTANT))
    return statement


def _segments(history: list[list[float]]) -> str:
    return "; ".join(f"σ={float(s):.4g} q={float(q):.4g} ×{int(k)}" for s, q, k in history)


def _merged(history: list[list[float]]) -> list[list[float]]:
    """Steps at the same (σ, q) added up, first appearance first (a site's rounds, for display)."""
    totals: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        totals[(float(sigma), float(rate))] = totals.get((float(sigma), float(rate)), 0) + int(steps)
    return [[sigma, rate, steps] for (sigma, rate), steps in totals.items()]


def kind_note(entry: dict[str, Any]) -> str:
    """What kind of run an entry records, and for a simulated federation how its sites compose."""
    kind = entry.get("kind") or "run"
    sites = entry.get("sites")
    if sites and entry["mechanism"] != "none":
        return f"{kind}, {len(sites)} sites, composed sequentially: conservative"
    if sites:
        return f"{kind}, {len(sites)} sites"
    return kind


def mechanism_text(entry: dict[str, Any]) -> str:
    if entry["mechanism"] == "none":
        text = ("none at the sites (not private at the record level: ε = ∞)" if entry.get("sites")
                else "none (not private: ε = ∞)")
    elif entry.get("sites"):  # a simulated federation: every site's history, composed one after another
        parts = [f"{name} {_segments(_merged(site['history'] + site.get('counted_at_plan', []))) or 'no step'}"
                 for name, site in entry["sites"].items()]
        if entry.get("reserved"):
            parts.append(f"reserved ahead {_segments(entry['reserved'])}")
        text = "DP-SGD at every site: " + "; ".join(parts)
    else:
        text = "DP-SGD " + (_segments(counted_history(entry)) or "(no step taken)")
    central = entry.get("central")
    if central:
        (z, _, releases), = central["history"]
        text += (f"; server-side Gaussian z={float(z):.4g} ×{int(releases)} (unit: a site, client-level ε = "
                 f"{float(central['epsilon']):.4g} at δ = {float(central['delta']):.3g}; not counted at the record level)")
    return text


def format_epsilon(value: float | None) -> str:
    return "∞ (no finite bound)" if value is None or math.isinf(value) else f"{value:.4f}"
