"""Signed attestations: in-toto statements in DSSE envelopes; nothing unsigned or untrusted passes."""

from __future__ import annotations

import base64
import copy
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from secure_ft.errors import BundleError
from secure_ft.records.model_identity import model_digest
from secure_ft.release import attestation
from secure_ft.release.keys import public_key_fingerprint

PREDICATE = {"passed": True, "policy_sha256": "ab" * 32, "ledger_head": "cd" * 32, "epsilon": 7.5}


@pytest.fixture(scope="module")
def signer():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def stranger():
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    (folder / "front_end").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "vocab.txt").write_text("[PAD]\nrefund\n")
    (folder / "front_end" / "words.txt").write_text("refund 10\n")
    return folder


@pytest.fixture
def envelope(model_dir, signer):
    return attestation.sign_statement(attestation.model_statement(model_dir, PREDICATE), signer)


def reencode(envelope, statement):
    forged = copy.deepcopy(envelope)
    forged["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    return forged


def test_statement_names_every_file_and_the_whole_model(model_dir):
    statement = attestation.model_statement(model_dir, PREDICATE)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == attestation.VERDICT_PREDICATE_TYPE
    names = [subject["name"] for subject in statement["subject"]]
    assert names == ["config.json", "front_end/words.txt", "vocab.txt", "."]
    assert attestation.statement_model_digest(statement) == model_digest(model_dir)


def test_round_trip_returns_the_signed_statement(envelope, signer, model_dir):
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == public_key_fingerprint(signer.public_key())
    statement = attestation.verify_envelope(envelope, [signer.public_key()])
    assert statement["predicate"] == PREDICATE
    attestation.check_model_matches(statement, model_dir)


def test_signature_is_plain_ecdsa_over_dsse_pae(envelope, signer):
    """Any DSSE implementation can check it: recompute PAE by hand and verify with cryptography."""
    payload = base64.b64decode(envelope["payload"])
    kind = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 " + str(len(kind)).encode() + b" " + kind + b" " + str(len(payload)).encode() + b" " + payload
    signer.public_key().verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    # model-signing's own PAE (fixed to the in-toto payload type) agrees
    from model_signing._signing import sign_sigstore_pb

    assert sign_sigstore_pb.pae(payload) == attestation.pae(attestation.PAYLOAD_TYPE, payload)


def test_payload_is_canonical_json(model_dir, signer):
    statement = attestation.model_statement(model_dir, PREDICATE)
    first = attestation.sign_statement(statement, signer)["payload"]
    reordered = dict(reversed(list(statement.items())))
    assert attestation.sign_statement(reordered, signer)["payload"] == first
    assert base64.b64decode(first) == json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def test_tampered_payload_is_refused(envelope, signer):
    statement = attestation.verify_envelope(envelope, [signer.public_key()])
    statement["predicate"]["passed"] = False
    statement["predicate"]["epsilon"] = 0.1
    with pytest.raises(BundleError, match="does not verify"):
        attestation.verify_envelope(reencode(envelope, statement), [signer.public_key()])


def test_signature_swapped_from_another_envelope_is_refused(envelope, model_dir, signer):
    other = attestation.sign_statement(attestation.model_statement(model_dir, {"passed": False}), signer)
    forged = copy.deepcopy(envelope)
    forged["signatures"] = other["signatures"]
    with pytest.raises(BundleError, match="does not verify"):
        attestation.verify_envelope(forged, [signer.public_key()])


def test_untrusted_key_is_refused_even_if_its_signature_is_valid(model_dir, signer, stranger):
    envelope = attestation.sign_statement(attestation.model_statement(model_dir, PREDICATE), stranger)
    with pytest.raises(BundleError, match="not trusted"):
        attestation.verify_envelope(envelope, [signer.public_key()])
    # relabelling the keyid to a trusted key does not help
    envelope["signatures"][0]["keyid"] = public_key_fingerprint(signer.public_key())
    with pytest.raises(BundleError, match="does not verify"):
        attestation.verify_envelope(envelope, [signer.public_key()])


def test_extra_signature_by_an_untrusted_key_is_refused(envelope, model_dir, signer, stranger):
    extra = attestation.sign_statement(attestation.verify_envelope(envelope, [signer.public_key()]), stranger)
    envelope["signatures"] += extra["signatures"]
    with pytest.raises(BundleError, match="signature 2 .*not trusted"):
        attestation.verify_envelope(envelope, [signer.public_key()])


def test_wrong_payload_type_is_refused(envelope, signer):
    envelope["payloadType"] = "application/json"
    with pytest.raises(BundleError, match="payloadType is 'application/json'"):
        attestation.verify_envelope(envelope, [signer.public_key()])


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.pop("signatures"), "no signatures"),
    (lambda e: e.update(signatures=[]), "no signatures"),
    (lambda e: e.update(payload="***"), "not valid base64"),
    (lambda e: e.pop("payload"), "missing"),
    (lambda e: e["signatures"][0].pop("keyid"), "malformed"),
    (lambda e: e["signatures"][0].update(sig="AAAA"), "does not verify"),
])
def test_malformed_envelopes_are_refused(envelope, signer, mutate, message):
    mutate(envelope)
    with pytest.raises(BundleError, match=message):
        attestation.verify_envelope(envelope, [signer.public_key()])


def test_nothing_verifies_without_a_trusted_key(envelope):
    with pytest.raises(BundleError, match="no trusted public key"):
        attestation.verify_envelope(envelope, [])
    with pytest.raises(BundleError, match="not a DSSE envelope"):
        attestation.verify_envelope(["x"], [ec.generate_private_key(ec.SECP256R1()).public_key()])


def _sign_raw(payload: bytes, key) -> dict:
    sig = key.sign(attestation.pae(attestation.PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    return {"payloadType": attestation.PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": public_key_fingerprint(key.public_key()), "sig": base64.b64encode(sig).decode()}]}


@pytest.mark.parametrize("payload, message", [
    (b'{"_type": "https://in-toto.io/Statement/v1", "_type": "x"}', "duplicate keys"),
    (b"not json", "not JSON"),
    (b'{"_type": "https://in-toto.io/Statement/v0.1", "subject": []}', "not an in-toto Statement v1"),
    (b'{"_type": "https://in-toto.io/Statement/v1", "subject": [{"name": "a", "digest": {"sha256": "00"}}],'
     b' "predicateType": "p", "predicate": {}}', "malformed subject"),
])
def test_signed_but_malformed_statements_are_refused(signer, payload, message):
    with pytest.raises(BundleError, match=message):
        attestation.verify_envelope(_sign_raw(payload, signer), [signer.public_key()], predicate_type=None)


def test_other_predicate_type_is_refused_unless_asked_for(model_dir, signer):
    statement = attestation.model_statement(model_dir, {}, predicate_type="https://example.com/other/v1")
    envelope = attestation.sign_statement(statement, signer)
    with pytest.raises(BundleError, match="predicateType"):
        attestation.verify_envelope(envelope, [signer.public_key()])
    assert attestation.verify_envelope(envelope, [signer.public_key()], predicate_type=None) == statement


def test_nan_in_predicate_is_refused_at_signing(model_dir, signer):
    with pytest.raises(BundleError, match="NaN"):
        attestation.sign_statement(attestation.model_statement(model_dir, {"x": float("nan")}), signer)


def test_check_model_matches_names_what_changed(envelope, signer, model_dir):
    statement = attestation.verify_envelope(envelope, [signer.public_key()])
    (model_dir / "vocab.txt").write_text("[PAD]\nrefunds\n")
    (model_dir / "front_end" / "words.txt").unlink()
    (model_dir / "front_end" / "new.txt").write_text("x")
    with pytest.raises(BundleError, match=r"changed: vocab\.txt; missing: front_end/words\.txt; "
                                          r"extra: front_end/new\.txt"):
        attestation.check_model_matches(statement, model_dir)


def test_envelope_file_round_trip(tmp_path, envelope, signer):
    path = tmp_path / "verdict.intoto.json"
    attestation.write_envelope(path, envelope)
    assert attestation.read_envelope(path) == envelope
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left
    with pytest.raises(BundleError, match="not found"):
        attestation.read_envelope(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BundleError, match=r"bad\.json: not a readable JSON envelope"):
        attestation.read_envelope(tmp_path / "bad.json")
