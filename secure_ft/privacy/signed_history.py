"""A federated site's released privacy history, as the site states it and signs it with its own key.

A deployed site trains where the coordinator cannot look. What it releases — each round's
DP-SGD update, whether or not the coordinator ever receives it — is recorded first in the
site's odometer (`federated.site_odometer`); with every update the site sends that whole
history as a *statement*: canonical JSON naming the site, the run, every release
(round, σ, q, steps) and every round it was asked to train but released nothing
(interrupted, failed before training). A deployed site signs the statement with the key
it authenticates to the SuperLink with (ECDSA over the exact UTF-8 bytes of the JSON text);
the coordinator checks the signature against the key registered for the node that sent it
and stores the signed statement in ``privacy.json``. ``secure-ft privacy`` and the gate
recompute each site's ε from the signed releases alone, and compare the rounds the
coordinator sent training to a site with the rounds its statement accounts for
(`unaccounted_rounds`): a round the site neither reports released nor not released is a
gap, and ε may be under-stated.

A simulation's sites have no keys: their statements travel unsigned (``signature: null``)
and are trusted as far as the simulation itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Iterable

from secure_ft.errors import PrivacyError

STATEMENT_KIND = "secure-ft site privacy statement v1"
NOT_RELEASED_REASONS = ("interrupted", "failed")


def canonical_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def public_key_line(line: str) -> str:
    """An OpenSSH public key without its comment: ``<type> <base64>``."""
    parts = str(line).split()
    if len(parts) < 2:
        raise PrivacyError(f"not an OpenSSH public key line: {str(line)[:40]!r}")
    return f"{parts[0]} {parts[1]}"


def key_sha256(line: str) -> str:
    """The fingerprint a site is known by: SHA-256 of ``<type> <base64>`` (the comment is not part of the key)."""
    return hashlib.sha256(public_key_line(line).encode("ascii")).hexdigest()


def _hash_for(key) -> Any:
    from cryptography.hazmat.primitives import hashes

    size = getattr(getattr(key, "curve", None), "key_size", 256)
    return hashes.SHA512() if size > 384 else hashes.SHA384() if size > 256 else hashes.SHA256()


def load_private_key(path: str | Path):
    """The site's OpenSSH (or PEM) private key: an elliptic-curve key, as Flower's SuperNode authentication uses."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = Path(path).read_bytes()
    try:
        key = (serialization.load_ssh_private_key(data, password=None) if b"OPENSSH" in data
               else serialization.load_pem_private_key(data, password=None))
    except (ValueError, TypeError) as error:
        raise PrivacyError(f"{path}: not an unencrypted OpenSSH/PEM private key ({error})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PrivacyError(f"{path}: the site key must be an elliptic-curve key (secure-ft deploy certs site-key)")
    return key


def public_line_of(private_key) -> str:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH).decode("ascii")


def sign_text(text: str, private_key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec

    return base64.b64encode(private_key.sign(text.encode("utf-8"), ec.ECDSA(_hash_for(private_key)))).decode("ascii")


def verify_text(text: str, signature: str, public_line: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(public_key_line(public_line).encode("ascii"))
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return False
        key.verify(base64.b64decode(signature, validate=True), text.encode("utf-8"), ec.ECDSA(_hash_for(key)))
        return True
    except (InvalidSignature, ValueError, TypeError, PrivacyError):
        return False


def seal_statement(payload: dict[str, Any], private_key=None) -> dict[str, Any]:
    """The statement as it travels: its exact text, the signature over it and the signer's public key."""
    text = canonical_json({**payload, "kind": STATEMENT_KIND})
    if private_key is None:
        return {"payload": text, "signature": None, "public_key": None}
    return {"payload": text, "signature": sign_text(text, private_key), "public_key": public_line_of(private_key)}


def open_statement(sealed: Any, *, require_signature: bool, expected_key_sha256: str | None = None,
                   expected_site: str | None = None) -> dict[str, Any]:
    """The statement's payload, after checking its signature, signer and shape.

    Raises
    ------
    PrivacyError
        Naming what does not hold: no statement, bad signature, another key, another site,
        malformed releases.
    """
    if not isinstance(sealed, dict) or not isinstance(sealed.get("payload"), str):
        raise PrivacyError("no site statement (payload text) recorded")
    signature, public = sealed.get("signature"), sealed.get("public_key")
    if signature is not None or require_signature:
        if not isinstance(signature, str) or not isinstance(public, str):
            raise PrivacyError("the site statement is not signed")
        if not verify_text(sealed["payload"], signature, public):
            raise PrivacyError("the site statement's signature does not verify against the key it names")
        if expected_key_sha256 is not None and key_sha256(public) != expected_key_sha256:
            raise PrivacyError(f"the statement is signed by key {key_sha256(public)[:16]}…, not the site's registered "
                               f"key {expected_key_sha256[:16]}…")
    try:
        payload = json.loads(sealed["payload"])
    except ValueError as error:
        raise PrivacyError(f"the site statement is not JSON: {error}") from None
    if not isinstance(payload, dict) or payload.get("kind") != STATEMENT_KIND:
        raise PrivacyError(f"the site statement is not a {STATEMENT_KIND!r}")
    if expected_site is not None and payload.get("site") != expected_site:
        raise PrivacyError(f"the statement is about site {payload.get('site')!r}, not {expected_site!r}")
    if signature is not None and payload.get("key_sha256") != key_sha256(public):
        raise PrivacyError("the statement names another key than the one that signed it")
    releases_history(payload)  # shape check
    return payload


def releases_history(payload: dict[str, Any]) -> list[list[float]]:
    """The accountant history the releases add up to: one (σ, q, steps) entry per release, in order."""
    releases = payload.get("releases")
    if not isinstance(releases, list):
        raise PrivacyError("the site statement has no list of releases")
    history = []
    for release in releases:
        try:
            sigma, rate, steps = float(release["noise_multiplier"]), float(release["sample_rate"]), int(release["steps"])
            int(release["round"])
        except (KeyError, TypeError, ValueError):
            raise PrivacyError(f"malformed release in the site statement: {release!r}") from None
        if not (math.isfinite(sigma) and sigma >= 0 and 0 < rate <= 1 and steps >= 0):
            raise PrivacyError(f"impossible release in the site statement: {release!r}")
        history.append([sigma, rate, steps])
    return history


def accounted_rounds(payload: dict[str, Any]) -> tuple[set[int], set[int]]:
    """(rounds with a release, rounds the site states it released nothing in)."""
    released = {int(release["round"]) for release in payload.get("releases") or []}
    quiet = {int(entry["round"]) for entry in payload.get("not_released") or []
             if isinstance(entry, dict) and entry.get("reason") in NOT_RELEASED_REASONS}
    return released, quiet


def unaccounted_rounds(payload: dict[str, Any] | None, rounds_sent: Iterable[int],
                       rounds_failed_without_release: Iterable[int] = ()) -> list[int]:
    """Rounds the coordinator sent this site training in that its statement does not account for."""
    released, quiet = accounted_rounds(payload) if payload is not None else (set(), set())
    explained = released | quiet | {int(r) for r in rounds_failed_without_release}
    return sorted({int(r) for r in rounds_sent} - explained)
