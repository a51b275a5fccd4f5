"""OpenSSF model-signing: sign and verify a model folder so that anyone can check it without us.

A folder signed here verifies with the ``model_signing`` command of the OpenSSF
`model-signing <https://github.com/sigstore/model-transparency>`_ library alone::

    model_signing verify key MODEL_DIR --signature MODEL_DIR.sig --public_key gate.pub

Signing uses an ECDSA P-256 key (`secure_ft.release.keys`) and works offline; the signature is a
Sigstore bundle (JSON) holding a DSSE envelope over an in-toto statement that lists the
SHA-256 of every file in the folder.

Where the signature lives
-------------------------
Best *beside* the folder (``bundle/model/`` and ``bundle/model.sig``). Inside the folder
works too: the signature file is then left out of the hash. The ``model_signing`` command
does that itself; the library does not, so `sign_folder` adds it to the ignored paths.

Git files
---------
Like the library's command, git files (``.git/``, ``.gitattributes``, ``.github/``,
``.gitignore``) are left out by default (``ignore_git_paths=True``): packaged models ship a
``.gitattributes``, and the plain ``model_signing verify key`` command, which ignores them
unless told ``--no-ignore-git-paths``, must pass our signatures. They do not change what the
model computes, and the secure-ft attestation (`secure_ft.records.model_identity`) still covers them.
With ``ignore_git_paths=False`` they are signed too, and the command then needs
``--no-ignore-git-paths`` when they are present (without it, it fails: never wrongly passes).
Export bundles are signed that way (`secure_ft.release.export`): a ``.git/`` or ``.gitignore`` added
to a bundle must be refused, and the library's command only sees such a file when given
``--no-ignore-git-paths``, which the printed verification command includes.

Ignored paths are checked
-------------------------
The library's verifier also ignores whatever paths the *signature* says were ignored at
signing. `verify_folder` refuses a signature whose ignored paths are not exactly the ones the
caller expects, so a signer cannot exempt a file (the weights, say) from verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from secure_ft.errors import BundleError
from secure_ft.release.keys import PASSPHRASE_ENV, load_private_key, load_public_key

#: what model-signing 1.1.1 leaves out when told to ignore git paths (recorded as such in signatures)
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


def sign_folder(folder: str | os.PathLike[str], private_key_path: str | os.PathLike[str],
                signature_path: str | os.PathLike[str], ignore_paths: tuple[str, ...] | list[str] = (),
                *, ignore_git_paths: bool = True) -> Path:
    """Sign every file of `folder` with an OpenSSF model-signing signature.

    Parameters
    ----------
    folder
        The model folder. Symbolic links in it are refused.
    private_key_path
        A P-256 private key in PEM (passphrase from ``$SECURE_FT_SIGNING_KEY_PASSPHRASE``).
    signature_path
        Where the signature goes, written atomically; inside `folder` it is left out of the hash.
    ignore_paths
        Paths relative to `folder` (files or folders) that are not signed.
    ignore_git_paths
        Leave git files unsigned, as the library's command does by default (see above).

    Returns
    -------
    Path
        `signature_path`.

    Raises
    ------
    ConfigError
        The key is missing, unreadable or not a P-256 key.
    BundleError
        The folder is missing, holds a symbolic link, or an ignored path leaves it.
    """
    import model_signing  # imported here: it pulls in sigstore, and only signing needs it

    folder, signature_path = Path(folder), Path(signature_path)
    _check_folder(folder)
    load_private_key(private_key_path)  # the clear errors (Ed25519, mode, passphrase) come from here
    ignored = _ignored_paths(folder, signature_path, ignore_paths, ignore_git_paths)
    passphrase = os.environ.get(PASSPHRASE_ENV)
    # model-signing 1.1.1 hands `password` to cryptography, which needs bytes (its CLI passes str and fails)
    config = model_signing.signing.Config().use_elliptic_key_signer(
        private_key=Path(private_key_path), password=passphrase.encode() if passphrase else None)
    config.set_hashing_config(_hashing_config(ignored))
    signature_path.parent.mkdir(parents=True, exist_ok=True)
    # write a temporary file, then rename; never inside the folder, where it would be hashed
    scratch_parent = folder.resolve().parent if _relative_to(folder, signature_path) else signature_path.parent
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix=".secure-ft-sign-") as scratch:
        temp = Path(scratch, signature_path.name)
        try:
            config.sign(folder, temp)
        except Exception as error:  # the library raises ValueError, OSError, …: name the folder
            raise BundleError(f"{folder}: OpenSSF signing failed: {error}") from None
        os.replace(temp, signature_path)
    return signature_path


def verify_folder(folder: str | os.PathLike[str], public_key_path: str | os.PathLike[str],
                  signature_path: str | os.PathLike[str], ignore_paths: tuple[str, ...] | list[str] = (),
                  *, ignore_git_paths: bool = True) -> list[str]:
    """Check `folder` against its OpenSSF model-signing signature and a public key you trust.

    Parameters
    ----------
    folder
        The model folder as it is now.
    public_key_path
        The signer's P-256 public key (PEM), from the trust list or the user, never from the bundle.
    signature_path
        The signature `sign_folder` (or ``model_signing sign key``) wrote.
    ignore_paths
        The paths that were left unsigned, relative to `folder`; the signature must have
        ignored exactly these (plus itself, when it lies inside the folder).
    ignore_git_paths
        Whether the signature left git files out (the default, as `sign_folder`'s).

    Returns
    -------
    list of str
        The signed files' paths, relative to `folder`.

    Raises
    ------
    ConfigError
        The public key is missing, unreadable or not P-256.
    BundleError
        The signature is missing, malformed, made with another key or does not verify; a file
        was changed, added or removed (named); or the signature ignores unexpected paths.
    """
    import model_signing

    folder, signature_path = Path(folder), Path(signature_path)
    _check_folder(folder)
    load_public_key(public_key_path)
    expected = _ignored_paths(folder, signature_path, ignore_paths, ignore_git_paths)
    try:
        signature = signature_path.read_bytes()
    except OSError as error:
        raise BundleError(f"{signature_path}: OpenSSF signature cannot be read ({error.strerror})") from None
    predicate = _signed_predicate(signature, signature_path)  # its shape only; trusted once verified
    with tempfile.TemporaryDirectory(prefix="secure-ft-verify-") as scratch:
        # verify a private copy: the bytes checked are the bytes parsed below, whatever happens to the file
        copy = Path(scratch, "model.sig")
        copy.write_bytes(signature)
        config = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key_path))
        config.set_hashing_config(_hashing_config(expected))
        try:
            config.verify(folder, copy)
        except Exception as error:  # ValueError (mismatch, key), InvalidSignature, JSON and protobuf errors
            raise BundleError(_verification_message(folder, signature_path, error, predicate, expected)) from None
    signed_ignored = {PurePosixPath(path).as_posix() for path in predicate["serialization"].get("ignore_paths", [])}
    if signed_ignored != set(expected):
        raise BundleError(
            f"{signature_path}: the signature leaves {sorted(signed_ignored) or 'nothing'} unsigned, but "
            f"{sorted(expected) or 'nothing'} was expected; a file left out of a signature is not protected by it, "
            "so re-sign the folder with secure-ft")
    return sorted(resource["name"] for resource in predicate["resources"])


def _hashing_config(ignored: list[str]):
    import model_signing

    # paths are relative to the model folder (the library joins them to it); git paths, when
    # ignored, are already in `ignored`, so the signature records exactly that list
    return model_signing.hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=False)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise BundleError(f"{folder}: model folder not found")


def _ignored_paths(folder: Path, signature_path: Path, ignore_paths, ignore_git_paths: bool) -> list[str]:
    """Ignored paths relative to `folder`, in POSIX form, with the signature added if inside it."""
    ignored = set(GIT_PATHS) if ignore_git_paths else set()
    for path in ignore_paths:
        relative = PurePosixPath(Path(path).as_posix())
        if relative.is_absolute() or ".." in relative.parts or relative == PurePosixPath("."):
            raise BundleError(f"{folder}: ignored path {path!r} must be relative to the model folder and inside it")
        ignored.add(relative.as_posix())
    ignored.update(_relative_to(folder, signature_path))
    return sorted(ignored)


def _relative_to(folder: Path, signature_path: Path) -> list[str]:
    """``[the signature's path relative to folder]`` if it lies inside `folder`, else ``[]``."""
    try:
        return [signature_path.resolve().relative_to(folder.resolve()).as_posix()]
    except ValueError:
        return []


def _signed_predicate(signature: bytes, signature_path: Path) -> dict:
    """The model-signing predicate (resources, serialization) from an already verified signature."""
    try:
        bundle = json.loads(signature)
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"], validate=True))
        predicate = statement["predicate"]
        if not isinstance(predicate["resources"], list) or not isinstance(predicate["serialization"], dict):
            raise TypeError("resources or serialization has the wrong type")
        return predicate
    except KeyError as error:
        raise BundleError(f"{signature_path}: not a model-signing signature of a folder (no {error})") from None
    except (ValueError, TypeError, binascii.Error) as error:
        raise BundleError(f"{signature_path}: not a model-signing signature of a folder ({error})") from None


def _verification_message(folder: Path, signature_path: Path, error: Exception, predicate: dict,
                          ignored: list[str]) -> str:
    text = str(error) or type(error).__name__
    if text.startswith("Signature mismatch"):
        # the library got this far only with a valid signature, so the predicate can be trusted;
        # its own message prints digests as Python bytes, so name the files ourselves
        return (f"{folder}: does not match its OpenSSF signature {signature_path} "
                f"({_describe_changes(folder, predicate, ignored) or text}); the folder was changed after "
                "signing: restore it from the signed bundle")
    if text.startswith("Key mismatch") or type(error).__name__ == "InvalidSignature":
        return (f"{signature_path}: the OpenSSF signature was not made by this public key, or was altered "
                f"({text.strip()}); verify with the signer's public key")
    if "symlink" in text:
        return f"{folder}: {text} A signed model folder must hold real files, not links."
    return f"{signature_path}: OpenSSF verification of {folder} failed: {text}"


def _describe_changes(folder: Path, predicate: dict, ignored: list[str]) -> str:
    """``changed: a; missing: b; extra: c`` between the signed resources and the folder now."""
    signed = {item["name"]: item["digest"] for item in predicate["resources"] if item.get("algorithm") == "sha256"}
    actual = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and not any(relative == i or relative.startswith(i + "/") for i in ignored):
            with open(path, "rb") as stream:
                actual[relative] = hashlib.file_digest(stream, "sha256").hexdigest()
    parts = [f"changed: {n}" for n in sorted(signed.keys() & actual.keys()) if signed[n] != actual[n]]
    parts += [f"missing: {n}" for n in sorted(signed.keys() - actual.keys())]
    parts += [f"extra: {n}" for n in sorted(actual.keys() - signed.keys())]
    return "; ".join(parts)
