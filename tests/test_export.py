"""Export bundle: layout, OpenSSF signature checked by the model_signing command itself, predictions, keys."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fake_run import CANARY, TEXTS, make_run
from secure_ft.cli import main as cli_main
from secure_ft.errors import ConfigError, ExportRefused
from secure_ft.records.config import RunConfig
from secure_ft.records.run_ledger import Ledger, verify_ledger
from secure_ft.release.export import SIGNATURE_FILE, SIGNER_KEY_FILE, export_bundle, verify_bundle
from secure_ft.release.keys import default_key_paths, generate_key_pair
from secure_ft.text.models import load_trained_model, predict


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One passing run (its verdict signed by the per-user gate key) exported once; tests copy or read it."""
    root = tmp_path_factory.mktemp("export")
    run = make_run(root)
    bundle = export_bundle(run.run_dir, root / "bundle")
    return run, bundle, default_key_paths()[1]


def test_bundle_layout_and_verification(exported):
    run, bundle, public = exported
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"README.md", "audit_report.json", "audit_report.html", "policy.yaml", "verdict.json", "verdict.dsse.json",
            "ledger.jsonl", "privacy.json", "config.yaml", "audits/robustness.json", "audits/privacy.json",
            SIGNATURE_FILE, SIGNER_KEY_FILE, "model/config.json", "model/model.safetensors", "model/vocab.txt"} <= names
    assert not any(name.startswith("audits/robustness/") for name in names)  # evidence excluded by default
    assert not any(name.endswith(".bin") for name in names)
    result = verify_bundle(bundle, public)
    assert result.trusted_key and result.files == len(names) - 1  # every file but the signature itself
    assert result.model_sha256 == run.verdict.model_sha256
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    for section in ("## Intended use", "## Privacy guarantee", "## Fairness", "## Robustness", "## Limitations",
                    run.verdict.model_sha256):
        assert section in card
    events = Ledger(run.run_dir).events()
    assert events[-1]["event"] == "export" and events[-1]["data"]["model_sha256"] == run.verdict.model_sha256
    assert verify_ledger(run.run_dir) == len(events)


def test_the_model_signing_command_alone_verifies_a_bundle(exported, tmp_path):
    # as sigstore's model-validation operator would: no secure-ft code, only the public key
    _, bundle, public = exported
    command = [sys.executable, "-m", "model_signing", "verify", "key", str(bundle),
               "--signature", str(bundle / SIGNATURE_FILE), "--public_key", str(public)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HOME": str(tmp_path)}
    ok = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    copy = Path(shutil.copytree(bundle, tmp_path / "b"))
    (copy / "model" / "vocab.txt").write_text((copy / "model" / "vocab.txt").read_text() + "extra\n")
    command[4], command[6] = str(copy), str(copy / SIGNATURE_FILE)
    assert subprocess.run(command, capture_output=True, text=True, env=env, timeout=120).returncode != 0


def test_bundle_model_gives_the_same_predictions(exported):
    run, bundle, _ = exported
    torch.set_num_threads(1)
    reference_model, reference_tokenizer = load_trained_model(run.run_dir / "model")
    model = AutoModelForSequenceClassification.from_pretrained(bundle / "model", use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundle / "model")
    expected = predict(reference_model, reference_tokenizer, TEXTS).probabilities
    actual = predict(model, tokenizer, TEXTS).probabilities
    assert len(TEXTS) == 20
    assert torch.equal(expected.argmax(-1), actual.argmax(-1))
    assert torch.allclose(expected, actual, atol=1e-6)


def test_keygen_writes_a_p256_private_key_0600_and_never_overwrites(tmp_path, capsys):
    assert cli_main(["keygen", "--out", str(tmp_path / "keys" / "team")]) == 0
    private, public = tmp_path / "keys" / "team.key", tmp_path / "keys" / "team.pub"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    assert "P-256" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="already exists"):
        generate_key_pair(tmp_path / "keys" / "team")


def test_failing_verdict_is_refused_with_reasons_and_exit_code_3(tmp_path, capsys):
    run = make_run(tmp_path, passing=False)
    assert not run.verdict.passed
    with pytest.raises(ExportRefused, match="epsilon = 11.5"):
        export_bundle(run.run_dir, tmp_path / "bundle")
    assert cli_main(["export", str(run.run_dir), "--out", str(tmp_path / "bundle2")]) == 3
    assert "epsilon = 11.5" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists() and not (tmp_path / "bundle2").exists()
    assert Ledger(run.run_dir).events()[-1]["event"] == "export_refused"


def test_canary_text_stays_out_unless_opted_in(exported, tmp_path):
    _, bundle, _ = exported
    for path in bundle.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    config = RunConfig.model_validate({"report": {"include_examples": True}, "export": {"include_evidence": True}})
    run = make_run(tmp_path, config=config)
    opted = export_bundle(run.run_dir, tmp_path / "bundle")
    assert CANARY in (opted / "audit_report.json").read_text()
    assert CANARY in (opted / "audits" / "robustness" / "adversarial_examples.jsonl").read_text()
    assert verify_bundle(opted).files > 0


def test_organisation_key_from_the_environment_signs_and_is_trusted(tmp_path, monkeypatch, capsys):
    private, public = generate_key_pair(tmp_path / "org")
    monkeypatch.setenv("SECURE_FT_SIGNING_KEY", str(private))
    run = make_run(tmp_path / "r")  # the gate signs with the organisation key
    bundle = export_bundle(run.run_dir, tmp_path / "bundle")
    assert verify_bundle(bundle, public).trusted_key
    monkeypatch.delenv("SECURE_FT_SIGNING_KEY")
    # a verifier who trusts only the per-user key does not trust the organisation's bundle
    assert cli_main(["verify", str(bundle), "--public-key", str(default_key_paths()[1])]) == 4
    assert "not trusted" in capsys.readouterr().err
    assert cli_main(["verify", str(bundle), "--public-key", str(public)]) == 0
    assert cli_main(["ledger", "verify", str(run.run_dir), "--public-key", str(public)]) == 0
    assert "anchored" in capsys.readouterr().out
