"""What a model was built from, as SLSA-style resource descriptors signed with the verdict.

The gate writes ``provenance.json`` into the run directory before the report, and the signed
verdict binds its SHA-256 and carries the descriptors themselves
(`secure_ft.release.verdict_attestation`), so a bundle says — under the gate's signature — which data,
which base model and which software made the model. Each entry is an in-toto / SLSA v1
`ResourceDescriptor <https://github.com/in-toto/attestation/blob/main/spec/v1/resource_descriptor.md>`_
(``name``, ``uri``, ``digest``, ``annotations``)::

    training_data    the data file's SHA-256 (its bytes) and the dataset fingerprint the run recorded
                     (rows as read, `secure_ft.records.data.fingerprint`); for a federation, each site's
                     fingerprint as the site reported it (the rows never left the site)
    base_model       the base model folder's digest (`secure_ft.records.model_identity`), when it is a folder
    packages         every installed Python distribution, name and version, and the SHA-256 of that list
    secure_ft        secure-ft's version and, from a git checkout, its source revision

A value that cannot be known is left out and said so in ``annotations.note``; nothing is guessed.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from secure_ft.records.model_identity import file_sha256

PROVENANCE_VERSION = 1


def training_data_descriptors(config, data_summary: dict, privacy: dict | None) -> list[dict[str, Any]]:
    """The data the model was trained and audited on: file digest and recorded fingerprint; site fingerprints."""
    from secure_ft.records.data import builtin_path

    source = str(config.data.source)
    annotations: dict[str, Any] = {"dataset_fingerprint": data_summary.get("fingerprint"),
                                   "fingerprint_of": "the rows as read (secure_ft.records.data.fingerprint)"}
    descriptor: dict[str, Any] = {"name": source}
    path = builtin_path(source) if source.startswith("builtin:") else Path(config.resolve_path(source))
    if path.is_file():
        descriptor.update(uri=path.resolve().as_uri(), digest={"sha256": file_sha256(path)})
    else:
        annotations["note"] = "not a local file (a datasets name, or moved since): only its fingerprint is known"
    descriptors = [{**descriptor, "annotations": annotations}]
    for site, record in sorted(((privacy or {}).get("sites") or {}).items()):
        fingerprint = record.get("data_fingerprint") if isinstance(record, dict) else None
        descriptors.append({"name": f"site:{site}", "annotations": {
            "dataset_fingerprint": fingerprint,
            "note": "reported by the site; its rows never left it" if fingerprint else
                    "the site reported no fingerprint"}})
    return descriptors


def base_model_descriptor(config) -> dict[str, Any]:
    from secure_ft.errors import ModelError
    from secure_ft.records.model_identity import manifest_digest, model_manifest
    from secure_ft.text.models import resolve_model_source

    name = str(config.model.name_or_path)
    try:  # the folder the model loader reads (`default` is the packaged encoder's)
        folder = Path(resolve_model_source(config.resolve_path(name, hub_name_fallback=True)))
    except ModelError:
        folder = None
    descriptor: dict[str, Any] = {"name": name, "annotations": {"revision": config.model.revision}}
    if folder is not None and folder.is_dir():
        descriptor.update(uri=folder.resolve().as_uri(), digest={"sha256": manifest_digest(model_manifest(folder))})
    else:
        descriptor["annotations"]["note"] = "not a local folder here: resolved by the model loader (see the ledger)"
    return descriptor


def packages_descriptor() -> dict[str, Any]:
    """Every installed distribution as ``name==version``, sorted, and the SHA-256 of those lines."""
    lines = sorted({f"{(dist.metadata['Name'] or '?').lower()}=={dist.version}" for dist in metadata.distributions()})
    return {"name": "python-distributions", "digest": {"sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()},
            "annotations": {"count": len(lines), "distributions": lines}}


def secure_ft_descriptor() -> dict[str, Any]:
    try:
        version = metadata.version("secure-ft")
    except metadata.PackageNotFoundError:
        version = None
    source = Path(__file__).resolve().parents[2]  # the checkout holding secure_ft/
    descriptor: dict[str, Any] = {"name": "secure-ft", "annotations": {"version": version}}
    try:
        revision = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        descriptor["digest"] = {"gitCommit": revision}
        descriptor["annotations"]["uncommitted_changes"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        descriptor["annotations"]["note"] = "not a git checkout: the source revision is unknown"
    return descriptor


def collect_provenance(config, data_summary: dict, privacy: dict | None) -> dict[str, Any]:
    """The provenance document of one run (see the module docstring)."""
    return {"version": PROVENANCE_VERSION,
            "training_data": training_data_descriptors(config, data_summary or {}, privacy),
            "base_model": base_model_descriptor(config),
            "packages": packages_descriptor(),
            "secure_ft": secure_ft_descriptor()}


def write_provenance(run_dir: Path, config) -> dict[str, Any]:
    """Collect the run's provenance and write ``provenance.json`` (atomically); returns it."""
    from secure_ft.records.atomic_files import atomic_write_text
    from secure_ft.records.run_directory import DATA_FILE, PRIVACY_FILE, PROVENANCE_FILE

    def read(name: str) -> dict:
        path = Path(run_dir) / name
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        except (OSError, ValueError):
            return {}

    document = collect_provenance(config, read(DATA_FILE), read(PRIVACY_FILE))
    atomic_write_text(Path(run_dir) / PROVENANCE_FILE, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return document
