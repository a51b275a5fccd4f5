"""Site names kept with their registered keys, beside the SuperLink's database.

Flower's SuperLink knows a registered SuperNode by its node id and public key only. The kit
keeps ``sites.json`` in the SuperLink's state folder: site name → public key (the OpenSSH
``<type> <base64>``, and its SHA-256: the site's fingerprint), node id and when it was
registered. This registry is where a site's name comes from: the coordinator names every
reply by the registry entry of the node (so of the key) that sent it, the Fleet front tells a
starting SuperNode the name its key is registered under (`secure_ft.deploy.site_identity`),
and ``secure-ft sites list`` shows it. ``deploy superlink`` hands its path to the ServerApp in
the environment variable ``SECURE_FT_SITE_REGISTRY``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from secure_ft.errors import ConfigError
from secure_ft.privacy.signed_history import key_sha256, public_key_line
from secure_ft.records.atomic_files import atomic_write_text, json_text

REGISTRY_FILE = "sites.json"
REGISTRY_ENV = "SECURE_FT_SITE_REGISTRY"


def key_fingerprint(public_key_file: Path) -> str:
    """SHA-256 of the key file's ``<type> <base64>`` (its comment is not part of the key)."""
    return key_sha256(Path(public_key_file).read_text(encoding="utf-8"))


def entry_for_key(registry: dict[str, dict[str, Any]], fingerprint: str) -> tuple[str, dict[str, Any]] | None:
    """(name, entry) of the site registered with this key fingerprint, or None."""
    for name, entry in registry.items():
        if entry.get("public_key_sha256") == fingerprint:
            return name, entry
    return None


def entry_for_node(registry: dict[str, dict[str, Any]], node_id: int) -> tuple[str, dict[str, Any]] | None:
    """(name, entry) of the site whose registered key Flower knows as `node_id`, or None."""
    for name, entry in registry.items():
        if entry.get("node_id") is not None and int(entry["node_id"]) == int(node_id):
            return name, entry
    return None


def read_registry(state_dir: Path) -> dict[str, dict[str, Any]]:
    path = Path(state_dir) / REGISTRY_FILE
    if not path.is_file():
        return {}
    try:
        registry = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON ({error}); restore it from a backup") from None
    if not isinstance(registry, dict):
        raise ConfigError(f"{path}: expected an object of sites")
    return registry


def record_site(state_dir: Path, name: str, public_key_file: Path, node_id: int | None) -> None:
    registry = read_registry(state_dir)
    line = public_key_line(Path(public_key_file).read_text(encoding="utf-8"))
    fingerprint = key_sha256(line)
    other = entry_for_key(registry, fingerprint)
    if other is not None and other[0] != name:
        raise ConfigError(f"{public_key_file}: this key is already registered as site {other[0]!r}; one key, one site")
    registry[name] = {"public_key": line, "public_key_sha256": fingerprint, "node_id": node_id,
                      "key_file": str(Path(public_key_file).resolve()),
                      "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(Path(state_dir) / REGISTRY_FILE, json_text(registry), mode=0o600)  # coordinator state: owner only
