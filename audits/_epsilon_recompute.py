"""ε recomputed at the gate: never take the number a run wrote on trust.

Training records the accountant's inputs — its history of (σ, q, steps), δ and the
accountant's name — in the hash-chained run ledger as it finishes (event
``privacy_accounted``); a federated run keeps every site's inputs (sent with each update,
`federated.site_privacy`) and the central aggregate's inside ``privacy.json`` itself, under
``sites.NAME`` and ``central`` (older simulations: ``sites/NAME/privacy.json``). The privacy audit recomputes every ε from those inputs with a
fresh accountant (`secure_ft.privacy.accountants`) and fails, showing both numbers, when
``privacy.json`` disagrees: beyond the accountant's stated error (PRV's ``eps_error``) or a
relative 1e-6 otherwise, or when any recorded input differs.

A federated site's inputs must also be the ones the site itself stated
(`secure_ft.privacy.signed_history`): in a deployment its statement of everything it released
must carry a signature by the key the run records for it, privacy.json's history must be the
statement's, and every round the coordinator sent the site training must be accounted for —
otherwise ``site:NAME.signed_history`` fails, naming the gap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from audits._guarantee import PrivacyGuarantee
from audits.result import Check
from secure_ft.privacy.accountants import epsilon_from_history, get_accountant, normalise_history
from secure_ft.privacy.recompute import federation_keys, site_statement_findings
from secure_ft.privacy.signed_history import unaccounted_rounds
from secure_ft.records.run_directory import PRIVACY_FILE, RunDirectory
from secure_ft.records.run_ledger import Ledger

LEDGER_EVENT = "privacy_accounted"
RELATIVE_TOLERANCE = 1e-6
INPUTS = ("accountant", "delta", "history")


def tolerance(accountant: str, epsilon: float) -> float:
    """How far a recomputed ε may differ from a stated one."""
    return max(get_accountant(accountant).eps_error, RELATIVE_TOLERANCE * abs(epsilon))


def recorded_inputs(run_dir: Path) -> dict | None:
    """The accountant inputs the run ledger recorded last (None: the run recorded none)."""
    events = [entry for entry in Ledger(run_dir).events() if entry.get("event") == LEDGER_EVENT]
    return events[-1]["data"] if events else None


def recompute(inputs: dict) -> float:
    return epsilon_from_history(str(inputs["accountant"]), normalise_history(inputs["history"]), float(inputs["delta"]))


def _scope_check(name: str, stated: float, inputs: dict | None, where: str) -> Check:
    if inputs is None or any(key not in inputs for key in INPUTS):
        return Check(name, None, "<=", 0.0, False,
                     f"{where} recorded no accountant inputs (σ, q, steps, δ): ε cannot be recomputed, so it is not trusted")
    recomputed = recompute(inputs)
    if math.isinf(recomputed) or math.isinf(stated):
        return Check(name, 0.0 if recomputed == stated else math.inf, "<=", 0.0, recomputed == stated,
                     f"stated {stated}, recomputed {recomputed} from {where}")
    limit = tolerance(str(inputs["accountant"]), recomputed)
    return Check.evaluate(name, abs(stated - recomputed), "<=", limit,
                          f"stated ε {stated:.6g}, recomputed {recomputed:.6g} by a fresh {inputs['accountant']} "
                          f"accountant from {where}")


def recomputation_checks(run_dir: Path, guarantee: PrivacyGuarantee) -> list[Check]:
    """One check per scope: the stated ε equals the ε recomputed from the recorded inputs."""
    checks = []
    raw = RunDirectory(run_dir).read_privacy() or {}
    deployed, keys = federation_keys(run_dir) if raw.get("sites") else (False, {})
    for scope in guarantee.scopes:
        if scope.scope == "run" and not raw.get("sites") and raw.get("central") is None:
            inputs = recorded_inputs(run_dir)
            checks.append(_scope_check("epsilon_recomputed", scope.epsilon, inputs, "the run ledger"))
            if inputs is not None:
                stated = {key: raw.get(key) for key in ("accountant", "delta")}
                same = stated == {"accountant": inputs.get("accountant"), "delta": inputs.get("delta")}
                steps = sum(int(entry[2]) for entry in inputs.get("history", []))
                same = same and raw.get("steps") == steps
                checks.append(Check.evaluate("privacy_inputs_match_ledger", 1 if same else 0, "==", 1,
                                             f"{PRIVACY_FILE}: accountant {raw.get('accountant')}, δ {raw.get('delta')}, "
                                             f"steps {raw.get('steps')}; ledger: accountant {inputs.get('accountant')}, "
                                             f"δ {inputs.get('delta')}, steps {steps}"))
        elif scope.scope.startswith("site:"):
            site = scope.scope.split(":", 1)[1]
            inputs, where = _site_inputs(run_dir, site, (raw.get("sites") or {}).get(site) or {})
            checks.append(_scope_check(f"{scope.scope}.epsilon_recomputed", scope.epsilon, inputs, where))
            _, problems = site_statement_findings(site, (raw.get("sites") or {}).get(site) or {}, deployed=deployed,
                                                  registered_key=keys.get(site))
            checks.append(Check.evaluate(f"{scope.scope}.signed_history", len(problems), "==", 0,
                                         "; ".join(problems) or "the recorded history is the site's own statement of "
                                         "everything it released, and accounts for every round it was sent"))
        elif scope.scope == "central":
            central = raw.get("central") or {}
            inputs = central if all(key in central for key in INPUTS) else None
            checks.append(_scope_check("central.epsilon_recomputed", scope.epsilon, inputs,
                                       "the central aggregate's recorded (z, releases)"))
    for site, record in sorted((raw.get("sites_without_statement") or {}).items()):
        gap = unaccounted_rounds(None, record.get("rounds_sent") or [], record.get("rounds_failed_without_release") or [])
        checks.append(Check.evaluate(f"site:{site}.rounds_accounted", len(gap), "==", 0,
                                     f"sent training in rounds {record.get('rounds_sent')}, never stated a release"
                                     + (f"; rounds {gap} unaccounted: it may have released updates no ε counts"
                                        if gap else "; failed each before any release")))
    return checks


def _site_inputs(run_dir: Path, site: str, entry: dict) -> tuple[dict | None, str]:
    """A site's accountant inputs: inline in privacy.json (bound by the signed verdict), else its details file."""
    if all(key in entry for key in INPUTS):
        return entry, f"site {site}'s accountant inputs in {PRIVACY_FILE}"
    details = RunDirectory(run_dir).site(site).privacy_file
    if details.is_file():
        site_raw = json.loads(details.read_text(encoding="utf-8"))
        if all(key in site_raw for key in ("noise_multiplier", "sample_rate", "steps")):
            return ({"accountant": site_raw.get("accountant"), "delta": site_raw.get("delta"),
                     "history": [[site_raw["noise_multiplier"], site_raw["sample_rate"], site_raw["steps"]]]},
                    f"site {site}'s recorded σ, q and steps")
    return None, f"site {site}"
