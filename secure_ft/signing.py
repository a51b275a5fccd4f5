"""Ed25519 keys for signing export bundles: generate, store as PEM, load, sign, verify.

A bundle's ``manifest.json`` (the SHA-256 of every file) is signed with an Ed25519 private
key; anyone holding the matching public key can check that the bundle is the one the
platform exported. Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key),
so standard tools read them too::

    openssl pkey -in signing.pub -pubin -noout -text

A private key protected by a passphrase is opened with the passphrase from the environment
variable ``SECURE_FT_SIGNING_KEY_PASSPHRASE``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_ft.errors import BundleError, ConfigError

PASSPHRASE_ENV = "SECURE_FT_SIGNING_KEY_PASSPHRASE"
ALGORITHM = "Ed25519"


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, hex: how manifests and messages name a key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def key_pair_paths(out_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``PREFIX.key`` (private) and ``PREFIX.pub`` (public)."""
    prefix = Path(out_prefix)
    return prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")


def keygen(out_prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new key pair: ``PREFIX.key`` (PEM, mode 0600) and ``PREFIX.pub`` (PEM).

    Existing files are never overwritten: replacing a signing key would orphan every bundle
    signed with it.
    """
    private_path, public_path = key_pair_paths(out_prefix)
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists; choose another prefix or move the old key pair away first")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    # O_EXCL + 0600 at creation: the private key is never readable by others, not even briefly
    handle = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(private_key_pem(key))
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    public_path.write_bytes(public_key_pem(key.public_key()))
    return private_path, public_path


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: signing key not found; create a key pair with `secure-ft keygen --out PREFIX`")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase.encode() if passphrase else None)
    except TypeError:
        raise ConfigError(
            f"{path}: the signing key is encrypted; set {PASSPHRASE_ENV} to its passphrase"
            if not passphrase else f"{path}: the key is not encrypted; unset {PASSPHRASE_ENV}"
        ) from None
    except ValueError as error:
        raise ConfigError(f"{path}: not a readable PEM private key ({error}); wrong file or wrong passphrase") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: is a {type(key).__name__}, not an Ed25519 key; make one with `secure-ft keygen`")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: public key not found")
    return public_key_from_pem(path.read_bytes(), str(path))


def public_key_from_pem(data: bytes, source: str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as error:
        raise BundleError(f"{source}: not a PEM public key ({error})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{source}: is a {type(key).__name__}, not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verify_signature(key: Ed25519PublicKey, data: bytes, signature: bytes, what: str) -> None:
    """Raise BundleError naming `what` unless `signature` is `key`'s signature of `data`."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BundleError(
            f"{what}: the Ed25519 signature does not verify with public key {public_key_fingerprint(key)[:16]}…; "
            "the signed file was changed after signing, or it was signed with another key"
        ) from None
