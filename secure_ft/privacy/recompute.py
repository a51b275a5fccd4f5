"""Check a run's stated privacy guarantee against its ledger, with fresh Opacus accountants.

`verify_privacy(run_dir)` trusts nothing the run computed: it recomputes ε twice, once from
the ledger's accountant history and once from the (q, σ, steps) that ``privacy.json``
declares, and checks that the two files, the data fingerprint and the budget agree. A
federated run has no run-level ledger: its ``privacy.json`` holds every site's accountant
inputs and the central aggregate's, and each scope's ε is recomputed from those
(`verify_federated_privacy`). A site's inputs come from its own statement of everything it
released (`secure_ft.privacy.signed_history`): its signature is checked against the key the
run records for the site (deployments), the recorded history must be the statement's, and
every round the coordinator sent the site training must be accounted for by the statement
(`site_statement_findings`) — a gap means ε may be under-stated. Used by ``secure-ft privacy RUN_DIR`` (exit 0 when
everything matches, 4 otherwise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_ft.errors import PrivacyError, RunDirectoryError
from secure_ft.privacy.accountant_history import AccountantHistory, load_accountant_history
from secure_ft.privacy.accountants import epsilon_from_history
from secure_ft.privacy.signed_history import open_statement, releases_history, unaccounted_rounds
from secure_ft.records.run_directory import ACCOUNTANT_HISTORY_FILE, DATA_FILE, PRIVACY_FILE, RunDirectory
RELATIVE_TOLERANCE = 1e-9  # the same inputs give the same ε; allow only float noise


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class PrivacyVerification:
    run_dir: Path
    reported_epsilon: float | None
    recomputed_epsilon: float | None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(passed), detail))

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "passed": self.passed, "reported_epsilon": self.reported_epsilon,
                "recomputed_epsilon": self.recomputed_epsilon,
                "checks": [check.__dict__ for check in self.checks]}


def _same(a: float, b: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)


def _read_report(run_dir: Path) -> dict[str, Any]:
    report = RunDirectory(run_dir).read_privacy()  # a damaged file is a RunDirectoryError naming it
    if report is None:
        raise PrivacyError(f"{run_dir / PRIVACY_FILE}: not found; {run_dir} is not a differentially private run "
                           "(train with privacy.mode: dp) or is not a run directory")
    return report


def verify_privacy(run_dir: str | Path) -> PrivacyVerification:
    """Recompute ε from the ledger and compare it, and the ledger, with privacy.json."""
    from opacus import __version__ as opacus_version

    run_dir = Path(run_dir)
    report = _read_report(run_dir)
    if report.get("sites") or report.get("central") is not None:
        return verify_federated_privacy(run_dir, report)
    reported = report.get("epsilon")
    result = PrivacyVerification(run_dir, reported if isinstance(reported, (int, float)) else None, None)
    try:
        ledger = load_accountant_history(run_dir)
    except PrivacyError as error:
        result.add("ledger readable", False, str(error))
        return result
    result.add("ledger readable", True, f"{ACCOUNTANT_HISTORY_FILE}: {ledger.steps} steps, accountant {ledger.accountant}")

    recomputed = epsilon_from_history(ledger.accountant, ledger.history_tuple(), ledger.delta)
    result.recomputed_epsilon = recomputed
    if result.reported_epsilon is None:
        unbounded = reported is None and math.isinf(recomputed)
        result.add("ε matches ledger", unbounded,
                   "no finite bound, in privacy.json and recomputed" if unbounded else
                   f"privacy.json has no numeric epsilon ({reported!r}) but the ledger gives {recomputed!r}")
    else:
        result.add("ε matches ledger", _same(result.reported_epsilon, recomputed),
                   f"reported {result.reported_epsilon!r}, recomputed from the ledger {recomputed!r}")

    _compare_fields(result, report, ledger)
    _check_declared_parameters(result, report)
    _check_history(result, report, ledger)
    _check_fingerprint(result, run_dir, ledger)
    target = ledger.target_epsilon
    if target is not None:
        result.add("within target ε", recomputed <= target, f"ε {recomputed:.6g} vs target_epsilon {target:g}")
    if math.isinf(recomputed):
        result.add("finite guarantee", False, "the noise is too small for any finite ε: this run states no DP guarantee")
    recorded_version = report.get("opacus_version") or ledger.opacus_version
    if recorded_version and recorded_version != opacus_version:
        result.add("same Opacus version", False,
                   f"recorded with Opacus {recorded_version}, recomputed with {opacus_version}; accountant "
                   "numerics may differ between versions: recompute with the recorded version")
    return result


def _compare_fields(result: PrivacyVerification, report: dict[str, Any], ledger: AccountantHistory) -> None:
    for name in ("delta", "accountant", "noise_multiplier", "max_grad_norm", "sample_rate", "steps", "dataset_size"):
        stated, kept = report.get(name), getattr(ledger, name)
        if isinstance(kept, float) and isinstance(stated, (int, float)):
            same = _same(float(stated), kept)
        else:
            same = stated == kept
        result.add(f"{name} matches ledger", same, f"privacy.json {stated!r}, ledger {kept!r}")


def _check_declared_parameters(result: PrivacyVerification, report: dict[str, Any]) -> None:
    """An independent recomputation from the three declared numbers alone."""
    try:
        sigma, rate, steps = float(report["noise_multiplier"]), float(report["sample_rate"]), int(report["steps"])
        epsilon = epsilon_from_history(str(report["accountant"]), ((sigma, rate, steps),), float(report["delta"]))
    except (KeyError, TypeError, ValueError, PrivacyError) as error:
        result.add("ε from declared (q, σ, steps)", False, f"cannot recompute from privacy.json: {error}")
        return
    stated = math.inf if result.reported_epsilon is None and report.get("epsilon") is None else result.reported_epsilon
    result.add("ε from declared (q, σ, steps)", stated is not None and _same(stated, epsilon),
               f"fresh {report.get('accountant')} accountant with q={rate!r}, σ={sigma!r}, steps={steps}: {epsilon!r}")


def _check_history(result: PrivacyVerification, report: dict[str, Any], ledger: AccountantHistory) -> None:
    history = report.get("epsilon_history") or []
    if not history:
        result.add("ε history", False, "privacy.json has no epsilon_history")
        return
    last_step, last_epsilon = history[-1]
    as_number = lambda value: math.inf if value is None else float(value)  # noqa: E731 - null = unbounded
    stated = math.inf if result.reported_epsilon is None else result.reported_epsilon
    ok = int(last_step) == ledger.steps and _same(as_number(last_epsilon), stated)
    steps = [int(step) for step, _ in history]
    values = [as_number(value) for _, value in history]
    monotone = steps == sorted(steps) and values == sorted(values)
    result.add("ε history", ok and monotone,
               f"{len(history)} entries, last [{last_step}, {as_number(last_epsilon):.6g}]"
               + ("" if monotone else "; not increasing"))


def _check_fingerprint(result: PrivacyVerification, run_dir: Path, ledger: AccountantHistory) -> None:
    try:
        summary = RunDirectory(run_dir).read_data_summary()
    except RunDirectoryError:
        result.add("data fingerprint", False, f"{run_dir / DATA_FILE}: unreadable")
        return
    if summary is None:
        return
    fingerprint = summary.get("fingerprint")
    result.add("data fingerprint", fingerprint == ledger.fingerprint,
               f"ledger {ledger.fingerprint[:16]}…, data.json {str(fingerprint)[:16]}…")


def verify_federated_privacy(run_dir: Path, report: dict[str, Any]) -> PrivacyVerification:
    """Recompute every site's and the central aggregate's ε from the inputs in privacy.json."""
    reported = report.get("epsilon")
    result = PrivacyVerification(run_dir, reported if isinstance(reported, (int, float)) else None, None)
    deployed, keys = federation_keys(run_dir)
    scopes = [(f"site {name}", entry) for name, entry in sorted((report.get("sites") or {}).items())]
    if report.get("central") is not None:
        scopes.append(("central", report["central"]))
    recomputed_all = []
    for scope, entry in scopes:
        if scope.startswith("site "):
            name = scope[len("site "):]
            history, problems = site_statement_findings(name, entry, deployed=deployed, registered_key=keys.get(name))
            result.add(f"{scope}: signed history", not problems,
                       "; ".join(problems) if problems else
                       f"{len(history or [])} release(s) stated by the site"
                       + (", signature verified against its registered key" if deployed else "")
                       + f"; every round sent ({_rounds(entry.get('rounds_sent'))}) accounted for")
        recomputed = _recompute_scope(result, scope, entry)
        if recomputed is not None:
            recomputed_all.append(recomputed)
    for name, record in sorted((report.get("sites_without_statement") or {}).items()):
        gap = unaccounted_rounds(None, record.get("rounds_sent") or [], record.get("rounds_failed_without_release") or [])
        result.add(f"site {name}: rounds accounted for", not gap,
                   f"sent training in rounds {_rounds(record.get('rounds_sent'))}, never stated a release"
                   + (f"; rounds {gap} are unaccounted: the site may have released updates not counted in any ε"
                      if gap else "; it failed every one of them before any release"))
    if recomputed_all and len(recomputed_all) == len(scopes):
        weakest = max(recomputed_all)
        result.recomputed_epsilon = weakest
        stated = math.inf if reported is None else float(reported)
        result.add("top-level ε is the weakest scope", _same(stated, weakest),
                   f"privacy.json states {stated!r}, the largest recomputed ε over {len(scopes)} scope(s) is {weakest!r}")
    return result


def _rounds(rounds: Any) -> str:
    return ", ".join(str(r) for r in rounds) if rounds else "none"


def federation_keys(run_dir: Path) -> tuple[bool, dict[str, str]]:
    """(deployed?, site name → the key fingerprint federated.json records for it)."""
    try:
        federation = RunDirectory(run_dir).read_federation() or {}
    except RunDirectoryError:
        federation = {}
    keys = {str(site.get("name")): str(site["key_sha256"]) for site in federation.get("sites") or []
            if isinstance(site, dict) and site.get("key_sha256")}
    return federation.get("mode") == "deployment", keys


def site_statement_findings(name: str, entry: dict[str, Any], *, deployed: bool,
                            registered_key: str | None) -> tuple[list[list[float]] | None, list[str]]:
    """The history a site's statement gives, and every way privacy.json departs from it.

    Checks: a statement is there (required in deployments, where it must be signed by the
    key the run records for the site); privacy.json's history is the statement's; every round
    the coordinator sent the site training is either released or stated not released in the
    statement, or failed with the site saying it released nothing.
    """
    sealed = entry.get("statement")
    if sealed is None:
        return None, (["no signed statement of the site's released history: its ε rests on the coordinator's word"]
                      if deployed else [])
    problems = []
    if deployed and registered_key is None:
        problems.append("federated.json records no key for this site")
    if deployed and entry.get("key_sha256") != registered_key:
        problems.append(f"privacy.json names key {str(entry.get('key_sha256'))[:16]}…, federated.json "
                        f"{str(registered_key)[:16]}…")
    try:
        payload = open_statement(sealed, require_signature=deployed, expected_key_sha256=registered_key,
                                 expected_site=name)
    except PrivacyError as error:
        return None, problems + [str(error)]
    history = releases_history(payload)
    recorded = [[float(sigma), float(rate), int(steps)] for sigma, rate, steps in entry.get("history") or []]
    if recorded != [[float(sigma), float(rate), int(steps)] for sigma, rate, steps in history]:
        problems.append(f"privacy.json's history ({sum(r[2] for r in recorded)} steps) is not the signed statement's "
                        f"({sum(int(h[2]) for h in history)} steps)")
    if str(entry.get("accountant")) != str(payload.get("accountant")) or not _same(
            float(entry.get("delta", math.nan)), float(payload.get("delta", math.nan))):
        problems.append("privacy.json's accountant or δ is not the signed statement's")
    gap = unaccounted_rounds(payload, entry.get("rounds_sent") or [], entry.get("rounds_failed_without_release") or [])
    if gap:
        problems.append(f"the coordinator sent this site training in rounds {gap} that its signed history neither "
                        "reports released nor not released: ε may be under-stated")
    return history, problems


def _recompute_scope(result: PrivacyVerification, scope: str, entry: Any) -> float | None:
    try:
        history = tuple((float(sigma), float(rate), int(steps)) for sigma, rate, steps in entry["history"])
        recomputed = epsilon_from_history(str(entry["accountant"]), history, float(entry["delta"]))
    except (KeyError, TypeError, ValueError, PrivacyError) as error:
        result.add(f"{scope}: ε recomputed", False, f"no usable accountant inputs (σ, q, steps, δ, accountant): "
                   f"{error!r}; ε cannot be recomputed, so it is not trusted")
        return None
    stated = math.inf if entry.get("epsilon") is None else float(entry["epsilon"])
    result.add(f"{scope}: ε recomputed", _same(stated, recomputed),
               f"stated {stated!r}, recomputed {recomputed!r} by a fresh {entry['accountant']} accountant from "
               f"{sum(steps for _, _, steps in history)} steps")
    if "steps" in entry:
        steps = sum(step for _, _, step in history)
        result.add(f"{scope}: steps match history", int(entry["steps"]) == steps,
                   f"steps {entry['steps']!r}, history {steps}")
    target = entry.get("target_epsilon")
    if isinstance(target, (int, float)):
        result.add(f"{scope}: within target ε", recomputed <= target, f"ε {recomputed:.6g} vs target_epsilon {target:g}")
    return recomputed
