"""Provenance inside the signed verdict: what the model was built from, bound and shown."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from fake_run import make_run
from secure_ft.cli import main as cli_main
from secure_ft.release.export import export_bundle, verify_bundle
from secure_ft.release.provenance import file_sha256


def _predicate(run_dir: Path) -> dict:
    envelope = json.loads((run_dir / "verdict.dsse.json").read_text())
    return json.loads(base64.b64decode(envelope["payload"]))["predicate"]


def test_provenance_is_signed_shown_and_exported(tmp_path, toy_csv):
    from secure_ft.records.config import RunConfig

    config = RunConfig.model_validate({"data": {"source": str(toy_csv), "label_column": "product"}})
    run = make_run(tmp_path, provenance=True, config=config)
    provenance = _predicate(run.run_dir)["provenance"]
    assert provenance["file"] == "provenance.json" and provenance["sha256"] == file_sha256(run.run_dir / "provenance.json")
    data = provenance["descriptors"]["training_data"][0]
    assert data["name"] == str(toy_csv) and data["digest"]["sha256"] == file_sha256(toy_csv)
    packages = provenance["descriptors"]["packages"]["annotations"]["distributions"]
    assert any(line.startswith("torch==") for line in packages) and any(line.startswith("secure-ft==") for line in packages)
    assert provenance["descriptors"]["secure_ft"]["annotations"]["version"]
    html = (run.run_dir / "audit_report.html").read_text()
    assert "Provenance (bound by the signed verdict)" in html and file_sha256(toy_csv) in html
    bundle = export_bundle(run.run_dir, tmp_path / "bundle")
    assert (bundle / "provenance.json").read_bytes() == (run.run_dir / "provenance.json").read_bytes()
    card = (bundle / "README.md").read_text()
    assert "## Provenance" in card and file_sha256(toy_csv) in card
    assert verify_bundle(bundle).outcome == "passed"


def test_edited_provenance_is_refused(tmp_path, capsys):
    run = make_run(tmp_path, provenance=True)
    copy = Path(shutil.copytree(run.run_dir, tmp_path / "copy"))
    document = json.loads((copy / "provenance.json").read_text())
    document["training_data"][0]["annotations"]["dataset_fingerprint"] = "0" * 64
    (copy / "provenance.json").write_text(json.dumps(document))
    assert cli_main(["export", str(copy), "--out", str(tmp_path / "bundle")]) == 4
    assert "provenance.json: was changed since the gate signed its verdict" in capsys.readouterr().err
