"""Red team: someone who can write to a run directory (or a bundle) but does not hold the gate key.

Every attack must end with a refusal (exit 4 when evidence does not check out, 3 when the
signed verdict is a block), no bundle, and no half-written folder.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from fake_run import make_run
from secure_ft.cli import main as cli_main
from secure_ft.records.run_directory import RunDirectory
from secure_ft.records.run_ledger import Ledger
from secure_ft.release.export import SIGNATURE_FILE, SIGNER_KEY_FILE, export_bundle
from secure_ft.release.keys import generate_key_pair, load_private_key
from secure_ft.release.verdict_attestation import attest_verdict, record_attestation


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks")
    passing, blocked, other = make_run(root / "a"), make_run(root / "b", passing=False), make_run(root / "c")
    bundle = export_bundle(passing.run_dir, root / "bundle")
    return {"passing": passing.run_dir, "blocked": blocked.run_dir, "other": other.run_dir, "bundle": bundle}


def _copy(source: Path, target: Path) -> Path:
    return Path(shutil.copytree(source, target))


def _export(run_dir: Path, tmp_path: Path) -> int:
    out = tmp_path / "out-bundle"
    code = cli_main(["export", str(run_dir), "--out", str(out)])
    assert not out.exists(), "a refused export must write nothing"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-bundle")], "no partial bundle left"
    return code


def _verify(bundle: Path, *extra: str) -> int:
    return cli_main(["verify", str(bundle), *extra])


def _flip_byte(path: Path, offset: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_untouched_run_exports(runs, tmp_path):
    # the control: every attack below starts from a run that would export
    assert cli_main(["export", str(_copy(runs["passing"], tmp_path / "run")), "--out", str(tmp_path / "ok")]) == 0


def test_forged_verdict_json_on_a_blocked_run(runs, tmp_path):
    run = _copy(runs["blocked"], tmp_path / "run")
    verdict = json.loads((run / "verdict.json").read_text())
    verdict.update(passed=True, outcome="passed", reasons=[])
    (run / "verdict.json").write_text(json.dumps(verdict))
    assert _export(run, tmp_path) == 4  # verdict.json is bound by the signed verdict, which still says blocked


def test_forged_signed_payload(runs, tmp_path):
    run = _copy(runs["blocked"], tmp_path / "run")
    envelope = json.loads((run / "verdict.dsse.json").read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["verdict"].update(passed=True, outcome="passed", reasons=[])
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (run / "verdict.dsse.json").write_text(json.dumps(envelope))
    assert _export(run, tmp_path) == 4


def test_verdict_re_signed_with_the_attackers_own_key(runs, tmp_path):
    run = _copy(runs["blocked"], tmp_path / "run")
    private, _ = generate_key_pair(tmp_path / "attacker")
    verdict = json.loads((run / "verdict.json").read_text())
    from audits.gate import Verdict

    forged = Verdict.from_dict({**verdict, "passed": True, "outcome": "passed", "reasons": []})
    envelope = attest_verdict(run, forged, ["performance", "robustness", "fairness", "privacy"],
                              load_private_key(private), "attacker")
    record_attestation(run, forged, envelope)
    assert _export(run, tmp_path) == 4


def test_edited_audit_result(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    path = run / "audits" / "robustness.json"
    path.write_text(path.read_text().replace('"passed": true', '"passed": false', 1))
    assert _export(run, tmp_path) == 4


def test_edited_adversarial_evidence(runs, tmp_path):
    # evidence files (the review sheet, the adversarial pairs) are bound by digest inside the signed result
    run = _copy(runs["passing"], tmp_path / "run")
    path = run / "audits" / "robustness" / "adversarial_examples.jsonl"
    path.write_text(path.read_text().replace("zqxcanary", "harmless", 1))
    assert _export(run, tmp_path) == 4


def test_edited_policy(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    (run / "policy.yaml").write_text((run / "policy.yaml").read_text().replace("max_epsilon: 8.0", "max_epsilon: 80.0"))
    assert _export(run, tmp_path) == 4


def test_tokenizer_edited_after_the_verdict(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    vocab = run / "model" / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("refund", "refunx"))
    assert _export(run, tmp_path) == 4


def test_weights_swapped_in_from_another_run(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    _flip_byte(run / "model" / "model.safetensors")  # another run's weights differ somewhere
    assert _export(run, tmp_path) == 4


def test_verdict_copied_from_another_run(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    for name in ("verdict.dsse.json", "verdict.json"):
        shutil.copy(runs["other"] / name, run / name)
    assert _export(run, tmp_path) == 4


def test_ledger_tail_cut(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (run / "ledger.jsonl").write_bytes(b"".join(lines[:-3]))  # drops the verdict event and what followed
    assert _export(run, tmp_path) == 4
    assert cli_main(["ledger", "verify", str(run)]) == 4


def test_ledger_rewritten_with_recomputed_hashes(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    events = Ledger(run).events()
    (run / "ledger.jsonl").unlink()
    rewritten = Ledger(run)
    for entry in events:  # a chain that verifies on its own, with one event quietly changed
        data = dict(entry["data"])
        if entry["event"] == "audit_finished" and data.get("audit") == "robustness":
            data["passed"] = True
        rewritten.append(entry["event"], **data)
    assert cli_main(["ledger", "verify", str(run)]) == 4
    assert _export(run, tmp_path) == 4


def test_epsilon_lowered_in_privacy_json(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    privacy = json.loads((run / "privacy.json").read_text())
    privacy["epsilon"] = 0.5
    (run / "privacy.json").write_text(json.dumps(privacy))
    assert _export(run, tmp_path) == 4


def test_config_edited_after_the_verdict(runs, tmp_path):
    run = _copy(runs["passing"], tmp_path / "run")
    (run / "config.yaml").write_text((run / "config.yaml").read_text() + "\n# edited\n")
    assert _export(run, tmp_path) == 4


@pytest.mark.parametrize("document", ["audit_report.json", "audit_report.html", "verdict.json"])
def test_report_or_verdict_copy_rewritten_before_export(runs, tmp_path, document):
    # the documents people read travel in the bundle: a rewritten one must not be signed into it
    run = _copy(runs["passing"], tmp_path / "run")
    (run / document).write_text((run / document).read_text().replace("regulated-default", "regulated-defau1t"))
    assert _export(run, tmp_path) == 4


def test_bundle_with_an_extra_file(runs, tmp_path):
    bundle = _copy(runs["bundle"], tmp_path / "b")
    (bundle / "model" / "extra.py").write_text("import os\n")
    assert _verify(bundle) == 4


def test_bundle_with_a_missing_file(runs, tmp_path):
    bundle = _copy(runs["bundle"], tmp_path / "b")
    (bundle / "policy.yaml").unlink()
    assert _verify(bundle) == 4


def test_bundle_with_a_symlink(runs, tmp_path):
    bundle = _copy(runs["bundle"], tmp_path / "b")
    target = bundle / "model" / "vocab.txt"
    shutil.move(target, tmp_path / "vocab.txt")
    target.symlink_to(tmp_path / "vocab.txt")
    assert _verify(bundle) == 4


def test_bundle_with_a_dotdot_path_in_its_signed_manifest(runs, tmp_path):
    bundle = _copy(runs["bundle"], tmp_path / "b")
    signature = (bundle / SIGNATURE_FILE).read_text()
    envelope = json.loads(signature)
    dsse = envelope["dsseEnvelope"]
    statement = json.loads(base64.b64decode(dsse["payload"]))
    statement["predicate"]["resources"][0]["name"] = "../outside.txt"
    dsse["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    (bundle / SIGNATURE_FILE).write_text(json.dumps(envelope))
    assert _verify(bundle) == 4


def test_bundle_with_an_edited_weight_byte(runs, tmp_path):
    bundle = _copy(runs["bundle"], tmp_path / "b")
    _flip_byte(bundle / "model" / "model.safetensors")
    assert _verify(bundle) == 4


def test_wrong_public_key(runs, tmp_path):
    _, public = generate_key_pair(tmp_path / "other")
    assert _verify(runs["bundle"], "--public-key", str(public)) == 4


def test_self_signed_bundle_needs_the_flag(runs, tmp_path, capsys):
    # an attacker re-signs a doctored bundle with a key of their own and ships its public half inside
    bundle = _copy(runs["bundle"], tmp_path / "b")
    private, public = generate_key_pair(tmp_path / "attacker")
    from secure_ft.release.openssf_signing import sign_folder

    (bundle / SIGNER_KEY_FILE).write_bytes(public.read_bytes())
    sign_folder(bundle, private, bundle / SIGNATURE_FILE, ignore_git_paths=False)  # how bundles are signed
    assert _verify(bundle) == 4
    assert "not trusted" in capsys.readouterr().err
    # with the flag the file signature is accepted as integrity only, but the verdict inside is
    # still the gate's and must verify against a trusted key: the attacker's key is not one
    assert _verify(bundle, "--allow-self-signed") == 0
    assert "SELF-SIGNED" in capsys.readouterr().out


def test_self_signed_bundle_with_a_verdict_of_its_own_is_refused(runs, tmp_path):
    run = _copy(runs["blocked"], tmp_path / "run")
    private, _ = generate_key_pair(tmp_path / "attacker")
    from audits.gate import Verdict

    forged = Verdict.from_dict({**json.loads((run / "verdict.json").read_text()), "passed": True, "outcome": "passed",
                                "reasons": []})
    record_attestation(run, forged, attest_verdict(run, forged, ["performance", "robustness", "fairness", "privacy"],
                                                   load_private_key(private), "attacker"))
    # even an exporter who trusts the attacker's key gets nothing: the policy, re-evaluated over the
    # signed audit results, does not give the verdict the attacker signed
    code = cli_main(["export", str(run), "--out", str(tmp_path / "x"), "--signing-key", str(private),
                     "--public-key", str(tmp_path / "attacker.pub")])
    assert code == 4 and not (tmp_path / "x").exists()
