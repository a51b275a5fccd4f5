"""The privacy audit recomputes ε from the inputs the run ledger recorded, and catches a lowered ε."""

from __future__ import annotations

import json

from audits._epsilon_recompute import recomputation_checks
from audits._guarantee import read_guarantee
from secure_ft.privacy.accountants import epsilon_from_history
from secure_ft.records.run_ledger import Ledger

HISTORY = [[0.9, 0.05, 60]]


def _run(tmp_path, stated_epsilon=None, steps=60, record=True):
    true_epsilon = epsilon_from_history("prv", tuple(tuple(h) for h in HISTORY), 1e-5)
    if record:
        Ledger(tmp_path).append("privacy_accounted", accountant="prv", delta=1e-5, history=HISTORY,
                                max_grad_norm=1.0, dataset_size=1000)
    (tmp_path / "privacy.json").write_text(json.dumps({
        "epsilon": true_epsilon if stated_epsilon is None else stated_epsilon, "delta": 1e-5, "accountant": "prv",
        "noise_multiplier": 0.9, "sample_rate": 0.05, "steps": steps}))
    return true_epsilon


def _checks(tmp_path):
    return {check.name: check for check in recomputation_checks(tmp_path, read_guarantee(tmp_path))}


def test_an_honest_privacy_json_passes(tmp_path):
    _run(tmp_path)
    checks = _checks(tmp_path)
    assert checks["epsilon_recomputed"].passed and checks["privacy_inputs_match_ledger"].passed


def test_a_lowered_epsilon_fails_showing_both_numbers(tmp_path):
    true_epsilon = _run(tmp_path, stated_epsilon=1.0)
    check = _checks(tmp_path)["epsilon_recomputed"]
    assert not check.passed
    assert "stated ε 1" in check.note and f"{true_epsilon:.6g}" in check.note


def test_inputs_that_disagree_with_the_ledger_fail(tmp_path):
    _run(tmp_path, steps=30)
    assert not _checks(tmp_path)["privacy_inputs_match_ledger"].passed


def test_a_run_that_recorded_no_inputs_is_not_trusted(tmp_path):
    _run(tmp_path, record=False)
    check = _checks(tmp_path)["epsilon_recomputed"]
    assert not check.passed and "cannot be recomputed" in check.note


def _federated(tmp_path, site_epsilon=None, central_epsilon=None, with_inputs=True):
    site_true = epsilon_from_history("prv", tuple(tuple(h) for h in HISTORY), 1e-4)
    central_history = [[1.2, 1.0, 3]]
    central_true = epsilon_from_history("rdp", tuple(tuple(h) for h in central_history), 1e-5)
    site = {"epsilon": site_true if site_epsilon is None else site_epsilon, "delta": 1e-4, "accountant": "prv"}
    if with_inputs:
        site.update(history=HISTORY, noise_multiplier=0.9, sample_rate=0.05, steps=60)
    central = {"epsilon": central_true if central_epsilon is None else central_epsilon, "delta": 1e-5,
               "accountant": "rdp", "history": central_history}
    weakest = max(site["epsilon"], central["epsilon"])
    (tmp_path / "privacy.json").write_text(json.dumps({
        "epsilon": weakest, "delta": 1e-4, "accountant": "prv", "scope": "site:hospital-a",
        "sites": {"hospital-a": site}, "central": central}))
    return site_true, central_true


def test_a_deployed_sites_epsilon_is_recomputed_from_the_inputs_it_sent(tmp_path):
    _federated(tmp_path)
    checks = _checks(tmp_path)
    assert checks["site:hospital-a.epsilon_recomputed"].passed
    assert checks["central.epsilon_recomputed"].passed


def test_a_lowered_site_or_central_epsilon_fails(tmp_path):
    site_true, _ = _federated(tmp_path, site_epsilon=0.5)
    check = _checks(tmp_path)["site:hospital-a.epsilon_recomputed"]
    assert not check.passed and f"{site_true:.6g}" in check.note
    _federated(tmp_path, central_epsilon=0.01)
    assert not _checks(tmp_path)["central.epsilon_recomputed"].passed


def test_a_site_that_sent_only_epsilon_is_not_trusted(tmp_path):
    _federated(tmp_path, with_inputs=False)
    check = _checks(tmp_path)["site:hospital-a.epsilon_recomputed"]
    assert not check.passed and "cannot be recomputed" in check.note


def test_secure_ft_privacy_recomputes_every_scope_of_a_federated_run(tmp_path):
    from secure_ft.privacy.recompute import verify_privacy

    site_true, central_true = _federated(tmp_path)
    result = verify_privacy(tmp_path)
    assert result.passed, [c for c in result.checks if not c.passed]
    assert result.recomputed_epsilon == max(site_true, central_true)
    _federated(tmp_path, site_epsilon=0.5)
    result = verify_privacy(tmp_path)
    assert not result.passed
    assert not {c.name: c for c in result.checks}["site hospital-a: ε recomputed"].passed
