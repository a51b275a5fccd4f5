"""Signing keys: ECDSA P-256 key pairs, where they live, and which public keys are trusted.

Verdicts and export bundles are signed with an ECDSA key on curve P-256 (``prime256v1``),
the kind OpenSSF model-signing accepts. Keys live outside run directories:

* an organisation's key, named by the run config (``configured_path``) or, failing that,
  by the environment variable ``SECURE_FT_SIGNING_KEY``;
* otherwise a per-user default key pair made on first use, as ssh-keygen does, in the
  user's config folder: ``keys/gate.key`` and ``keys/gate.pub``.

The config folder is ``$SECURE_FT_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/secure-ft``, else
``~/.config/secure-ft``. Its ``trusted_keys/*.pub`` is the trust list that verification uses
when it is given no public key; the default key's public half is added to it on creation.

Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key), so standard tools
read them (``openssl pkey -in gate.pub -pubin -noout -text``). A private key protected by a
passphrase is opened with ``$SECURE_FT_SIGNING_KEY_PASSPHRASE``. A key is named by its
fingerprint: the SHA-256 of its DER SubjectPublicKeyInfo, in hex
(``openssl pkey -pubin -in gate.pub -outform DER | sha256sum``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_ft.errors import ConfigError

CONFIG_DIR_ENV = "SECURE_FT_CONFIG_DIR"
SIGNING_KEY_ENV = "SECURE_FT_SIGNING_KEY"
PASSPHRASE_ENV = "SECURE_FT_SIGNING_KEY_PASSPHRASE"
DEFAULT_KEY_NAME = "gate"
TRUSTED_KEYS_DIR = "trusted_keys"
CURVE_NAME = "secp256r1"  # = P-256 = prime256v1

_KEYGEN_HINT = "make a P-256 key pair with `secure-ft keygen --out PREFIX`"


# --- where keys live ---------------------------------------------------------------------------

def config_dir() -> Path:
    """The user's secure-ft config folder (not created here)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "secure-ft"


def default_key_paths() -> tuple[Path, Path]:
    """``(keys/gate.key, keys/gate.pub)`` in the config folder."""
    return key_pair_paths(config_dir() / "keys" / DEFAULT_KEY_NAME)


def trusted_keys_dir() -> Path:
    return config_dir() / TRUSTED_KEYS_DIR


def key_pair_paths(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``PREFIX.key`` (private) and ``PREFIX.pub`` (public)."""
    prefix = Path(prefix)
    return prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")


# --- making keys -------------------------------------------------------------------------------

def generate_key_pair(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new P-256 key pair: ``PREFIX.key`` (PEM, mode 0600) and ``PREFIX.pub`` (PEM).

    Both files appear whole or not at all, and existing files are never replaced:
    replacing a signing key would orphan every bundle signed with it.

    Returns
    -------
    (Path, Path)
        The private and the public key's paths.

    Raises
    ------
    ConfigError
        One of the two files already exists.
    """
    private_path, public_path = key_pair_paths(prefix)
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path}: already exists; choose another prefix or move the old key pair away first")
    private_path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_new_file(private_path, private_key_pem(key), mode=0o600)
    try:
        _write_new_file(public_path, public_key_pem(key.public_key()), mode=0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path


def ensure_default_key() -> tuple[Path, bool]:
    """The per-user default private key's path, and whether it was created by this call.

    Made once, on first use, in ``keys/`` of the config folder (mode 0700); its public half is
    then added to the trust list. Two processes racing here end up with the same key.
    """
    private_path, public_path = default_key_paths()
    if private_path.exists():
        if not public_path.exists():
            raise ConfigError(f"{public_path}: missing next to {private_path}; restore it or move both away "
                              "so that a new default key pair is made")
        return private_path, False
    private_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        generate_key_pair(private_path.with_suffix(""))
    except ConfigError:
        if private_path.exists() and public_path.exists():  # another process made it first
            return private_path, False
        raise
    trust_public_key(public_path)
    return private_path, True


def trust_public_key(public_key_path: str | os.PathLike[str]) -> Path:
    """Add a public key to the user's trust list; returns its path there.

    The copy is named by the key's fingerprint, so adding the same key twice is harmless.
    """
    key = load_public_key(public_key_path)
    folder = trusted_keys_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{Path(public_key_path).stem}-{public_key_fingerprint(key)[:16]}.pub"
    if not target.exists():
        _write_new_file(target, public_key_pem(key), mode=0o644, replace=True)
    return target


# --- choosing the signing key ------------------------------------------------------------------

def resolve_signing_key_path(configured_path: str | os.PathLike[str] | None,
                             given_by: str = "the run config") -> tuple[Path, str, bool]:
    """Which private key signs: ``(path, source description, created by this call)``.

    The key named by the run config wins over ``$SECURE_FT_SIGNING_KEY`` (an explicit,
    recorded choice beats an ambient one); with neither, the per-user default key is used and
    made if missing. A given path that is the per-user default key, or the key
    ``$SECURE_FT_SIGNING_KEY`` names, is described as that (the pipeline hands its gate key's
    path on to export); any other is "signing key from `given_by`".
    """
    if configured_path:
        path = Path(configured_path).expanduser()
        if _same_file(path, default_key_paths()[0]):
            return path, f"per-user default key ({path})", False
        if os.environ.get(SIGNING_KEY_ENV) and _same_file(path, Path(os.environ[SIGNING_KEY_ENV]).expanduser()):
            return path, f"organisation key from ${SIGNING_KEY_ENV} ({path})", False
        return path, f"signing key from {given_by} ({configured_path})", False
    if os.environ.get(SIGNING_KEY_ENV):
        path = Path(os.environ[SIGNING_KEY_ENV]).expanduser()
        return path, f"organisation key from ${SIGNING_KEY_ENV} ({path})", False
    path, created = ensure_default_key()
    made = ", created now" if created else ""
    return path, f"per-user default key ({path}{made})", created


def _same_file(path: Path, other: Path) -> bool:
    try:
        return path.resolve() == other.resolve()
    except OSError:
        return False


def resolve_signing_key(configured_path: str | os.PathLike[str] | None
                        ) -> tuple[ec.EllipticCurvePrivateKey, str, bool]:
    """The private key that signs, loaded: ``(key, source description, created)``.

    See `resolve_signing_key_path` for the order of precedence.

    Raises
    ------
    ConfigError
        The key is missing, unreadable, readable by others, encrypted without a passphrase, or
        not a P-256 key; the message names the file and the fix.
    """
    path, source, created = resolve_signing_key_path(configured_path)
    return load_private_key(path), source, created


# --- reading keys ------------------------------------------------------------------------------

def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from a PEM file (passphrase from ``$SECURE_FT_SIGNING_KEY_PASSPHRASE``)."""
    path = Path(path)
    data = _read_key_file(path, "signing key")
    _check_private_mode(path)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase.encode() if passphrase else None)
    except TypeError:
        raise ConfigError(
            f"{path}: the signing key is encrypted; set {PASSPHRASE_ENV} to its passphrase" if not passphrase
            else f"{path}: the signing key is not encrypted; unset {PASSPHRASE_ENV}") from None
    except Exception as error:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise ConfigError(f"{path}: not a readable PEM private key ({error}); wrong file or wrong passphrase; "
                          f"{_KEYGEN_HINT}") from None
    _check_key_type(key, path)
    return key


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a PEM file."""
    path = Path(path)
    return public_key_from_pem(_read_key_file(path, "public key"), str(path))


def public_key_from_pem(data: bytes, source: str) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from PEM bytes; `source` names where they came from in errors."""
    try:
        key = serialization.load_pem_public_key(data)
    except Exception as error:  # ValueError or UnsupportedAlgorithm
        hint = " (that is a private key: give the .pub file)" if b"PRIVATE KEY" in data else ""
        raise ConfigError(f"{source}: not a PEM public key{hint} ({error})") from None
    _check_key_type(key, Path(source))
    return key


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo: how runs, reports and envelopes name a key.

    model-signing's own key hint is the SHA-256 of the PEM text instead, a different value.
    """
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


# --- trust -------------------------------------------------------------------------------------

def trusted_public_keys(explicit: str | os.PathLike[str] | None = None) -> list[ec.EllipticCurvePublicKey]:
    """The public keys a verification accepts.

    Parameters
    ----------
    explicit
        A ``.pub`` file or a folder of ``*.pub`` files (``secure-ft verify --public-key``);
        when given, only these are trusted. When ``None``, the user's trust list
        (``trusted_keys/*.pub`` in the config folder), which may be empty.

    Raises
    ------
    ConfigError
        A named file or a file in the trust list is not a P-256 public key.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.pub"))
            if not files:
                raise ConfigError(f"{path}: holds no *.pub public keys")
            return [load_public_key(file) for file in files]
        return [load_public_key(path)]
    return [load_public_key(file) for file in sorted(trusted_keys_dir().glob("*.pub"))]


def is_trusted(public_key: ec.EllipticCurvePublicKey,
               trusted: list[ec.EllipticCurvePublicKey] | None = None) -> bool:
    """Whether `public_key` is in `trusted` (default: the user's trust list), by fingerprint."""
    keys = trusted_public_keys() if trusted is None else trusted
    fingerprint = public_key_fingerprint(public_key)
    return any(public_key_fingerprint(key) == fingerprint for key in keys)


# --- helpers -----------------------------------------------------------------------------------

def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found; {_KEYGEN_HINT}") from None
    except OSError as error:
        raise ConfigError(f"{path}: {what} cannot be read ({error.strerror}); check its permissions") from None


def _check_private_mode(path: Path) -> None:
    # like ssh: a private key others can read is no longer private
    if os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise ConfigError(f"{path}: the private key is readable or writable by others "
                          f"(mode {stat.S_IMODE(path.stat().st_mode):o}); run `chmod 600 {path}`")


def _check_key_type(key, path: Path) -> None:
    if isinstance(key, (Ed25519PrivateKey, Ed25519PublicKey)):
        raise ConfigError(f"{path}: is an Ed25519 key (made by an older secure-ft); OpenSSF model-signing needs "
                          f"an ECDSA P-256 key: {_KEYGEN_HINT} and sign again")
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise ConfigError(f"{path}: is a {type(key).__name__.lstrip('_')}, not an ECDSA P-256 key; {_KEYGEN_HINT}")
    if key.curve.name != CURVE_NAME:
        raise ConfigError(f"{path}: is an EC key on curve {key.curve.name}, not P-256 ({CURVE_NAME}); {_KEYGEN_HINT}")


def _write_new_file(path: Path, data: bytes, mode: int, replace: bool = False) -> None:
    """Write `data` to a temporary file (already at `mode`) and move it into place.

    Without `replace`, a hard link moves it: that fails if `path` appeared in the meantime,
    so a racing writer's key is never overwritten.
    """
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if replace:
            os.replace(temp, path)
        else:
            try:
                os.link(temp, path)
            except FileExistsError:
                raise ConfigError(f"{path}: already exists; move it away first") from None
            except OSError:  # a file system without hard links: check, then rename
                if path.exists():
                    raise ConfigError(f"{path}: already exists; move it away first") from None
                os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)
