"""Key provenance: logs and ledgers name the key that signed as what it is, not as where its path came from."""

from __future__ import annotations

import logging

import pytest

from fake_run import make_run
from secure_ft.records.run_ledger import Ledger
from secure_ft.release import keys
from secure_ft.release.export import export_bundle


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    monkeypatch.setenv(keys.CONFIG_DIR_ENV, str(tmp_path / "config"))
    monkeypatch.delenv(keys.SIGNING_KEY_ENV, raising=False)


def test_the_default_key_handed_on_by_the_pipeline_is_called_the_per_user_default_key(tmp_path, caplog):
    run = make_run(tmp_path)  # export.signing_key is null: the gate signed with the per-user default key
    default_key = keys.default_key_paths()[0]
    with caplog.at_level(logging.INFO, logger="secure_ft.release.export"):
        # as the pipeline calls it: with its gate key's path
        export_bundle(run.run_dir, tmp_path / "bundle", signing_key=default_key,
                      signing_key_given_by="the run config (export.signing_key)")
    source = Ledger(run.run_dir).events()[-1]["data"]["key_source"]
    assert source.startswith("per-user default key") and "run config" not in source
    assert "per-user default key" in caplog.text and "run config" not in caplog.text


def test_a_configured_or_environment_key_keeps_its_origin(tmp_path, monkeypatch):
    configured, _ = keys.generate_key_pair(tmp_path / "org")
    _, source, _ = keys.resolve_signing_key_path(configured, "--signing-key")
    assert source == f"signing key from --signing-key ({configured})"
    monkeypatch.setenv(keys.SIGNING_KEY_ENV, str(configured))
    _, source, _ = keys.resolve_signing_key_path(configured, "the run config")
    assert source.startswith(f"organisation key from ${keys.SIGNING_KEY_ENV}")
