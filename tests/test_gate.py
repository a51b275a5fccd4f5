"""Gate: audit results + policy -> Verdict (pure function)."""

from __future__ import annotations

from datetime import datetime, timezone

from audits.gate import Verdict, decide
from audits.result import AuditResult, Check
from secure_ft.records.policy import Policy

MODEL = "a" * 64
POLICY_HASH = "b" * 64
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def _passing(name):
    return AuditResult.from_checks(name, {"value": 1.0}, [Check.evaluate(f"{name}.value", 1.0, ">=", 0.5)])


def _policy(**kwargs):
    return Policy(name="test-policy", **kwargs)


def test_all_required_audits_pass():
    policy = _policy(required_audits=["performance", "fairness"])
    verdict = decide([_passing("performance"), _passing("fairness")], policy, MODEL, POLICY_HASH, NOW)
    assert verdict.passed and verdict.reasons == []
    assert verdict.audits == {"performance": True, "fairness": True}
    assert verdict.model_sha256 == MODEL and verdict.policy_sha256 == POLICY_HASH
    assert verdict.policy_name == "test-policy"
    assert verdict.timestamp == "2025-03-01T12:00:00+00:00"
    assert Verdict.from_dict(verdict.to_dict()) == verdict


def test_missing_required_audit_is_one_reason():
    policy = _policy(required_audits=["performance", "privacy"])
    verdict = decide([_passing("performance")], policy, MODEL, POLICY_HASH, NOW)
    assert not verdict.passed
    assert verdict.reasons == ["privacy: required by policy 'test-policy' but was not run"]
    assert verdict.audits["privacy"] is False


def test_each_failed_check_is_one_reason():
    checks = [
        Check.evaluate("epsilon", 9.5, "<=", 8.0),
        Check.evaluate("membership_auc", 0.51, "<=", 0.6),
        Check.evaluate("tpr_at_1pct_fpr", None, "<=", 0.1),
    ]
    privacy = AuditResult.from_checks("privacy", {}, checks)
    verdict = decide([privacy], _policy(required_audits=["privacy"]), MODEL, POLICY_HASH, NOW)
    assert not verdict.passed
    assert len(verdict.reasons) == 2
    assert verdict.reasons[0].startswith("privacy: epsilon = 9.5, required <= 8: FAILED")
    assert "tpr_at_1pct_fpr = not measured" in verdict.reasons[1]


def test_errored_audit_is_a_reason():
    policy = _policy(required_audits=["robustness"])
    verdict = decide([AuditResult.failed_to_run("robustness", "TextAttack missing")], policy, MODEL, POLICY_HASH, NOW)
    assert not verdict.passed
    assert verdict.reasons == ["robustness: could not run: TextAttack missing"]


def test_failed_audit_without_failed_checks_still_blocks():
    result = AuditResult(name="fairness", passed=False, notes=["group too small"])
    verdict = decide([result], _policy(required_audits=["fairness"]), MODEL, POLICY_HASH, NOW)
    assert verdict.reasons == ["fairness: reported as failed (group too small)"]


def test_audit_that_ignored_policy_thresholds_blocks():
    policy = _policy(required_audits=["privacy"])  # default PrivacyPolicy requires DP
    result = AuditResult(name="privacy", passed=True)
    verdict = decide([result], policy, MODEL, POLICY_HASH, NOW)
    assert not verdict.passed and "reported no checks" in verdict.reasons[0]


def test_unrequired_failure_is_a_warning_and_duplicates_block():
    policy = _policy(required_audits=["performance"])
    failing = AuditResult.from_checks("fairness", {}, [Check.evaluate("dp_diff", 0.5, "<=", 0.3)])
    verdict = decide([_passing("performance"), failing], policy, MODEL, POLICY_HASH, NOW)
    assert verdict.passed and verdict.audits["fairness"] is False
    assert verdict.warnings and "not required" in verdict.warnings[0]
    twice = decide([_passing("performance"), _passing("performance")], policy, MODEL, POLICY_HASH, NOW)
    assert not twice.passed and "more than once" in twice.reasons[0]


def test_shipped_policies_load_and_are_ordered_by_strictness():
    from importlib import resources

    from secure_ft.records.policy import load_policy

    folder = resources.files("secure_ft.records") / "policies"
    policies = {path.name: load_policy(str(path))[0] for path in folder.iterdir() if path.name.endswith(".yaml")}
    assert {"regulated-default.yaml", "strict.yaml", "research.yaml"} <= set(policies)
    strict, default, research = policies["strict.yaml"], policies["regulated-default.yaml"], policies["research.yaml"]
    assert strict.privacy.max_epsilon < default.privacy.max_epsilon
    assert strict.fairness.insufficient_data == "fail" and strict.fairness.inconclusive == "review"
    assert research.privacy.require_dp is False and default.privacy.require_dp is True
    for policy in policies.values():
        assert set(policy.required_audits) <= {"performance", "robustness", "fairness", "privacy"}
