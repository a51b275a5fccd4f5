"""A site's accounting cannot forget, its statement is its own, its name is its key's, its errors carry no data.

Site side without Flower's processes: `train_site_round` with a deployed site's node config
(its own file, state folder and key), the odometer across a "restart" (a fresh process that
finds a round left in progress), the signed statement through `secure-ft privacy`'s checks,
and the front's answer to a site asking which name its key is registered under.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from federated import protocol
from federated.handoff import stated_guarantee
from federated.site_errors import NO_RELEASE, SiteFailure
from federated.site_identity import SiteBook
from federated.site_odometer import SiteOdometer
from federated.site_training import Instructions, train_site_round
from federated.task import build_model, trainable_arrays
from secure_ft.deploy.certificates import make_site_key
from secure_ft.deploy.site_identity import _challenge, answer_identity, identity_request
from secure_ft.deploy.site_registry import record_site
from secure_ft.errors import PrivacyError
from secure_ft.privacy.accountants import epsilon_from_history
from secure_ft.privacy.recompute import verify_privacy
from secure_ft.privacy.signed_history import (key_sha256, load_private_key, open_statement, seal_statement, sign_text,
                                              unaccounted_rounds)
from secure_ft.records.atomic_files import atomic_write_json
from secure_ft.records.config import RunConfig
from toy_data import toy_frame

LABELS = ["cards", "loans", "reports"]
RUN = "run-key-1"


@pytest.fixture
def dp_config(toy_config) -> RunConfig:
    config = toy_config.model_copy(deep=True)
    config.model.transfer = "lora"
    config.privacy = config.privacy.model_copy(update={"mode": "dp", "target_epsilon": 8.0, "accountant": "rdp"})
    config.federated.rounds = 3
    config.data.labels = LABELS
    return config


@pytest.fixture
def site(tmp_path, dp_config):
    """A deployed site: its own file, state folder and SuperNode key."""
    path = tmp_path / "hospital-b.csv"
    toy_frame(rows_per_class=20, seed=7).to_csv(path, index=False)
    make_site_key(tmp_path / "keys", "hospital-b", force=False)
    node_config = {protocol.DATA_PATH: str(path), protocol.SITE_NAME_KEY: "hospital-b",
                   protocol.STATE_DIR: str(tmp_path / "state"), protocol.AUTH_KEY: str(tmp_path / "keys" / "hospital-b")}
    return node_config


def instructions(config: RunConfig, server_round: int) -> Instructions:
    return Instructions(config=config, labels=LABELS, server_round=server_round, run_key=RUN)


def odometer_path(tmp_path):
    return tmp_path / "state" / f"run-{RUN}" / "odometer.json"


def test_a_restarted_site_keeps_counting_and_states_every_release_signed(dp_config, site, tmp_path, capsys):
    model, _ = build_model(dp_config, LABELS)
    arrays = trainable_arrays(model)
    first = train_site_round(instructions(dp_config, 1), arrays, site)
    one_round = first.privacy["steps"]
    assert one_round > 0 and json.loads(odometer_path(tmp_path).read_text())["in_progress"] is None

    # round 2: the SuperNode dies mid-round (the round is marked, nothing is released), then restarts
    SiteOdometer.open(odometer_path(tmp_path).parent, "hospital-b", RUN).begin(2)
    third = train_site_round(instructions(dp_config, 3), arrays, site)

    payload = open_statement(third.statement, require_signature=True, expected_site="hospital-b",
                             expected_key_sha256=key_sha256((tmp_path / "keys" / "hospital-b.pub").read_text()))
    assert [r["round"] for r in payload["releases"]] == [1, 3]
    assert payload["not_released"] == [{"round": 2, "reason": "interrupted"}]
    true_history = [[r["noise_multiplier"], r["sample_rate"], r["steps"]] for r in payload["releases"]]
    assert sum(entry[2] for entry in true_history) == 2 * one_round  # round 3 continued the count, not from zero
    assert third.privacy["steps"] == 2 * one_round
    true_epsilon = epsilon_from_history("rdp", tuple(map(tuple, true_history)), payload["delta"])
    assert third.metrics[protocol.EPSILON] == pytest.approx(true_epsilon, rel=1e-9)
    assert true_epsilon > first.metrics[protocol.EPSILON]
    assert unaccounted_rounds(payload, [1, 2, 3]) == []
    assert unaccounted_rounds(payload, [1, 2, 3, 4]) == [4]


def test_a_tampered_or_foreign_statement_is_refused(tmp_path):
    make_site_key(tmp_path, "a", force=False)
    make_site_key(tmp_path, "b", force=False)
    key_a, key_b = load_private_key(tmp_path / "a"), load_private_key(tmp_path / "b")
    fingerprint_a = key_sha256((tmp_path / "a.pub").read_text())
    payload = {"site": "a", "run": RUN, "key_sha256": fingerprint_a, "accountant": "rdp", "delta": 1e-5,
               "releases": [{"round": 1, "noise_multiplier": 1.0, "sample_rate": 0.25, "steps": 4}], "not_released": []}
    sealed = seal_statement(payload, key_a)
    assert open_statement(sealed, require_signature=True, expected_key_sha256=fingerprint_a)["site"] == "a"
    forged = dict(sealed, payload=sealed["payload"].replace('"steps":4', '"steps":1'))
    with pytest.raises(PrivacyError, match="does not verify"):
        open_statement(forged, require_signature=True)
    by_b = seal_statement(payload, key_b)
    with pytest.raises(PrivacyError, match="registered key|names another key"):
        open_statement(by_b, require_signature=True, expected_key_sha256=fingerprint_a)
    with pytest.raises(PrivacyError, match="not signed"):
        open_statement(seal_statement(payload), require_signature=True)
    with pytest.raises(PrivacyError, match="not 'b'"):
        open_statement(sealed, require_signature=True, expected_site="b")


def _deployed_run(tmp_path, sealed: dict, rounds_sent: list[int], key: str) -> tuple:
    """privacy.json and federated.json as the coordinator writes them for one site."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    record = {"rounds_sent": rounds_sent, "rounds_failed_without_release": [], "statement": sealed, "key_sha256": key}
    entry = stated_guarantee(record)
    atomic_write_json(run_dir / "privacy.json", {"epsilon": entry["epsilon"], "delta": entry["delta"],
                                                 "accountant": "rdp", "sites": {"hospital-b": entry}})
    atomic_write_json(run_dir / "federated.json", {"mode": "deployment",
                                                   "sites": [{"name": "hospital-b", "key_sha256": key}]})
    return run_dir, entry


def test_secure_ft_privacy_recomputes_from_the_signed_history_and_flags_gaps_and_edits(tmp_path):
    make_site_key(tmp_path, "hospital-b", force=False)
    key = key_sha256((tmp_path / "hospital-b.pub").read_text())
    releases = [{"round": 1, "noise_multiplier": 0.95, "sample_rate": 0.25, "steps": 4},
                {"round": 3, "noise_multiplier": 0.95, "sample_rate": 0.25, "steps": 4}]
    payload = {"site": "hospital-b", "run": RUN, "key_sha256": key, "accountant": "rdp", "delta": 1e-4,
               "releases": releases, "not_released": [{"round": 2, "reason": "interrupted"}]}
    sealed = seal_statement(payload, load_private_key(tmp_path / "hospital-b"))
    run_dir, entry = _deployed_run(tmp_path, sealed, [1, 2, 3], key)
    assert entry["epsilon"] == pytest.approx(epsilon_from_history("rdp", ((0.95, 0.25, 8),), 1e-4), rel=1e-9)
    result = verify_privacy(run_dir)
    assert result.passed, [c.__dict__ for c in result.checks if not c.passed]

    # the coordinator records only the last round (the 5.310 instead of 6.823): caught
    report = json.loads((run_dir / "privacy.json").read_text())
    short = epsilon_from_history("rdp", ((0.95, 0.25, 4),), 1e-4)
    report["sites"]["hospital-b"].update(history=[[0.95, 0.25, 4]], steps=4, epsilon=short)
    report["epsilon"] = short
    atomic_write_json(run_dir / "privacy.json", report)
    failed = {c.name: c for c in verify_privacy(run_dir).checks if not c.passed}
    assert "not the signed statement's" in failed["site hospital-b: signed history"].detail

    # a round the coordinator sent that the site's statement does not account for: a gap
    gap_dir, _ = _deployed_run(tmp_path / "gap", sealed, [1, 2, 3, 4], key)
    failed = {c.name: c for c in verify_privacy(gap_dir).checks if not c.passed}
    assert "rounds [4]" in failed["site hospital-b: signed history"].detail

    # unsigned in a deployment: refused
    unsigned_dir, _ = _deployed_run(tmp_path / "unsigned", seal_statement(payload), [1, 2, 3], key)
    assert not verify_privacy(unsigned_dir).passed


def test_a_site_error_names_the_rule_and_counts_never_labels_rows_or_paths(dp_config, site, tmp_path):
    frame = toy_frame(rows_per_class=20, seed=7)
    frame.loc[frame.index[[3, 11]], "product"] = "Consumer Loan"
    frame.to_csv(site[protocol.DATA_PATH], index=False)
    model, _ = build_model(dp_config, LABELS)
    with pytest.raises(SiteFailure) as raised:
        train_site_round(instructions(dp_config, 1), trainable_arrays(model), site)
    reason = str(raised.value)
    assert reason.startswith("site hospital-b: loading its data failed: the site's data failed the run's checks")
    assert "label values outside data.labels 1" in reason and "rows with such labels 2" in reason
    assert reason.rstrip().endswith(f"{NO_RELEASE}; the details are in the site's own log")
    for leaked in ("Consumer Loan", "hospital-b.csv", str(tmp_path), "row 5", "rows 5", "cards"):
        assert leaked not in reason, leaked
    assert raised.value.__cause__ is None and raised.value.__context__ is not None  # Flower sends str(ex) only
    detail = [json.loads(line) for line in (tmp_path / "state" / "ledger.jsonl").read_text().splitlines()]
    assert "Consumer Loan" in detail[-1]["data"]["detail"]  # the full text stays at the site


def test_the_front_names_a_key_by_its_registration_and_only_for_its_holder(tmp_path):
    for name in ("hospital-a", "hospital-b"):
        make_site_key(tmp_path, name, force=False)
        record_site(tmp_path / "state", name, tmp_path / f"{name}.pub", node_id=100 + len(name))
    registry = tmp_path / "state" / "sites.json"
    key_b = load_private_key(tmp_path / "hospital-b")
    status, answer = answer_identity(registry, identity_request(key_b))
    assert status == 200 and answer["name"] == "hospital-b"

    # hospital-b's public key, signed by someone else: refused
    forged = identity_request(load_private_key(tmp_path / "hospital-a"))
    forged["public_key"] = identity_request(key_b)["public_key"]
    assert answer_identity(registry, forged)[0] == 403
    stale = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat(timespec="seconds")
    old = identity_request(key_b) | {"timestamp": stale}
    old["signature"] = sign_text(_challenge(old["public_key"], stale), key_b)
    assert answer_identity(registry, old)[0] == 403
    make_site_key(tmp_path, "intruder", force=False)
    assert answer_identity(registry, identity_request(load_private_key(tmp_path / "intruder")))[0] == 403


def test_the_coordinator_names_replies_by_the_registered_key_and_refuses_a_borrowed_name(tmp_path):
    make_site_key(tmp_path, "hospital-b", force=False)
    record_site(tmp_path, "hospital-b", tmp_path / "hospital-b.pub", node_id=7)
    book = SiteBook(tmp_path / "sites.json")
    assert book.name_of(7) == "hospital-b" and book.key_of(7) == key_sha256((tmp_path / "hospital-b.pub").read_text())
    assert book.identity_problem(7, "hospital-b") is None
    assert "registered as 'hospital-b'" in book.identity_problem(7, "hospital-a")
    assert "not in the site registry" in book.identity_problem(8, "hospital-a")
    book.sent_training(1, [7, 8])
    book.failed(1, 8, f"site x: training failed: RuntimeError; {NO_RELEASE}; the details are in the site's own log")
    records = book.records()
    assert records["hospital-b"]["rounds_sent"] == [1]
    assert records["unregistered node 8"]["rounds_failed_without_release"] == [1]


def test_what_the_coordinator_knows_of_its_sites_survives_a_checkpoint(tmp_path):
    make_site_key(tmp_path, "hospital-b", force=False)
    record_site(tmp_path, "hospital-b", tmp_path / "hospital-b.pub", node_id=7)
    book = SiteBook(tmp_path / "sites.json")
    book.sent_training(1, [7])
    book.sent_training(2, [7])
    book.failed(2, 7, f"site hospital-b: training failed: RuntimeError; {NO_RELEASE}; the details are in the site's own log")
    restored = SiteBook(tmp_path / "sites.json")
    restored.load_state_dict(json.loads(json.dumps(book.state_dict())))
    assert restored.records() == book.records()
    assert restored.records()["hospital-b"]["rounds_failed_without_release"] == [2]


def test_the_server_strategy_rejects_a_borrowed_name_and_a_foreign_signature(tmp_path, monkeypatch):
    from flwr.app import ConfigRecord
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from federated.site_identity import REGISTRY_ENV
    from test_federated_update_validation import guard, reply, shifted

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SUPERLINK_NODE_ID, 1  # the server side

    for name, node in (("hospital-a", 6), ("hospital-b", 7)):
        make_site_key(tmp_path, name, force=False)
        record_site(tmp_path, name, tmp_path / f"{name}.pub", node_id=node)
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "sites.json"))
    strategy = guard(min_accepted=1)

    def statement_by(signer: str, about: str) -> str:
        key = load_private_key(tmp_path / signer)
        payload = {"site": about, "run": RUN, "key_sha256": key_sha256((tmp_path / f"{signer}.pub").read_text()),
                   "accountant": "rdp", "delta": 1e-4, "not_released": [],
                   "releases": [{"round": 1, "noise_multiplier": 1.0, "sample_rate": 0.25, "steps": 4}]}
        return json.dumps(seal_statement(payload, key))

    honest = reply(7, "hospital-b", shifted(0.1))
    honest.content[protocol.SITE] = ConfigRecord({protocol.SITE_NAME: "hospital-b",
                                                  protocol.SITE_STATEMENT: statement_by("hospital-b", "hospital-b")})
    borrowed = reply(7, "hospital-a", shifted(0.1))  # hospital-b's node calling itself hospital-a
    forged = reply(6, "hospital-a", shifted(0.1))  # hospital-a's node sending a history signed by hospital-b's key
    forged.content[protocol.SITE] = ConfigRecord({protocol.SITE_NAME: "hospital-a",
                                                  protocol.SITE_STATEMENT: statement_by("hospital-b", "hospital-a")})
    strategy.aggregate_train(1, [honest, borrowed, forged])
    outcomes = [(o.site, o.status, o.reason) for o in strategy.outcomes]
    assert outcomes[0] == ("hospital-b", "accepted", None)
    assert outcomes[1][:2] == ("hospital-b", "rejected") and "registered as 'hospital-b'" in outcomes[1][2]
    assert outcomes[2][:2] == ("hospital-a", "rejected") and "privacy statement refused" in outcomes[2][2]
    records = strategy.sites.records()
    assert records["hospital-b"]["statement"] is not None and "hospital-a" not in records
    assert strategy.outcomes[0].key_sha256 == key_sha256((tmp_path / "hospital-b.pub").read_text())


def test_the_gate_fails_a_site_whose_recorded_history_is_not_its_signed_one(tmp_path):
    from audits._epsilon_recompute import recomputation_checks
    from audits._guarantee import read_guarantee

    make_site_key(tmp_path, "hospital-b", force=False)
    key = key_sha256((tmp_path / "hospital-b.pub").read_text())
    payload = {"site": "hospital-b", "run": RUN, "key_sha256": key, "accountant": "rdp", "delta": 1e-4,
               "not_released": [], "releases": [{"round": r, "noise_multiplier": 0.95, "sample_rate": 0.25, "steps": 4}
                                                for r in (1, 2)]}
    run_dir, _ = _deployed_run(tmp_path, seal_statement(payload, load_private_key(tmp_path / "hospital-b")), [1, 2], key)
    checks = {check.name: check for check in recomputation_checks(run_dir, read_guarantee(run_dir))}
    assert checks["site:hospital-b.signed_history"].passed and checks["site:hospital-b.epsilon_recomputed"].passed

    report = json.loads((run_dir / "privacy.json").read_text())
    short = epsilon_from_history("rdp", ((0.95, 0.25, 4),), 1e-4)
    report["sites"]["hospital-b"].update(history=[[0.95, 0.25, 4]], steps=4, epsilon=short)  # consistent, but short
    report["epsilon"] = short
    atomic_write_json(run_dir / "privacy.json", report)
    checks = {check.name: check for check in recomputation_checks(run_dir, read_guarantee(run_dir))}
    assert checks["site:hospital-b.epsilon_recomputed"].passed  # the short history is self-consistent...
    assert not checks["site:hospital-b.signed_history"].passed  # ...but it is not what the site signed
