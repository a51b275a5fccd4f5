"""Signing keys: P-256 pairs, the per-user default key, the organisation key, the trust list."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from secure_ft.errors import ConfigError
from secure_ft.release import keys


@pytest.fixture(autouse=True)
def user_config(tmp_path, monkeypatch):
    """Every test gets its own config folder; the real home is never written."""
    folder = tmp_path / "config"
    monkeypatch.setenv(keys.CONFIG_DIR_ENV, str(folder))
    monkeypatch.delenv(keys.SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    return folder


def test_generate_key_pair_writes_p256_pem_with_private_mode_0600(tmp_path):
    private_path, public_path = keys.generate_key_pair(tmp_path / "org" / "signing")
    assert (private_path.name, public_path.name) == ("signing.key", "signing.pub")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    private = keys.load_private_key(private_path)
    public = keys.load_public_key(public_path)
    assert private.curve.name == "secp256r1"
    assert keys.public_key_fingerprint(private.public_key()) == keys.public_key_fingerprint(public)
    assert not [p for p in private_path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_generate_key_pair_never_overwrites(tmp_path):
    private_path, _ = keys.generate_key_pair(tmp_path / "k")
    before = private_path.read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        keys.generate_key_pair(tmp_path / "k")
    assert private_path.read_bytes() == before


def test_fingerprint_is_sha256_of_der_subject_public_key_info(tmp_path):
    _, public_path = keys.generate_key_pair(tmp_path / "k")
    key = keys.load_public_key(public_path)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert keys.public_key_fingerprint(key) == hashlib.sha256(der).hexdigest()
    # and openssl, with no secure-ft code, agrees
    openssl = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(public_path), "-outform", "DER"],
                             capture_output=True, check=False)
    if openssl.returncode == 0:
        assert hashlib.sha256(openssl.stdout).hexdigest() == keys.public_key_fingerprint(key)


def test_default_key_is_made_once_and_trusted(user_config):
    key, source, created = keys.resolve_signing_key(None)
    assert created and "per-user default key" in source and "created now" in source
    private_path, public_path = keys.default_key_paths()
    assert private_path == user_config / "keys" / "gate.key" and public_path.exists()
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert keys.is_trusted(key.public_key())
    assert len(keys.trusted_public_keys()) == 1

    again, source, created = keys.resolve_signing_key(None)
    assert not created and "created now" not in source
    assert keys.public_key_fingerprint(again.public_key()) == keys.public_key_fingerprint(key.public_key())
    assert len(keys.trusted_public_keys()) == 1


def test_config_folder_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv(keys.CONFIG_DIR_ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.config_dir() == tmp_path / "xdg" / "secure-ft"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.config_dir() == tmp_path / "home" / ".config" / "secure-ft"


def test_configured_key_beats_environment_beats_default(tmp_path, monkeypatch, user_config):
    configured, _ = keys.generate_key_pair(tmp_path / "configured")
    org, _ = keys.generate_key_pair(tmp_path / "org")
    monkeypatch.setenv(keys.SIGNING_KEY_ENV, str(org))

    path, source, created = keys.resolve_signing_key_path(configured)
    assert path == configured and "run config" in source and not created
    path, source, _ = keys.resolve_signing_key_path(None)
    assert path == org and keys.SIGNING_KEY_ENV in source
    key, _, _ = keys.resolve_signing_key(None)
    assert keys.public_key_fingerprint(key.public_key()) == \
        keys.public_key_fingerprint(keys.load_public_key(tmp_path / "org.pub"))
    # an organisation key is not silently trusted, and no default key was made
    assert not keys.is_trusted(key.public_key())
    assert not (user_config / "keys").exists()


def test_ed25519_key_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "old.key"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=r"old\.key: is an Ed25519 key.*P-256.*secure-ft keygen"):
        keys.resolve_signing_key(path)


def test_other_curves_and_rsa_are_refused(tmp_path):
    for name, key in [("p384.key", ec.generate_private_key(ec.SECP384R1())),
                      ("rsa.key", rsa.generate_private_key(public_exponent=65537, key_size=2048))]:
        path = tmp_path / name
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
        with pytest.raises(ConfigError, match=f"{name}: .*(secp384r1|RSA).*secure-ft keygen"):
            keys.load_private_key(path)


def test_unreadable_missing_or_garbage_key_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.key: signing key not found.*secure-ft keygen"):
        keys.load_private_key(tmp_path / "nope.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match=r"garbage\.key: not a readable PEM private key"):
        keys.load_private_key(garbage)
    private_path, _ = keys.generate_key_pair(tmp_path / "k")
    with pytest.raises(ConfigError, match=r"k\.key: not a PEM public key \(that is a private key"):
        keys.load_public_key(private_path)
    if os.geteuid() != 0:  # root reads anything
        private_path.chmod(0o000)
        with pytest.raises(ConfigError, match="cannot be read"):
            keys.load_private_key(private_path)


def test_private_key_readable_by_others_is_refused(tmp_path):
    private_path, _ = keys.generate_key_pair(tmp_path / "k")
    private_path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable or writable by others.*chmod 600"):
        keys.load_private_key(private_path)


def test_encrypted_key_needs_the_passphrase(tmp_path, monkeypatch):
    path = tmp_path / "enc.key"
    path.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse")))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=keys.PASSPHRASE_ENV):
        keys.load_private_key(path)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        keys.load_private_key(path)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "correct horse")
    assert keys.load_private_key(path).curve.name == "secp256r1"


def test_trust_list_explicit_file_or_folder(tmp_path):
    _, first = keys.generate_key_pair(tmp_path / "ring" / "a")
    _, second = keys.generate_key_pair(tmp_path / "ring" / "b")
    _, stranger = keys.generate_key_pair(tmp_path / "stranger")
    ring = keys.trusted_public_keys(tmp_path / "ring")
    assert len(ring) == 2
    assert keys.is_trusted(keys.load_public_key(second), ring)
    assert not keys.is_trusted(keys.load_public_key(stranger), ring)
    only_first = keys.trusted_public_keys(first)
    assert not keys.is_trusted(keys.load_public_key(second), only_first)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        keys.trusted_public_keys(tmp_path / "empty")


def test_trust_public_key_adds_to_the_user_list_once(tmp_path):
    assert keys.trusted_public_keys() == []
    _, public_path = keys.generate_key_pair(tmp_path / "org")
    first = keys.trust_public_key(public_path)
    assert keys.trust_public_key(public_path) == first
    assert [keys.public_key_fingerprint(k) for k in keys.trusted_public_keys()] == \
        [keys.public_key_fingerprint(keys.load_public_key(public_path))]


def test_a_bad_file_in_the_trust_list_is_named(user_config):
    folder = user_config / keys.TRUSTED_KEYS_DIR
    folder.mkdir(parents=True)
    (folder / "old.pub").write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match=r"old\.pub: is an Ed25519 key"):
        keys.trusted_public_keys()
