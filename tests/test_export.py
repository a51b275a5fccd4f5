"""Export bundle: refusal without a passing verdict for the current model, signature, tamper detection."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from fake_run import CANARY, TEXTS, make_run
from secure_ft.cli import main as cli_main
from secure_ft.config import RunConfig
from secure_ft.errors import BundleError, ConfigError, ExportRefused
from secure_ft.export import MANIFEST_FILE, export_bundle, keygen, verify_bundle
from secure_ft.run_ledger import Ledger, verify_ledger
from secure_ft.models import load_trained_model, predict


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One passing run exported with a configured key (built once: the tests below copy or only read it)."""
    root = tmp_path_factory.mktemp("export")
    private, public = keygen(root / "org")
    run = make_run(root)
    bundle = export_bundle(run.run_dir, root / "bundle", signing_key=private)
    return run, bundle, private, public


def _flip_byte(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _copy_bundle(bundle, target):
    import shutil

    shutil.copytree(bundle, target)
    return target


def test_bundle_layout_and_verification(exported):
    run, bundle, _, public = exported
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {"README.md", "audit_report.json", "audit_report.html", "policy.yaml", "verdict.json", "ledger.jsonl",
            "manifest.json", "manifest.sig", "signing_key.pub", "model/config.json", "model/model.safetensors"} <= names
    assert not any(name.startswith("audits/") for name in names)  # evidence excluded by default
    assert not any(name.endswith(".bin") for name in names)
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == names - {"manifest.json", "manifest.sig"}
    assert manifest["model_sha256"] == run.verdict.model_sha256
    result = verify_bundle(bundle, public)
    assert result.trusted_key and result.files == len(manifest["files"])
    assert verify_bundle(bundle).trusted_key is False
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card
    for section in ("## Intended use", "## Training data", "## Privacy guarantee", "## Fairness", "## Robustness",
                    "## Limitations", run.verdict.model_sha256, "d" * 64):
        assert section in card
    # the export is recorded in the run ledger, which still verifies
    events = Ledger(run.run_dir).events()
    assert events[-1]["event"] == "export" and events[-1]["data"]["model_sha256"] == run.verdict.model_sha256
    assert verify_ledger(run.run_dir) == len(events)


def test_bundle_model_gives_the_same_predictions(exported):
    run, bundle, _, _ = exported
    torch.set_num_threads(1)
    reference_model, reference_tokenizer = load_trained_model(run.run_dir / "model")
    model = AutoModelForSequenceClassification.from_pretrained(bundle / "model", use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(bundle / "model")
    expected = predict(reference_model, reference_tokenizer, TEXTS).probabilities
    actual = predict(model, tokenizer, TEXTS).probabilities
    assert len(TEXTS) == 20
    assert torch.equal(expected.argmax(-1), actual.argmax(-1))
    assert torch.allclose(expected, actual, atol=1e-6)


@pytest.mark.parametrize("name", ["model/model.safetensors", "audit_report.html", "README.md", "verdict.json"])
def test_one_flipped_byte_in_a_bundle_file_is_named(exported, tmp_path, name):
    _, bundle, _, public = exported
    copy = _copy_bundle(bundle, tmp_path / "b")
    _flip_byte(copy / name)
    with pytest.raises(BundleError, match=name.replace(".", r"\.")):
        verify_bundle(copy, public)


def test_edited_manifest_fails_the_signature(exported, tmp_path):
    _, bundle, _, public = exported
    copy = _copy_bundle(bundle, tmp_path / "b")
    text = (copy / MANIFEST_FILE).read_text().replace('"passed": true', '"passed": false')
    (copy / MANIFEST_FILE).write_text(text)
    with pytest.raises(BundleError, match="manifest.json"):
        verify_bundle(copy, public)
    copy2 = _copy_bundle(bundle, tmp_path / "c")
    _flip_byte(copy2 / MANIFEST_FILE, offset=40)
    with pytest.raises(BundleError, match="manifest.json"):
        verify_bundle(copy2)


def test_added_or_removed_files_are_named(exported, tmp_path):
    _, bundle, _, public = exported
    copy = _copy_bundle(bundle, tmp_path / "b")
    (copy / "model" / "extra.py").write_text("import os\n")
    with pytest.raises(BundleError, match="extra.py: not listed"):
        verify_bundle(copy, public)
    copy = _copy_bundle(bundle, tmp_path / "c")
    (copy / "policy.yaml").unlink()
    with pytest.raises(BundleError, match="policy.yaml: listed in the manifest but missing"):
        verify_bundle(copy, public)


def test_wrong_public_key_fails(exported, tmp_path):
    _, bundle, _, _ = exported
    _, other_public = keygen(tmp_path / "other")
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(bundle, other_public)
    # a re-signed bundle with a swapped-in key fails against the real signer's key too
    copy = _copy_bundle(bundle, tmp_path / "b")
    (copy / "signing_key.pub").write_bytes(other_public.read_bytes())
    with pytest.raises(BundleError):
        verify_bundle(copy)


def test_keygen_writes_private_key_0600_and_never_overwrites(tmp_path):
    private, public = keygen(tmp_path / "keys" / "team")
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in private.read_bytes() and b"BEGIN PUBLIC KEY" in public.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        keygen(tmp_path / "keys" / "team")


def test_model_edited_after_audit_is_refused(tmp_path):
    run = make_run(tmp_path)
    _flip_byte(run.run_dir / "model" / "model.safetensors")
    with pytest.raises(ExportRefused, match="changed after its audit"):
        export_bundle(run.run_dir, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no partial folder left
    assert Ledger(run.run_dir).events()[-1]["event"] == "export_refused"


def test_failing_verdict_is_refused_with_reasons_and_exit_code_3(tmp_path, capsys):
    run = make_run(tmp_path, passing=False)
    assert not run.verdict.passed
    with pytest.raises(ExportRefused, match="epsilon = 11.5"):
        export_bundle(run.run_dir, tmp_path / "bundle")
    code = cli_main(["export", str(run.run_dir), "--out", str(tmp_path / "bundle2")])
    assert code == 3
    assert "epsilon = 11.5" in capsys.readouterr().err
    assert not (tmp_path / "bundle2").exists()


def test_missing_verdict_and_tampered_ledger_are_refused(tmp_path):
    run = make_run(tmp_path)
    lines = (run.run_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    (run.run_dir / "ledger.jsonl").write_bytes(b"".join(lines[:2] + lines[3:]))
    with pytest.raises(ExportRefused, match="ledger does not verify"):
        export_bundle(run.run_dir, tmp_path / "bundle")
    (run.run_dir / "ledger.jsonl").write_bytes(b"".join(lines))
    (run.run_dir / "verdict.json").unlink()
    with pytest.raises(ExportRefused, match="no verdict"):
        export_bundle(run.run_dir, tmp_path / "bundle")


def test_canary_text_stays_out_unless_opted_in(exported, tmp_path):
    _, bundle, _, _ = exported
    for path in bundle.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
    config = RunConfig.model_validate({"report": {"include_examples": True}, "export": {"include_evidence": True}})
    run = make_run(tmp_path, config=config)
    opted = export_bundle(run.run_dir, tmp_path / "bundle")
    assert CANARY in (opted / "audit_report.json").read_text()
    assert CANARY in (opted / "audits" / "robustness" / "adversarial_examples.jsonl").read_text()
    assert verify_bundle(opted).files > 0


def test_run_local_key_when_none_configured(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SECURE_FT_SIGNING_KEY", raising=False)
    run = make_run(tmp_path)
    assert cli_main(["export", str(run.run_dir), "--out", str(tmp_path / "bundle")]) == 0
    out = capsys.readouterr().out
    assert "run-local" in out
    public = run.run_dir / "signing" / "run-local.pub"
    assert public.is_file()
    assert cli_main(["verify", str(tmp_path / "bundle"), "--public-key", str(public)]) == 0
    assert cli_main(["ledger", "verify", str(run.run_dir)]) == 0
    assert cli_main(["export", str(run.run_dir), "--out", str(tmp_path / "bundle")]) == 2  # exists


def test_env_signing_key_and_cli_exit_codes(exported, tmp_path, monkeypatch, capsys):
    _, bundle, _, public = exported
    private, env_public = keygen(tmp_path / "env")
    monkeypatch.setenv("SECURE_FT_SIGNING_KEY", str(private))
    run = make_run(tmp_path / "r")
    signed = export_bundle(run.run_dir, tmp_path / "bundle")
    assert verify_bundle(signed, env_public).trusted_key
    assert cli_main(["verify", str(bundle), "--public-key", str(env_public)]) == 4
    assert "signature does not verify" in capsys.readouterr().err
    assert cli_main(["keygen", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli.key").is_file()
