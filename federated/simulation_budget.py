"""A simulated federation's spend, on the privacy budget ledger of the data file it partitions.

In a simulation (`federated.simulation`) every site trains on its partition of *one* data
file, so the run spends that file's budget: the coordinator keeps one entry in the data
set's ledger (`secure_ft.privacy.budget_ledger`), under the same fingerprint a central run of
the file uses, so ``secure-ft privacy budget --data FILE`` lists both kinds of run.

How the sites compose
---------------------
Each record sits in exactly one site, so parallel composition (McSherry 2009) would bound the
run by its worst site alone — but only if every later run maps the same records to the same
sites, which the ledger cannot verify (a run with another seed, ``num_sites`` or partition
scheme puts a record with other records, and two runs' worst sites need not be the same
site). The entry therefore holds every site's (σ, q, steps) history, and the data set's
composition treats them *sequentially*: an upper bound, conservative by up to the factor
parallel composition would save. The entry says so (``composition``), and so does
``secure-ft privacy budget``.

What is counted, and when it is written
---------------------------------------
* before round 1 (after every round: before the next) the entry reserves one round's local
  steps at every site (at the site's σ and q, `federated.site_policy.site_round_steps`), so
  a coordinator killed without warning is counted up to that reservation (written ahead, as
  a central run does); a SecAgg+ run, which has no hook between rounds, reserves every round
  up front;
* after every round, and when the run ends — finished, stopped or crashed — the entry holds
  each site's exact history, read from the site's own odometer (`federated.site_odometer`,
  ``sites/<site>/odometer.json``, written by the site before its update leaves): every
  release, plus the steps a failed round took before it raised (the site notes them), plus,
  for a round whose site process ended without a word (interrupted, or still marked in
  progress), that round's planned local steps — the site could not say how many it took,
  and the plan is never fewer;
* server-side (central, client-level) DP (`federated.central_dp`) is recorded with its unit
  named (``central``: a *site*, not a record) and its accountant history [(z, 1, releases)].
  It is not added to the record-level composition: with per-site DP the released models are
  post-processing of the sites' DP updates, so the sites' histories already bound them; a
  federation with central DP only has no record-level bound the accountant computes, and is
  recorded as not private (ε = ∞ at the record level).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from federated.site_odometer import ODOMETER_FILE
from federated.site_policy import site_round_steps
from secure_ft.errors import PrivacyError
from secure_ft.privacy.budget_ledger import BudgetLedger, RunSpend, budget_dir_for, steps_beyond
from secure_ft.records.config import RunConfig
from secure_ft.records.run_directory import RunDirectory

log = logging.getLogger(__name__)

KIND = "federated simulation"
SEQUENTIAL = ("sequential: every site's history is composed as if each site had used every record "
              "(each record sits in one site, but the ledger cannot verify that later runs partition the same "
              "way, so parallel composition is not claimed): conservative")
CENTRAL_NOT_COUNTED = ("client-level DP protects a whole site, not a record; it is not added to the record-level "
                       "composition (with per-site DP the sites' histories already bound the released models; "
                       "without it the run is recorded as not private at the record level)")


def _triples(history) -> list[list[float]]:
    return [[float(s), float(q), int(k)] for s, q, k in history]


class SimulatedFederationSpend:
    """The coordinator's entry for one simulated federation (see the module docstring).

    Parameters
    ----------
    config
        The run config (resolved, as the sites receive it).
    fingerprint
        The data fingerprint of the file the sites are partitioned from.
    sites
        ``(name, training rows)`` of every simulated site.
    run_dir
        The run directory (the sites' odometers are under ``sites/<name>/``).
    """

    def __init__(self, config: RunConfig, fingerprint: str, sites: list[tuple[str, int]], run_dir: Path, *,
                 resume: bool = False):
        from federated.site_engine import site_noise_multiplier
        from secure_ft.privacy.engine import resolve_delta

        self.config, self.run_dir = config, Path(run_dir)
        self.private = config.privacy.mode == "dp"
        self.central_noise = (float(config.federated.central_noise_multiplier)
                              if config.federated.central_dp != "none" else None)
        self.plans: dict[str, dict[str, Any]] = {}
        sigmas: dict[int, float] = {}  # σ depends on the rows only: calibrate once per size (it takes seconds)
        for name, rows in sites:
            plan: dict[str, Any] = {"rows": int(rows)}
            if self.private:
                rate, per_round = site_round_steps(config, rows)
                if rows not in sigmas:
                    sigmas[rows] = float(site_noise_multiplier(config, rows))
                plan.update(sigma=sigmas[rows], rate=float(rate), per_round=int(per_round),
                            delta=float(resolve_delta(config.privacy, rows)[0]))
            self.plans[name] = plan
        # a resumed run counts only what its sites take from now on (the earlier attempt's entry has the rest)
        self.baseline: dict[str, list[list[float]]] = {}
        if resume:
            self.baseline = {name: self._site_state(name)[0] for name in self.plans}
        deltas = [plan["delta"] for plan in self.plans.values() if "delta" in plan]
        self.spend = RunSpend.open(
            BudgetLedger(budget_dir_for(config)), fingerprint=fingerprint, run=self.run_dir.name,
            run_dir=self.run_dir, kind=KIND, mechanism="dp-sgd" if self.private else "none",
            accountant=config.privacy.accountant if self.private else None,
            delta=min(deltas) if deltas else None, dataset_size=sum(plan["rows"] for plan in self.plans.values()),
            details={"composition": SEQUENTIAL if self.private else None, "sites": self._sites_record({}),
                     "central": None})
        if not self.private:
            log.warning("privacy budget: the simulated federation %s trains without per-site differential privacy; "
                        "the data set %s… is recorded as spent without bound at the record level (ε = ∞) in %s",
                        self.run_dir.name, fingerprint[:12], self.spend.path)

    @property
    def path(self) -> Path:
        return self.spend.path

    # -- what the sites' odometers say --------------------------------------------------------------

    def _site_state(self, name: str) -> tuple[list[list[float]], list[list[float]], list[str]]:
        """(exact steps: releases and a failed round's steps, rounds counted at their plan, notes) of a site."""
        path = RunDirectory(self.run_dir).site(name).path / ODOMETER_FILE
        if not path.is_file():
            return [], [], []
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise PrivacyError(f"{path}: the site's odometer is unreadable ({error})") from None
        exact = [[r["noise_multiplier"], r["sample_rate"], r["steps"]] for r in state.get("releases", [])]
        planned, notes = [], []
        plan = self.plans[name]
        sigma = float(state["sigma"]) if state.get("sigma") is not None else plan["sigma"]
        unexplained = [entry["round"] for entry in state.get("not_released", []) if entry.get("reason") == "interrupted"]
        if state.get("in_progress") is not None:
            unexplained.append(int(state["in_progress"]))
        for entry in state.get("not_released", []):
            if entry.get("reason") == "failed":
                exact += entry.get("steps_taken") or []
        for round_ in unexplained:
            planned.append([sigma, plan["rate"], plan["per_round"]])
            notes.append(f"round {round_}: the site ended without saying how many steps it took; counted at the "
                         f"round's planned {plan['per_round']} steps")
        exact = steps_beyond(_triples(exact), self.baseline.get(name, []))
        return exact, _triples(planned), notes

    def _sites_record(self, states: dict[str, tuple]) -> dict[str, dict[str, Any]]:
        record = {}
        for name, plan in self.plans.items():
            exact, planned, notes = states.get(name, ([], [], []))
            record[name] = {"rows": plan["rows"], "delta": plan.get("delta"), "history": exact,
                            "counted_at_plan": planned, "notes": notes}
        return record

    def _read_sites(self) -> tuple[list[list[float]], dict[str, tuple]]:
        states = {name: self._site_state(name) for name in self.plans}
        counted = [segment for name in self.plans for segment in states[name][0] + states[name][1]]
        return counted, states

    def _central(self, releases: int | None) -> dict[str, Any] | None:
        if self.central_noise is None or releases is None:
            return None
        from secure_ft.privacy.accountants import epsilon_from_history, normalise_history

        federated = self.config.federated
        history = [[self.central_noise, 1.0, int(releases)]]
        epsilon = (epsilon_from_history("rdp", normalise_history(history), float(federated.central_delta))
                   if releases else 0.0)
        return {"unit": "site (client-level DP: protects each site's whole contribution, not a record)",
                "mechanism": f"Gaussian, server-side {federated.central_dp} clipping (Flower)",
                "accountant": "rdp", "delta": float(federated.central_delta), "history": history,
                "epsilon": epsilon, "counted": False, "why_not_counted": CENTRAL_NOT_COUNTED}

    # -- the entry's life ---------------------------------------------------------------------------

    def reserve(self, rounds: int = 1, central_releases: int | None = None) -> None:
        """Record the sites' steps so far and, before they run, `rounds` more rounds at every site."""
        if not self.private:
            return
        counted, states = self._read_sites()
        ahead = [[plan["sigma"], plan["rate"], plan["per_round"] * rounds]
                 for plan in self.plans.values() if rounds > 0]
        self.spend.entry["sites"] = self._sites_record(states)
        self.spend.entry["central"] = self._central(central_releases)
        self.spend.reserve(counted, ahead)

    def close(self, status: str, reason: str | None = None, central_releases: int | None = None) -> None:
        """The sites' exact histories (as their odometers hold them) and how the run ended."""
        self.spend.entry["central"] = self._central(central_releases)
        if not self.private:
            self.spend.close(None, status, reason)
            return
        try:
            counted, states = self._read_sites()
        except PrivacyError as error:  # keep the entry's last record and its reservation: never fewer steps
            log.error("privacy budget: %s; the entry %s keeps its last record and reservation", error, self.path)
            self.spend.close(self.spend.entry["history"] + self.spend.entry["reserved"], status,
                             f"{reason or status}; {error}"[:500])
            return
        self.spend.entry["sites"] = self._sites_record(states)
        self.spend.close(counted, status, reason)
