"""Site names kept with their registered keys, beside the SuperLink's database.

Flower's SuperLink knows a registered SuperNode by its node id and public key only. The kit
keeps ``sites.json`` in the SuperLink's state folder: site name → public key (SHA-256 of the
OpenSSH line), node id and when it was registered, so ``secure-ft sites list`` can show names.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from secure_ft.atomic_files import atomic_write_text, json_text
from secure_ft.errors import ConfigError

REGISTRY_FILE = "sites.json"


def key_fingerprint(public_key_file: Path) -> str:
    return hashlib.sha256(Path(public_key_file).read_text(encoding="utf-8").strip().encode()).hexdigest()


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
    registry[name] = {"public_key_sha256": key_fingerprint(public_key_file), "node_id": node_id,
                      "key_file": str(Path(public_key_file).resolve()),
                      "registered_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(Path(state_dir) / REGISTRY_FILE, json_text(registry), mode=0o600)  # coordinator state: owner only
