"""Model identity: one SHA-256 over every file of a model folder.

A model is what gets loaded to serve it, and that is more than the weights: the tokenizer's
``vocab.txt`` and ``tokenizer.json``, ``config.json`` (which picks the pooling), a
``front_end/`` folder of spelling dictionaries. Changing any of them changes the model's
behaviour, so the identity covers all of them.

The identity is built in two steps so that anyone can recompute it without secure-ft:

1. the *manifest*: one entry ``{"path", "sha256", "size"}`` per regular file, found
   recursively, with ``path`` relative to the folder in POSIX form, sorted by ``path``;
2. the *digest*: SHA-256 of the manifest written as canonical JSON (UTF-8, keys sorted, no
   spaces) inside ``{"files": [...], "format": "secure-ft/model-manifest/v1"}``.

Only ``model_hash.json`` at the top of the folder is left out: it records this digest and
cannot contain itself. Symbolic links and special files are refused rather than followed,
because a link can make the folder's content depend on files outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from secure_ft.errors import BundleError

#: the file (at the folder's top) that records the digest; `secure_ft.text.models.HASH_FILE`
HASH_FILE = "model_hash.json"
#: names the layout of the hashed manifest, so a future change cannot collide with this one
MANIFEST_FORMAT = "secure-ft/model-manifest/v1"
#: what `model_hash.json` should say it holds
DIGEST_ALGORITHM = "sha256(secure-ft/model-manifest/v1)"

_BLOCK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of one file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_manifest(model_dir: str | os.PathLike[str]) -> list[dict]:
    """Every file of a model folder with its size and SHA-256, sorted by path.

    Parameters
    ----------
    model_dir
        A model folder (``save_pretrained`` layout plus anything else it holds).

    Returns
    -------
    list of dict
        ``{"path": "front_end/words.txt", "sha256": "<64 hex>", "size": 123}`` per file,
        sorted by ``path``; ``model_hash.json`` at the top is left out.

    Raises
    ------
    BundleError
        The folder is missing or empty, or holds a symbolic link, a special file (FIFO,
        socket, device) or a name that is not valid UTF-8; the message names the entry.
    """
    root = Path(model_dir)
    try:
        root_mode = os.stat(root).st_mode
    except OSError as error:
        raise BundleError(f"{root}: model folder cannot be read ({error.strerror})") from None
    if not stat.S_ISDIR(root_mode):
        raise BundleError(f"{root}: not a folder; the model identity is computed over a model folder")
    entries = [_entry(root, relative) for relative in _regular_files(root)]
    entries = [entry for entry in entries if entry["path"] != HASH_FILE]
    if not entries:
        raise BundleError(f"{root}: the model folder holds no files")
    return sorted(entries, key=lambda entry: entry["path"])


def model_digest(model_dir: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of the folder's manifest: the model's identity.

    Any change to any file's bytes, an added, removed or renamed file changes the digest;
    the order in which the file system lists files does not.

    Raises
    ------
    BundleError
        As `model_manifest`.
    """
    return manifest_digest(model_manifest(model_dir))


def manifest_digest(manifest: list[dict]) -> str:
    """SHA-256 (hex) of a manifest as `model_manifest` returns it (sorted by path)."""
    document = {"format": MANIFEST_FORMAT, "files": manifest}
    # canonical JSON: escaping makes every path unambiguous, even one holding a newline
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _regular_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under `root`; refuses links and special files."""
    found = []
    # os.walk never follows links here; links are seen (as files or dirs) and refused below
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=_raise_walk_error):
        for name in sorted(dirs) + sorted(files):
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            _check_name(root, relative)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(
                    f"{root}: {relative} is a symbolic link; a model folder must hold real files "
                    "(replace the link by a copy of its target, e.g. `cp -rL`)")
            if stat.S_ISREG(mode):
                found.append(relative)
            elif not stat.S_ISDIR(mode):
                raise BundleError(f"{root}: {relative} is not a regular file (FIFO, socket or device); remove it")
    return found


def _check_name(root: Path, relative: str) -> None:
    try:
        relative.encode("utf-8")
    except UnicodeEncodeError:
        raise BundleError(f"{root}: {relative!r} is not a valid UTF-8 file name; rename it") from None
    if relative.startswith("/") or ".." in relative.split("/"):
        raise BundleError(f"{root}: {relative} escapes the model folder")


def open_regular_file(root: Path, relative: str, activity: str):
    """`root`/`relative` opened for reading without following links, refused unless a regular file.

    Files may be swapped between a folder walk and the open; `activity` ("hashing", "the bundle
    was read") names what was under way, for the error.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        handle = os.open(root / relative, flags)
    except OSError as error:
        raise BundleError(f"{root}: {relative} cannot be opened ({error.strerror}); "
                          f"it is a link or was removed while {activity}") from None
    stream = os.fdopen(handle, "rb", buffering=0)
    if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
        stream.close()
        raise BundleError(f"{root}: {relative} is not a regular file; remove it")
    return stream


def _entry(root: Path, relative: str) -> dict:
    """Stream-hash one file, opened without following links (it may have changed since the walk)."""
    with open_regular_file(root, relative, "hashing") as stream:
        digest, size = hashlib.sha256(), 0
        while block := stream.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return {"path": relative, "sha256": digest.hexdigest(), "size": size}


def _raise_walk_error(error: OSError) -> None:
    raise BundleError(f"{error.filename}: cannot be listed ({error.strerror})")
