"""The privacy ledger check: central and federated guarantees, non-private runs, bad ledgers."""

from __future__ import annotations

import json
import math

import pytest

from audits._guarantee import read_guarantee
from audits.privacy import guarantee_checks, guarantee_metrics
from secure_ft.errors import AuditError
from secure_ft.records.policy import PrivacyPolicy

CENTRAL = {
    "epsilon": 3.1, "delta": 1e-5, "accountant": "prv", "noise_multiplier": 0.9, "max_grad_norm": 1.0,
    "sample_rate": 0.01, "steps": 300, "epochs": 3, "dataset_size": 3200, "trained": "lora",
    "opacus_version": "1.6.0", "epsilon_history": [[100, 1.5], [200, 2.4], [300, 3.1]],
}
POLICY = PrivacyPolicy(require_dp=True, max_epsilon=8.0, max_delta=1e-4)


def write(tmp_path, ledger) -> None:
    (tmp_path / "privacy.json").write_text(json.dumps(ledger) if not isinstance(ledger, str) else ledger)


def by_name(checks):
    return {check.name: check for check in checks}


def test_central_guarantee_within_policy_passes(tmp_path):
    write(tmp_path, CENTRAL)
    guarantee = read_guarantee(tmp_path)
    checks, notes = guarantee_checks(guarantee, POLICY)
    assert all(check.passed for check in checks) and set(by_name(checks)) == {"dp_guarantee", "epsilon", "delta"}
    metrics = guarantee_metrics(guarantee)
    assert metrics["dp"] is True and metrics["epsilon"] == 3.1 and metrics["delta"] == 1e-5
    assert metrics["accountant"] == "prv" and metrics["epsilon_history"][-1] == [300, 3.1]
    json.dumps(metrics)


def test_epsilon_above_policy_fails_with_the_numbers(tmp_path):
    write(tmp_path, {**CENTRAL, "epsilon": 11.5})
    checks, _ = guarantee_checks(read_guarantee(tmp_path), POLICY)
    epsilon = by_name(checks)["epsilon"]
    assert not epsilon.passed and epsilon.actual == 11.5 and epsilon.threshold == 8.0


def test_missing_ledger_means_non_private_and_fails_a_dp_policy(tmp_path):
    assert read_guarantee(tmp_path) is None
    checks, _ = guarantee_checks(None, POLICY)
    assert len(checks) == 1 and not checks[0].passed
    assert "without differential privacy" in checks[0].describe()
    checks, notes = guarantee_checks(None, PrivacyPolicy(require_dp=False, max_epsilon=8.0))
    assert checks == [] and "does not require DP" in notes[0]
    assert guarantee_metrics(None)["dp"] is False


def test_federated_ledger_checks_every_site_and_the_central_aggregate(tmp_path):
    write(tmp_path, {"sites": {"hospital-a": {"epsilon": 2.0, "delta": 1e-5},
                               "hospital-b": {"epsilon": 9.5, "delta": 1e-5}},
                     "central": {"epsilon": 4.0, "delta": 1e-6}, "accountant": "rdp"})
    guarantee = read_guarantee(tmp_path)
    checks = by_name(guarantee_checks(guarantee, POLICY)[0])
    assert checks["central.epsilon"].passed and checks["site:hospital-a.epsilon"].passed
    assert not checks["site:hospital-b.epsilon"].passed  # one site over budget fails the audit
    metrics = guarantee_metrics(guarantee)
    assert metrics["epsilon"] == 4.0 and {s["scope"] for s in metrics["scopes"]} == {
        "central", "site:hospital-a", "site:hospital-b"}
    assert guarantee.delta == 1e-6


def test_unbounded_epsilon_fails_and_is_reported_as_null(tmp_path):
    write(tmp_path, {**CENTRAL, "epsilon": None})
    guarantee = read_guarantee(tmp_path)
    assert math.isinf(guarantee.scopes[0].epsilon)
    epsilon = by_name(guarantee_checks(guarantee, POLICY)[0])["epsilon"]
    assert not epsilon.passed and epsilon.actual is None and "unbounded" in epsilon.note
    metrics = guarantee_metrics(guarantee)
    assert metrics["epsilon"] is None and metrics["epsilon_unbounded"] is True
    json.dumps(metrics)


@pytest.mark.parametrize("ledger, message", [
    ("{not json", "not a valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"epsilon": "three", "delta": 1e-5}, "must be a number"),
    ({"epsilon": -1.0, "delta": 1e-5}, "non-negative"),
    ({"epsilon": 1.0}, "'epsilon' and 'delta'"),
    ({"accountant": "prv"}, "no 'epsilon'/'delta'"),
    ({"sites": {"a": {"epsilon": 1.0}}}, "site:a must be an object"),
])
def test_bad_ledgers_are_clear_errors_naming_the_file(tmp_path, ledger, message):
    write(tmp_path, ledger)
    with pytest.raises(AuditError, match=message) as error:
        read_guarantee(tmp_path)
    assert "privacy.json" in str(error.value)
