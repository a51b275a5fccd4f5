"""The verdict's three outcomes through sign → export → ledger verify, and the order-free re-derivation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from audits.gate import Verdict, decide, same_decision
from audits.result import AuditResult, Check
from fake_run import audit_results, make_run
from secure_ft.cli import main as cli_main
from secure_ft.errors import ExportRefused
from secure_ft.records.policy import default_policy_path, load_policy
from secure_ft.release.export import export_bundle


def _replace(results: list[AuditResult], name: str, checks: list[Check]) -> list[AuditResult]:
    return [AuditResult.from_checks(name, r.metrics, checks, evidence=r.evidence, notes=r.notes) if r.name == name else r
            for r in results]


def _inconclusive_fairness() -> list[AuditResult]:
    check = Check.from_interval("older_american.equalized_odds_difference", 0.59, 0.37, 0.87, "<=", 0.5,
                                p_value=0.49, alpha=0.05, review="read older_american's per-group rates")
    assert check.outcome == "inconclusive"
    return _replace(audit_results(passing=True), "fairness", [check])


def test_reordered_reasons_are_the_same_decision():
    policy, digest = load_policy(default_policy_path())
    results = _replace(_replace(audit_results(passing=True), "robustness",
                                [Check.evaluate("pwws.accuracy_under_attack", 0.05, ">=", 0.10)]),
                       "fairness", [Check.evaluate("older_american.demographic_parity_difference", 0.4, "<=", 0.3)])
    forward = decide(results, policy, "m" * 64, digest)
    backward = decide(list(reversed(results)), policy, "m" * 64, digest, now=None)
    assert forward.reasons == backward.reasons and len(forward.reasons) == 2  # policy order, whatever the input order
    signed = dataclasses.replace(forward, reasons=list(reversed(forward.reasons)))
    assert same_decision(signed, forward)
    assert not same_decision(dataclasses.replace(forward, reasons=forward.reasons[:1]), forward)
    assert not same_decision(dataclasses.replace(forward, outcome="needs_review", passed=False), forward)


def test_run_blocked_on_two_audits_exports_refused_and_its_ledger_verifies(tmp_path, capsys):
    results = _replace(_replace(audit_results(passing=True), "robustness",
                                [Check.evaluate("pwws.accuracy_under_attack", 0.05, ">=", 0.10)]),
                       "fairness", [Check.evaluate("older_american.demographic_parity_difference", 0.4, "<=", 0.3)])
    # in the policy's order, as the pipeline runs them; the signed predicate lists them by name
    # (fairness before robustness), which once made the re-derived reasons differ in order only
    order = ["performance", "robustness", "fairness", "privacy"]
    results = sorted(results, key=lambda result: order.index(result.name))
    run = make_run(tmp_path, results=results)
    assert [r.split(":")[0] for r in run.verdict.reasons] == ["robustness", "fairness"]
    assert run.verdict.outcome == "blocked" and len(run.verdict.reasons) == 2
    signed = json.loads((run.run_dir / "verdict.json").read_text())
    assert signed["outcome"] == "blocked" and signed["passed"] is False
    assert cli_main(["export", str(run.run_dir), "--out", str(tmp_path / "bundle")]) == 3
    err = capsys.readouterr().err
    assert "pwws.accuracy_under_attack" in err and "demographic_parity_difference" in err
    assert cli_main(["ledger", "verify", str(run.run_dir)]) == 0
    out = capsys.readouterr().out
    assert "signed verdict: blocked under policy 'regulated-default'" in out


def test_needs_review_is_signed_and_export_treats_it_as_blocked(tmp_path, capsys):
    run = make_run(tmp_path, results=_inconclusive_fairness())
    verdict = run.verdict
    assert verdict.outcome == "needs_review" and not verdict.passed and verdict.reasons == []
    assert len(verdict.review) == 1 and "INCONCLUSIVE" in verdict.review[0]
    assert "review: read older_american's per-group rates" in verdict.review[0]
    assert Verdict.from_dict(json.loads((run.run_dir / "verdict.json").read_text())) == verdict
    with pytest.raises(ExportRefused, match="needs_review") as refused:
        export_bundle(run.run_dir, tmp_path / "bundle")
    assert "older_american.equalized_odds_difference" in str(refused.value)
    assert cli_main(["export", str(run.run_dir), "--out", str(tmp_path / "bundle2")]) == 3
    err = capsys.readouterr().err
    assert "until signed human approvals exist" in err and "p = 0.49" in err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle2").exists()
    assert cli_main(["ledger", "verify", str(run.run_dir)]) == 0
    assert "signed verdict: needs_review" in capsys.readouterr().out
    events = [e for e in (run.run_dir / "ledger.jsonl").read_text().splitlines() if '"verdict"' in e]
    assert json.loads(events[-1])["data"]["outcome"] == "needs_review"
    html = (run.run_dir / "audit_report.html").read_text()
    assert "NEEDS REVIEW" in html and "For a human reviewer" in html
    assert "release policy" in html and "until signed approvals exist" not in html  # the banner says what releases it today


def test_a_signed_outcome_the_results_do_not_give_is_tampering(tmp_path):
    """Rewriting the signed verdict from needs_review to passed needs a new signature; re-signing with the
    gate's key a verdict that disagrees with the signed results is caught by the re-derivation."""
    from secure_ft.errors import BundleError
    from secure_ft.pipeline.main_job import GateKey
    from secure_ft.records.run_directory import RunDirectory

    run = make_run(tmp_path, results=_inconclusive_fairness())
    forged = dataclasses.replace(run.verdict, outcome="passed", passed=True, review=[])
    RunDirectory(run.run_dir).write_verdict(forged.to_dict())
    GateKey.for_config(run.config).sign(RunDirectory(run.run_dir), forged, run.results)
    with pytest.raises(BundleError, match=r"signed verdict \(passed\) is not what the policy gives .*needs_review"):
        export_bundle(run.run_dir, tmp_path / "bundle")


def test_verdicts_from_before_outcomes_still_read():
    raw = {"passed": False, "reasons": ["privacy: x"], "model_sha256": "m", "policy_sha256": "p",
           "policy_name": "n", "timestamp": "2025-01-01T00:00:00+00:00"}
    assert Verdict.from_dict(raw).outcome == "blocked"
    assert Verdict.from_dict({**raw, "passed": True, "reasons": []}).outcome == "passed"
    with pytest.raises(ValueError, match="disagree"):
        Verdict.from_dict({**raw, "outcome": "passed"})
