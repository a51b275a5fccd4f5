"""A site's name comes from the key it authenticates with, not from what it calls itself.

Before ``secure-ft deploy supernode`` starts Flower's SuperNode it asks the coordinator's
Fleet front which name its key is registered under: it sends its public key and a fresh
timestamp signed with its private key (so only the key's holder can ask), the front looks the
key up in the registry (`secure_ft.deploy.site_registry`) and answers the registered name.
A ``--site`` that differs, or a key that is not registered, and the site refuses to start.
The coordinator applies the same rule to every reply (`federated.site_identity`), so a site
that skipped this check still cannot train under another site's name.
"""

from __future__ import annotations

import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from secure_ft.deploy.site_registry import entry_for_key, read_registry
from secure_ft.errors import ConfigError
from secure_ft.privacy.signed_history import key_sha256, load_private_key, public_line_of, sign_text, verify_text

IDENTITY_PATH = "/secure-ft/v1/site-identity"
FRESHNESS = timedelta(minutes=5)


def _challenge(public_line: str, timestamp: str) -> str:
    return f"secure-ft site identity\n{public_line}\n{timestamp}"


def identity_request(private_key) -> dict[str, str]:
    """The body a site sends: its public key, now, and its signature over both."""
    line = public_line_of(private_key)
    timestamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return {"public_key": line, "timestamp": timestamp, "signature": sign_text(_challenge(line, timestamp), private_key)}


def answer_identity(registry_file: Path, body: Any) -> tuple[int, dict[str, Any]]:
    """The front's answer: (HTTP status, JSON body) — the registered name, or why not."""
    if not isinstance(body, dict) or not all(isinstance(body.get(key), str)
                                             for key in ("public_key", "timestamp", "signature")):
        return 400, {"error": "expected public_key, timestamp and signature"}
    try:
        stamp = datetime.fromisoformat(body["timestamp"])
    except ValueError:
        return 400, {"error": "timestamp is not ISO 8601"}
    if stamp.tzinfo is None or abs(datetime.now(timezone.utc) - stamp) > FRESHNESS:
        return 403, {"error": "timestamp is not within 5 minutes of the coordinator's clock"}
    if not verify_text(_challenge(body["public_key"], body["timestamp"]), body["signature"], body["public_key"]):
        return 403, {"error": "the signature does not verify against the public key sent"}
    fingerprint = key_sha256(body["public_key"])
    found = entry_for_key(read_registry(registry_file.parent), fingerprint)
    if found is None:
        return 403, {"error": "this key is not registered with the coordinator", "public_key_sha256": fingerprint}
    name, entry = found
    return 200, {"name": name, "public_key_sha256": fingerprint, "node_id": entry.get("node_id")}


def registered_identity(superlink: str, ca_file: Path, key_file: Path, timeout_s: float = 30.0) -> dict[str, Any]:
    """Ask the coordinator's front which site this key is registered as.

    Raises
    ------
    ConfigError
        The front cannot be reached, or refuses (an unregistered key, a clock too far off).
    """
    import httpx

    body = identity_request(load_private_key(key_file))
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with httpx.Client(verify=context, timeout=timeout_s) as client:
            reply = client.post(f"https://{superlink}{IDENTITY_PATH}", json=body)
    except httpx.HTTPError as error:
        raise ConfigError(f"cannot ask the coordinator at {superlink} which site key {key_file} is registered as: "
                          f"{error}; check --superlink and --ca, and that `secure-ft deploy superlink` runs") from None
    try:
        answer = reply.json()
    except ValueError:
        answer = {"error": reply.text[:200]}
    if reply.status_code != 200:
        raise ConfigError(f"the coordinator at {superlink} refused key {key_file}: {answer.get('error', answer)}; "
                          "send the key's .pub to the coordinator to be registered (deploy/README.md)")
    return answer


def check_site_identity(site: str, superlink: str, ca_file: Path, key_file: Path) -> dict[str, Any]:
    """The registry entry of this key; refuses a ``--site`` that differs from the registered name."""
    answer = registered_identity(superlink, ca_file, key_file)
    if answer.get("name") != site:
        raise ConfigError(
            f"--site {site!r} does not match the registration of key {key_file}: the coordinator registered it as "
            f"site {answer.get('name')!r}. A site's name comes from its key: start with --site {answer.get('name')} "
            f"or with {site}'s own key")
    return answer

