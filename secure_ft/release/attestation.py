"""Signed attestations: an in-toto Statement about a model folder, in a signed DSSE envelope.

The gate's decision travels as an `in-toto Statement v1
<https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>`_::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "config.json", "digest": {"sha256": "…"}}, …,   # every model file
                 {"name": ".", "digest": {"sha256": "<model digest>"}}],   # the whole folder
     "predicateType": "https://secure-ft.dev/verdict/v1",
     "predicate": {…}}                                                     # what the gate says

wrapped in a `DSSE envelope <https://github.com/secure-systems-lab/dsse/blob/master/envelope.md>`_::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": base64(canonical JSON of the statement),
     "signatures": [{"keyid": "<key fingerprint>", "sig": base64(ECDSA-P256-SHA256 DER signature)}]}

The signature covers DSSE's pre-authentication encoding ``PAE(payloadType, payload)``, so the
payload type cannot be swapped. Verification trusts only the public keys it is handed (the
user's trust list, a ``--public-key``), never a key that travels with the envelope.
The subject named ``.`` carries the model digest of `secure_ft.records.model_identity`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secure_ft.errors import BundleError
from secure_ft.records.model_identity import manifest_digest, model_manifest
from secure_ft.release.keys import public_key_fingerprint

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
VERDICT_PREDICATE_TYPE = "https://secure-ft.dev/verdict/v1"
#: subject name of the whole-folder digest; no file in the folder can have this name
MODEL_SUBJECT = "."

_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- statements --------------------------------------------------------------------------------

def model_statement(model_dir: str | os.PathLike[str], predicate: dict,
                    predicate_type: str = VERDICT_PREDICATE_TYPE) -> dict:
    """An in-toto Statement whose subjects are every file of `model_dir` plus its model digest.

    Parameters
    ----------
    model_dir
        The model folder the statement is about (hashed now, see `secure_ft.records.model_identity`).
    predicate
        What is attested (the gate's verdict); must be JSON-serialisable, without NaN.
    predicate_type
        A URI naming the predicate's schema.
    """
    manifest = model_manifest(model_dir)
    subjects = [{"name": entry["path"], "digest": {"sha256": entry["sha256"]}} for entry in manifest]
    subjects.append({"name": MODEL_SUBJECT, "digest": {"sha256": manifest_digest(manifest)}})
    return {"_type": STATEMENT_TYPE, "subject": subjects, "predicateType": predicate_type, "predicate": predicate}


def statement_model_digest(statement: dict) -> str:
    """The whole-folder model digest a statement attests."""
    for subject in statement["subject"]:
        if subject["name"] == MODEL_SUBJECT:
            return subject["digest"]["sha256"]
    raise BundleError("the attestation has no whole-model subject (named '.'); it was not made by secure-ft")


def check_model_matches(statement: dict, model_dir: str | os.PathLike[str]) -> None:
    """Raise BundleError unless `model_dir`, hashed now, is exactly the folder the statement names.

    The message lists changed, missing and extra files, so a user sees what was touched.
    """
    signed = {s["name"]: s["digest"]["sha256"] for s in statement["subject"] if s["name"] != MODEL_SUBJECT}
    manifest = model_manifest(model_dir)
    actual = {entry["path"]: entry["sha256"] for entry in manifest}
    problems = [f"changed: {name}" for name in sorted(signed.keys() & actual.keys()) if signed[name] != actual[name]]
    problems += [f"missing: {name}" for name in sorted(signed.keys() - actual.keys())]
    problems += [f"extra: {name}" for name in sorted(actual.keys() - signed.keys())]
    if not problems and manifest_digest(manifest) != statement_model_digest(statement):
        problems.append("the model digest differs")  # same files, so only a forged subject list gets here
    if problems:
        raise BundleError(f"{model_dir}: the model folder is not the one the signed verdict covers "
                          f"({'; '.join(problems)}); re-run the audits and the gate on this model")


def canonical_json(document: dict) -> bytes:
    """UTF-8 JSON with sorted keys and no spaces: the same statement always gives the same bytes."""
    try:
        return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise BundleError(f"the statement cannot be written as JSON ({error}); "
                          "predicate values must be strings, numbers (not NaN), lists or dicts") from None


# --- DSSE --------------------------------------------------------------------------------------

def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what the signature actually covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def sign_statement(statement: dict, private_key: ec.EllipticCurvePrivateKey) -> dict:
    """A DSSE envelope holding `statement`, signed with `private_key` (ECDSA P-256, SHA-256).

    Returns
    -------
    dict
        ``{"payloadType", "payload", "signatures": [{"keyid", "sig"}]}``; ``keyid`` is the
        key's fingerprint (`secure_ft.release.keys.public_key_fingerprint`).
    """
    _check_statement(statement)
    payload = canonical_json(statement)
    signature = private_key.sign(pae(PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": public_key_fingerprint(private_key.public_key()),
                        "sig": base64.b64encode(signature).decode("ascii")}],
    }


def verify_envelope(envelope: dict, trusted_public_keys: list[ec.EllipticCurvePublicKey],
                    predicate_type: str | None = VERDICT_PREDICATE_TYPE, source: str = "attestation") -> dict:
    """The statement inside `envelope`, once every signature on it is checked.

    Every signature must name (by ``keyid``) a key in `trusted_public_keys` and verify with
    it; an envelope with no signatures is refused.

    Parameters
    ----------
    envelope
        A DSSE envelope as `sign_statement` returns it (or as read from a file).
    trusted_public_keys
        The only keys accepted; never take them from the envelope or the bundle.
    predicate_type
        The predicate type required; ``None`` accepts any.
    source
        Names the envelope (e.g. its file) in error messages.

    Raises
    ------
    BundleError
        Malformed envelope or statement, wrong payload type, an untrusted key, a signature
        that does not verify, or an unexpected predicate type.
    """
    if not trusted_public_keys:
        raise BundleError(f"{source}: no trusted public key to verify it with; pass the signer's public key "
                          "or add it to the trust list (trusted_keys/ in the secure-ft config folder)")
    if not isinstance(envelope, dict):
        raise BundleError(f"{source}: not a DSSE envelope (a JSON object was expected)")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        raise BundleError(f"{source}: payloadType is {envelope.get('payloadType')!r}, not {PAYLOAD_TYPE!r}")
    payload = _b64decode(envelope.get("payload"), f"{source}: payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise BundleError(f"{source}: the envelope carries no signatures")
    by_fingerprint = {public_key_fingerprint(key): key for key in trusted_public_keys}
    signed = pae(PAYLOAD_TYPE, payload)
    for number, entry in enumerate(signatures, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
            raise BundleError(f"{source}: signature {number} is malformed (needs keyid and sig)")
        key = by_fingerprint.get(entry["keyid"])
        if key is None:
            raise BundleError(f"{source}: signature {number} is by key {entry['keyid'][:16]}…, which is not trusted; "
                              "verify with the signer's public key, or add it to the trust list if you trust it")
        try:
            key.verify(_b64decode(entry.get("sig"), f"{source}: signature {number}"), signed,
                       ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise BundleError(f"{source}: signature {number} does not verify with trusted key {entry['keyid'][:16]}…; "
                              "the attestation was changed after signing") from None
    statement = _parse_statement(payload, source)
    if predicate_type is not None and statement["predicateType"] != predicate_type:
        raise BundleError(f"{source}: predicateType is {statement['predicateType']!r}, not {predicate_type!r}")
    return statement


# --- files -------------------------------------------------------------------------------------

def write_envelope(path: str | os.PathLike[str], envelope: dict) -> None:
    """Write an envelope as JSON, atomically (temporary file, then rename)."""
    path = Path(path)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(envelope, stream, indent=2, sort_keys=True)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)


def read_envelope(path: str | os.PathLike[str]) -> dict:
    """An envelope from a JSON file; BundleError naming the file if it is missing or not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise BundleError(f"{path}: signed attestation not found; the bundle is incomplete") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{path}: not a readable JSON envelope ({error})") from None


# --- helpers -----------------------------------------------------------------------------------

def _b64decode(value, what: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{what} is missing or not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError(f"{what} is not valid base64") from None


def _no_duplicate_keys(pairs: list) -> dict:
    # two readers of one payload must never disagree about which value a key has
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError(f"duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _parse_statement(payload: bytes, source: str) -> dict:
    try:
        statement = json.loads(payload.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as error:
        raise BundleError(f"{source}: the signed payload is not JSON ({error})") from None
    _check_statement(statement, source)
    return statement


def _check_statement(statement, source: str = "statement") -> None:
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        raise BundleError(f"{source}: not an in-toto Statement v1 (_type must be {STATEMENT_TYPE!r})")
    subjects = statement.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise BundleError(f"{source}: the statement has no subjects")
    names = set()
    for subject in subjects:
        digest = subject.get("digest") if isinstance(subject, dict) else None
        if not (isinstance(subject, dict) and isinstance(subject.get("name"), str) and isinstance(digest, dict)
                and isinstance(digest.get("sha256"), str) and _SHA256.fullmatch(digest["sha256"])):
            raise BundleError(f"{source}: malformed subject {subject!r} (needs name and a sha256 digest)")
        if subject["name"] in names:
            raise BundleError(f"{source}: subject {subject['name']!r} appears twice")
        names.add(subject["name"])
    if not isinstance(statement.get("predicateType"), str) or not isinstance(statement.get("predicate"), dict):
        raise BundleError(f"{source}: the statement needs a predicateType (string) and a predicate (object)")

