"""Attacks on paths and on the bundle's file list: each is refused with a clear message and exit code.

* files added to a signed bundle — dot-files, ``.git/``, ``.github/``, ``.gitattributes``,
  ``.gitignore`` — are refused by ``secure-ft verify`` and by the library's own
  ``model_signing verify --no-ignore-git-paths`` (the bundle signs git paths like any file);
* a policy's audit names are checked against the known audits (they become file names);
* ``export --out`` inside the run's model or audits folder, or a dangling symlink, exits 2;
* a config's relative ``policy:`` resolves against the config's folder, not the current one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fake_run import make_run
from secure_ft.cli import main as cli_main
from secure_ft.errors import PolicyError
from secure_ft.records.config import load_config
from secure_ft.records.policy import load_policy
from secure_ft.release.export import SIGNATURE_FILE, export_bundle
from secure_ft.release.keys import default_key_paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    run = make_run(root)
    return run, export_bundle(run.run_dir, root / "bundle"), default_key_paths()[1]


def _model_signing_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The OpenSSF library's own command, without secure-ft on the path and without a network."""
    script = Path(sys.executable).with_name("model_signing")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "model_signing"]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    dead_end = "http://127.0.0.1:9"
    env.update(HOME=str(cwd), HTTP_PROXY=dead_end, HTTPS_PROXY=dead_end, http_proxy=dead_end, https_proxy=dead_end,
               OTEL_SDK_DISABLED="true")
    return subprocess.run(command + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("added", [".gitignore", ".gitattributes", ".git/config", ".github/workflows/x.yml",
                                   ".hidden", "model/.gitattributes", "extra.txt"])
def test_a_file_added_to_a_signed_bundle_is_refused_git_and_dot_files_too(exported, tmp_path, capsys, added):
    _, bundle, public = exported
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / added).parent.mkdir(parents=True, exist_ok=True)
    (copy / added).write_text("[core]\n\tbare = false\n")
    assert cli_main(["verify", str(copy), "--public-key", str(public)]) == 4
    assert added in capsys.readouterr().err


def test_the_library_command_agrees_with_secure_ft_verify(exported, tmp_path):
    _, bundle, public = exported

    def library_verify(folder: Path) -> subprocess.CompletedProcess:
        return _model_signing_cli("verify", "key", str(folder), "--signature", str(folder / SIGNATURE_FILE),
                                  "--public_key", str(public), "--no-ignore-git-paths", cwd=tmp_path)

    clean = library_verify(bundle)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / ".git").mkdir()
    (copy / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    tampered = library_verify(copy)
    assert tampered.returncode != 0 and ".git/HEAD" in tampered.stdout + tampered.stderr


def test_policy_audit_names_must_be_known_audits(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text('name: p\nrequired_audits: ["performance", "../../x"]\n')
    with pytest.raises(PolicyError, match=r"unknown audit '\.\./\.\./x'; known audits are performance") as caught:
        load_policy(policy)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("inside", ["model/bundle", "model/front_end/b", "audits/b"])
def test_export_out_inside_a_folder_export_reads_exits_2(exported, tmp_path, capsys, inside):
    run, _, public = exported
    before = sorted(p.relative_to(run.run_dir).as_posix() for p in run.run_dir.rglob("*"))
    assert cli_main(["export", str(run.run_dir), "--out", str(run.run_dir / inside), "--public-key", str(public)]) == 2
    assert "export reads" in capsys.readouterr().err
    assert sorted(p.relative_to(run.run_dir).as_posix() for p in run.run_dir.rglob("*")) == before  # nothing written


def test_export_out_as_a_dangling_symlink_exits_2(exported, tmp_path, capsys):
    run, _, public = exported
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing-target")
    assert cli_main(["export", str(run.run_dir), "--out", str(link), "--public-key", str(public)]) == 2
    error = capsys.readouterr().err
    assert "symbolic link to a missing target" in error and "internal error" not in error
    assert not (tmp_path / "missing-target").exists()


def test_a_relative_policy_resolves_against_the_config_folder_not_the_current_one(tmp_path, monkeypatch):
    configs, elsewhere = tmp_path / "configs", tmp_path / "cwd"
    configs.mkdir()
    elsewhere.mkdir()
    (configs / "run.yaml").write_text("policy: policies/strict.yaml\n")
    (elsewhere / "policies").mkdir()
    (elsewhere / "policies" / "strict.yaml").write_text("name: planted in the current folder\n")
    monkeypatch.chdir(elsewhere)
    config = load_config(configs / "run.yaml")
    assert Path(config.policy) == configs / "policies" / "strict.yaml"  # even though only the cwd one exists
