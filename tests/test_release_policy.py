"""Red team against the organisation's release policy and signed approvals.

Each attack is tried at all three doors: ``export`` (exit 3 when a rule refuses, 4 when evidence
does not check out), ``verify`` (the same codes) and ``serve`` (exit 4 before any port opens).
Bundles for verify and serve are made as a malicious exporter would: a genuine bundle whose
approvals were swapped and which was re-signed with a trusted exporter key, or a genuine
bundle exported where no release policy applied.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from audits.result import AuditResult, Check
from fake_run import WORDS, audit_results, make_run
from secure_ft.cli import main as cli_main
from secure_ft.pipeline.main_job import GateKey
from secure_ft.records.policy import default_policy_path, load_policy
from secure_ft.records.run_directory import RunDirectory
from secure_ft.release.approvals import approval_statement
from secure_ft.release.attestation import read_envelope, sign_statement, write_envelope
from secure_ft.release.export import export_bundle, verify_bundle
from secure_ft.release.keys import (default_key_paths, ensure_default_key, generate_key_pair, load_private_key,
                            load_public_key, public_key_fingerprint)
from secure_ft.release.openssf_signing import sign_folder
from secure_ft.release.release_policy import parse_release_policy, sign_release_policy
from secure_ft.serving.bundle_loader import load_verified_bundle
from secure_ft.serving.card import read_model_card
from audits.gate import Verdict
from serve_helpers import free_port, port_is_open
from tiny_models import tiny_bert_folder


def _inconclusive_fairness() -> list[AuditResult]:
    check = Check.from_interval("older_american.equalized_odds_difference", 0.59, 0.37, 0.87, "<=", 0.5,
                                p_value=0.49, alpha=0.05, review="read older_american's per-group rates")
    return [AuditResult.from_checks("fairness", r.metrics, [check], evidence=r.evidence, notes=r.notes)
            if r.name == "fairness" else r for r in audit_results(passing=True)]


def _sign(root: Path, name: str, document: dict, key: Path) -> Path:
    source = root / f"{name}.yaml"
    source.write_text(yaml.safe_dump(document, sort_keys=False))
    target = root / f"{name}.dsse.json"
    write_envelope(target, sign_release_policy(source, load_private_key(key)))
    return target


def _resign(bundle: Path) -> None:
    """What an exporter holding a trusted signing key can always do: sign whatever folder it assembled."""
    (bundle / "bundle.sig").unlink()
    sign_folder(bundle, default_key_paths()[0], bundle / "bundle.sig", ignore_git_paths=False)


def _swap_approval(bundle: Path, target: Path, approval: Path) -> Path:
    copy = Path(shutil.copytree(bundle, target))
    for old in (copy / "approvals").glob("*.dsse.json"):
        old.unlink()
    shutil.copy(approval, copy / "approvals" / approval.name)
    _resign(copy)
    return copy


def _only_approval(run_dir: Path) -> Path:
    files = sorted((run_dir / "approvals").glob("*.dsse.json"))
    assert len(files) == 1, files
    return files[0]


@pytest.fixture(scope="module")
def org(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    ensure_default_key()  # the gate's (and exporter's) per-user key
    gate_pub = default_key_paths()[1]
    keys = {name: generate_key_pair(root / name) for name in ("org-root", "attacker-root", "alice", "mallory",
                                                               "other-gate")}
    runs = {
        "review": make_run(root / "review", results=_inconclusive_fairness()).run_dir,
        "other_model": make_run(root / "other", results=_inconclusive_fairness(),
                                model_dir=tiny_bert_folder(root / "base4", WORDS, num_labels=3, seed=4)).run_dir,
        "passing": make_run(root / "passing").run_dir,
        "research": make_run(root / "research", policy_path=default_policy_path().parent / "research.yaml").run_dir,
    }
    # (b): a policy that calls itself regulated-default but is the research policy's content
    impostor = root / "impostor.yaml"
    impostor.write_text((default_policy_path().parent / "research.yaml").read_text()
                        .replace("name: research", "name: regulated-default"))
    runs["impostor"] = make_run(root / "impostor", policy_path=impostor).run_dir
    assert load_policy(impostor)[0].name == "regulated-default"

    assert cli_main(["release-policy", "init", "--name", "acme", "--gate-key", str(gate_pub),
                     "--accept-policy", "regulated-default", "--approver", str(keys["alice"][1]),
                     "--out", str(root / "acme.yaml")]) == 0
    assert cli_main(["release-policy", "sign", str(root / "acme.yaml"), "--key", str(keys["org-root"][0]),
                     "--out", str(root / "acme.dsse.json")]) == 0
    document = yaml.safe_load((root / "acme.yaml").read_text())
    gate_fp = public_key_fingerprint(load_public_key(gate_pub))
    policies = {
        "acme": root / "acme.dsse.json",
        "expiring": _sign(root, "expiring", {**document, "max_verdict_age_days": 0.00001}, keys["org-root"][0]),
        "revoked": _sign(root, "revoked", {**document, "revoked_keys": [
            {"fingerprint": gate_fp, "revoked_at": "2026-01-01T00:00:00Z", "reason": "compromised"}]},
                         keys["org-root"][0]),
        "other_gate": _sign(root, "other-gate", {**document, "trusted_gate_keys": [
            {"fingerprint": public_key_fingerprint(load_public_key(keys["other-gate"][1])), "name": "other"}]},
                            keys["org-root"][0]),
        "always": _sign(root, "always", {**document, "approvals": {**document["approvals"], "when": "always"}},
                        keys["org-root"][0]),
        "attacker_root": _sign(root, "attacker", document, keys["attacker-root"][0]),
        "unsigned": root / "acme.yaml",
    }
    # edited after signing: research accepted too, the payload rewritten, the signature kept
    edited = json.loads(policies["acme"].read_text())
    statement = json.loads(base64.b64decode(edited["payload"]))
    relaxed = {**document, "accepted_audit_policies": document["accepted_audit_policies"]
               + [{"name": "research", "sha256": load_policy(default_policy_path().parent / "research.yaml")[1]}]}
    statement["predicate"]["yaml"] = yaml.safe_dump(relaxed)
    edited["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    policies["edited"] = root / "edited.dsse.json"
    policies["edited"].write_text(json.dumps(edited))
    time.sleep(1.0)  # the expiring policy's verdict age (0.864 s) is past for every run above
    return {"root": root, "keys": keys, "runs": runs, "policies": policies, "gate_fp": gate_fp}


def _with(org, name: str = "acme") -> list[str]:
    return ["--release-policy", str(org["policies"][name]), "--org-root-pub", str(org["keys"]["org-root"][1])]


def _approve(org, run_dir: Path, key: str = "alice", *extra: str) -> int:
    return cli_main(["approve", str(run_dir), "--key", str(org["keys"][key][0]), "--comment",
                     "read the per-group rates: the gap comes from 8 positives", "--acknowledge", "1", *extra])


@pytest.fixture(scope="module")
def approved(org, tmp_path_factory):
    """The walk-through: needs_review refused, approved by alice, exported, verified; its bundle."""
    root = tmp_path_factory.mktemp("approved")
    run = Path(shutil.copytree(org["runs"]["review"], root / "run"))
    assert cli_main(["export", str(run), "--out", str(root / "refused"), *_with(org)]) == 3
    assert _approve(org, run, "alice", *_with(org)) == 0
    assert cli_main(["export", str(run), "--out", str(root / "bundle"), *_with(org)]) == 0
    return {"run": run, "bundle": root / "bundle", "approval": _only_approval(run)}


def _export(org, run_dir: Path, tmp_path: Path, policy: str = "acme") -> int:
    out = tmp_path / "out-bundle"
    code = cli_main(["export", str(run_dir), "--out", str(out), *_with(org, policy)])
    assert not out.exists()
    return code


def _serve(org, bundle: Path, policy: str = "acme") -> int:
    port = free_port()
    code = cli_main(["serve", str(bundle), "--port", str(port), "--device", "cpu", *_with(org, policy)])
    assert not port_is_open(port)
    return code


def _three_doors(org, run_dir: Path, bundle: Path, tmp_path: Path, capsys, policy: str = "acme",
                 codes=(3, 3, 4)) -> list[str]:
    """Export `run_dir`, verify and serve `bundle` under `policy`; the exit codes and stderr of each."""
    messages = []
    capsys.readouterr()  # what earlier commands printed is not part of these answers
    for door, code in zip(("export", "verify", "serve"), codes):
        if door == "export":
            got = _export(org, run_dir, tmp_path, policy)
        elif door == "verify":
            got = cli_main(["verify", str(bundle), *_with(org, policy)])
        else:
            got = _serve(org, bundle, policy)
        err = capsys.readouterr().err
        assert got == code, f"{door}: exit {got}, expected {code}:\n{err}"
        messages.append(err)
    return messages


# -- the walk-through and no regression ---------------------------------------------------------

def test_needs_review_is_released_by_a_listed_approval(org, approved, capsys):
    bundle = approved["bundle"]
    assert (bundle / "release-policy.dsse.json").is_file() and len(list((bundle / "approvals").iterdir())) == 1
    assert cli_main(["verify", str(bundle), *_with(org)]) == 0
    out = capsys.readouterr().out
    assert "signed verdict: needs_review under policy 'regulated-default'" in out and "as shipped" in out
    assert "release policy 'acme'" in out and "approved by alice" in out
    served = load_verified_bundle(bundle, release_policy=org["policies"]["acme"],
                                  org_root_pub=org["keys"]["org-root"][1])
    assert served.release["applied"] and served.release["approvals"][0]["approver"] == "alice"
    card = read_model_card(served, ["a", "b", "c"])
    assert card["release_policy"]["name"] == "acme" and card["policy_sha256"] == served.policy_sha256
    assert card["policy"].startswith("'regulated-default' (sha256 ") and "as shipped" in card["policy"]
    assert "CFPB" in card["technical_documentation"]["data_provenance"]  # the run's card: statements
    readme = (bundle / "README.md").read_text()
    assert "## Release and human oversight" in readme and "**alice**" in readme and "was **needs review**" in readme
    assert "It was exported only because it passed" not in readme
    # the bundle's own copy of the release policy is never what a verifier applies: none configured here
    assert cli_main(["verify", str(bundle)]) == 3
    assert "no release policy applied" in capsys.readouterr().err
    events = [json.loads(line) for line in (approved["run"] / "ledger.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("approval") == 1
    assert events[-1]["event"] == "export" and events[-1]["data"]["release_policy"]["name"] == "acme"


def test_without_a_release_policy_nothing_changes(org, tmp_path, capsys):
    run = Path(shutil.copytree(org["runs"]["passing"], tmp_path / "run"))
    assert cli_main(["export", str(run), "--out", str(tmp_path / "bundle")]) == 0
    assert "no release policy applied" in capsys.readouterr().out
    assert cli_main(["verify", str(tmp_path / "bundle")]) == 0
    assert "no release policy applied" in capsys.readouterr().out
    readme = (tmp_path / "bundle" / "README.md").read_text()
    assert "No organisation release policy was applied at export" in readme
    assert "It was exported only because it passed policy **'regulated-default' (sha256 " in readme


def test_release_policy_show_checks_the_root(org, capsys):
    assert cli_main(["release-policy", "show", *_with(org)]) == 0
    out = capsys.readouterr().out
    assert "release policy 'acme'" in out and "1 of 1 (when: needs_review)" in out
    assert cli_main(["release-policy", "show", *_with(org, "attacker_root")]) == 4


# -- attacks ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_bundles(org, tmp_path_factory):
    """Bundles exported where no release policy applied: a passing and a research verdict."""
    root = tmp_path_factory.mktemp("plain")
    return {name: export_bundle(Path(shutil.copytree(org["runs"][name], root / f"{name}-run")), root / name)
            for name in ("passing", "research", "impostor")}


def test_policy_downgrade_research_verdict(org, plain_bundles, tmp_path, capsys):
    messages = _three_doors(org, org["runs"]["research"], plain_bundles["research"], tmp_path, capsys)
    for message in messages:
        assert "rule accepted_audit_policies" in message and "'research'" in message


def test_a_policy_that_calls_itself_regulated_default(org, plain_bundles, tmp_path, capsys):
    messages = _three_doors(org, org["runs"]["impostor"], plain_bundles["impostor"], tmp_path, capsys)
    assert all("MODIFIED COPY of the shipped 'regulated-default'" in message for message in messages)
    # with no release policy it still exports, but nobody is told it is regulated-default
    assert cli_main(["verify", str(plain_bundles["impostor"])]) == 0
    assert "MODIFIED COPY" in capsys.readouterr().out


def test_policy_edited_in_place_after_the_verdict(org, tmp_path, capsys):
    run = Path(shutil.copytree(org["runs"]["passing"], tmp_path / "run"))
    (run / "policy.yaml").write_text((run / "policy.yaml").read_text().replace("0.60", "0.99"))
    assert _export(org, run, tmp_path) == 4
    assert "policy.yaml: was changed since the gate signed its verdict" in capsys.readouterr().err


def test_approval_replayed_from_another_model(org, approved, tmp_path, capsys):
    other = Path(shutil.copytree(org["runs"]["other_model"], tmp_path / "other"))
    assert _approve(org, other) == 0
    foreign = _only_approval(other)
    run = Path(shutil.copytree(org["runs"]["review"], tmp_path / "run"))
    (run / "approvals").mkdir()
    shutil.copy(foreign, run / "approvals")
    bundle = _swap_approval(approved["bundle"], tmp_path / "bundle", foreign)
    for message in _three_doors(org, run, bundle, tmp_path, capsys):
        assert "rule approvals" in message and "approves another model" in message


def test_approval_replayed_from_another_verdict_of_the_same_model(org, approved, tmp_path, capsys):
    # the same model gated again: a new signed verdict, approved; that approval moved to the first verdict
    again = Path(shutil.copytree(org["runs"]["review"], tmp_path / "again"))
    run = RunDirectory(again)
    verdict = Verdict.from_dict(run.read_verdict())
    GateKey.for_config(run.read_config()).sign(run, verdict, _inconclusive_fairness())
    assert _approve(org, again) == 0
    foreign = _only_approval(again)
    first = Path(shutil.copytree(org["runs"]["review"], tmp_path / "run"))
    (first / "approvals").mkdir()
    shutil.copy(foreign, first / "approvals")
    bundle = _swap_approval(approved["bundle"], tmp_path / "bundle", foreign)
    for message in _three_doors(org, first, bundle, tmp_path, capsys):
        assert "rule approvals" in message and "approves another verdict" in message


def test_approval_by_an_unlisted_key(org, approved, tmp_path, capsys):
    run = Path(shutil.copytree(org["runs"]["review"], tmp_path / "run"))
    assert _approve(org, run, "mallory", *_with(org)) == 2  # the command itself refuses an unlisted key
    assert _approve(org, run, "mallory") == 0  # where no release policy is configured, anyone can sign one
    bundle = _swap_approval(approved["bundle"], tmp_path / "bundle", _only_approval(run))
    for message in _three_doors(org, run, bundle, tmp_path, capsys):
        assert "rule approvals" in message and "not a listed approver" in message


def test_approver_key_that_is_a_gate_key(org, approved, tmp_path, capsys):
    run = Path(shutil.copytree(org["runs"]["review"], tmp_path / "run"))
    gate_key = default_key_paths()[0]
    assert cli_main(["approve", str(run), "--key", str(gate_key), "--comment", "me", "--acknowledge", "1"]) == 2
    assert "four eyes" in capsys.readouterr().err
    # a gate key may not be listed as an approver either
    assert cli_main(["release-policy", "init", "--name", "x", "--gate-key", str(default_key_paths()[1]),
                     "--accept-policy", "regulated-default", "--approver", str(default_key_paths()[1]),
                     "--out", str(tmp_path / "x.yaml")]) == 2
    assert "four eyes" in capsys.readouterr().err
    # forged past the command: an approval signed with the gate key
    envelope = read_envelope(run / "verdict.dsse.json")
    verdict = Verdict.from_dict(json.loads((run / "verdict.json").read_text()))
    key = load_private_key(gate_key)
    statement = approval_statement(verdict.model_sha256, envelope, verdict,
                                   public_key_fingerprint(key.public_key()), "approve", "self", verdict.review)
    (run / "approvals").mkdir()
    forged = run / "approvals" / "forged.dsse.json"
    write_envelope(forged, sign_statement(statement, key))
    bundle = _swap_approval(approved["bundle"], tmp_path / "bundle", forged)
    for message in _three_doors(org, run, bundle, tmp_path, capsys):
        assert "rule approvals" in message and "four eyes" in message


def test_rejection_by_a_listed_approver(org, approved, tmp_path, capsys):
    run = Path(shutil.copytree(org["runs"]["review"], tmp_path / "run"))
    assert cli_main(["approve", str(run), "--key", str(org["keys"]["alice"][0]), "--reject",
                     "--comment", "not convinced"]) == 0
    bundle = _swap_approval(approved["bundle"], tmp_path / "bundle", _only_approval(run))
    for message in _three_doors(org, run, bundle, tmp_path, capsys):
        assert "REJECTED" in message and "not convinced" in message


def test_edited_approval(org, approved, tmp_path, capsys):
    edited = tmp_path / "edited.dsse.json"
    envelope = json.loads(approved["approval"].read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["comment"] = "rubber stamp"
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    edited.write_text(json.dumps(envelope))
    run = Path(shutil.copytree(approved["run"], tmp_path / "run"))
    shutil.copy(edited, _only_approval(run))
    bundle = _swap_approval(approved["bundle"], tmp_path / "bundle", edited)
    for message in _three_doors(org, run, bundle, tmp_path, capsys, codes=(4, 4, 4)):
        assert "does not verify" in message


def test_expired_verdict(org, plain_bundles, tmp_path, capsys):
    for message in _three_doors(org, org["runs"]["passing"], plain_bundles["passing"], tmp_path, capsys,
                                policy="expiring"):
        assert "rule max_verdict_age_days" in message


def test_revoked_gate_key(org, plain_bundles, tmp_path, capsys):
    for message in _three_doors(org, org["runs"]["passing"], plain_bundles["passing"], tmp_path, capsys,
                                policy="revoked"):
        assert "rule revoked_keys" in message and "compromised" in message


def test_gate_key_not_trusted_by_the_release_policy(org, plain_bundles, tmp_path, capsys):
    for message in _three_doors(org, org["runs"]["passing"], plain_bundles["passing"], tmp_path, capsys,
                                policy="other_gate"):
        assert "rule trusted_gate_keys" in message


@pytest.mark.parametrize("policy, expected", [("edited", "does not verify"),
                                              ("unsigned", "is not a signed release policy"),
                                              ("attacker_root", "not by the organisation root key")])
def test_a_release_policy_that_does_not_check_out(org, plain_bundles, tmp_path, capsys, policy, expected):
    for message in _three_doors(org, org["runs"]["passing"], plain_bundles["passing"], tmp_path, capsys,
                                policy=policy, codes=(4, 4, 4)):
        assert expected in message


def test_a_configured_policy_without_a_root_key_is_an_error(org, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SECURE_FT_RELEASE_POLICY", str(org["policies"]["acme"]))
    monkeypatch.delenv("SECURE_FT_ORG_ROOT_PUB", raising=False)
    assert cli_main(["export", str(org["runs"]["passing"]), "--out", str(tmp_path / "b")]) == 2
    assert "no organisation root public key" in capsys.readouterr().err
    # from the environment, with its root: the same rules apply as with the flags
    monkeypatch.setenv("SECURE_FT_ORG_ROOT_PUB", str(org["keys"]["org-root"][1]))
    assert cli_main(["export", str(org["runs"]["research"]), "--out", str(tmp_path / "b")]) == 3


def test_release_policy_schema_errors_name_the_field():
    with pytest.raises(Exception, match="approvals.required"):
        parse_release_policy("name: x\ntrusted_gate_keys: [{fingerprint: " + "a" * 64 + "}]\n"
                             "accepted_audit_policies: [{name: p, sha256: " + "b" * 64 + "}]\n"
                             "approvals: {required: 0, approvers: []}\n", "x.yaml")


def test_approvals_required_always_refuse_an_unapproved_passing_verdict(org, plain_bundles, tmp_path, capsys):
    for message in _three_doors(org, org["runs"]["passing"], plain_bundles["passing"], tmp_path, capsys,
                                policy="always"):
        assert "rule approvals: 0 valid approval(s), 1 required" in message and "approval always" in message
    run = Path(shutil.copytree(org["runs"]["passing"], tmp_path / "run"))
    assert cli_main(["approve", str(run), "--key", str(org["keys"]["alice"][0]), "--comment", "checked"]) == 0
    assert cli_main(["export", str(run), "--out", str(tmp_path / "released"), *_with(org, "always")]) == 0


def test_a_retired_key_keeps_what_it_signed_before_its_revocation():
    from datetime import datetime, timezone

    from secure_ft.release.release_policy import RevokedKey

    retired = RevokedKey(fingerprint="a" * 64, revoked_at="2026-06-01T00:00:00Z", reason="retired")
    assert not retired.refuses(datetime(2026, 5, 31, tzinfo=timezone.utc))
    assert retired.refuses(datetime(2026, 6, 1, tzinfo=timezone.utc))
    compromised = RevokedKey(fingerprint="a" * 64, revoked_at="2026-06-01T00:00:00Z")
    assert compromised.refuses(datetime(2020, 1, 1, tzinfo=timezone.utc))  # a stolen key can write any time
    with pytest.raises(Exception, match="time zone"):
        RevokedKey(fingerprint="a" * 64, revoked_at="2026-06-01T00:00:00")


def test_approvals_show_under_human_oversight(org, approved):
    # issue #25 item 5: the technical documentation's human oversight is the signed approvals
    from secure_ft.release.human_oversight import human_oversight

    alice = public_key_fingerprint(load_public_key(org["keys"]["alice"][1]))
    listed = human_oversight(approved["run"])
    assert [(a["fingerprint"], a["decision"]) for a in listed["approvals"]] == [(alice, "approve")]
    assert listed["approvals"][0]["comment"] == "read the per-group rates: the gap comes from 8 positives"
    readme = (approved["bundle"] / "README.md").read_text()
    oversight = readme[readme.index("### Human oversight"):readme.index("## Release and human oversight")]
    assert "checked and counted by the release policy **acme**" in oversight
    assert f"alice (key `{alice}`)" in oversight and "the gap comes from 8 positives" in oversight
    assert readme.index("## Technical documentation") < readme.index("### Human oversight")
