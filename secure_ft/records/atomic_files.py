"""Atomic, durable file writes: a reader sees the old file or the new one, never half of one.

Every file secure-ft writes that someone later trusts (configs, JSON records, checkpoints,
keys, reports) goes through here: the bytes land in a temporary file beside the target, are
flushed to disk (fsync), renamed over the target, and the folder entry is synced too, so a
crash or a full disk never leaves a truncated file under the real name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes, *, mode: int | None = None) -> Path:
    """Write `payload` to `path` atomically and durably; `mode` sets the permission bits first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(handle, mode)  # before any byte is written: a key is never readable by others
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, mode: int | None = None) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def json_text(payload: Any) -> str:
    """The JSON form every secure-ft record uses: indented, one trailing newline."""
    return json.dumps(payload, indent=2, default=str) + "\n"


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """`payload` as indented JSON (non-JSON values as strings), written atomically."""
    return atomic_write_text(path, json_text(payload))


def atomic_write_folder(target: str | os.PathLike[str], files: dict[str, bytes], *, mode: int = 0o755) -> Path:
    """Replace the folder `target` with one holding exactly `files` (name → bytes), atomically.

    The files are written into a fresh folder beside `target`, which is then swapped into
    place; a reader sees the old folder or the new one, never a mix.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        temp.chmod(mode)  # mkdtemp makes it private; what is written here is not secret
        for name, data in files.items():
            (temp / name).write_bytes(data)
        sync_tree(temp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old.{os.getpid()}"
            os.replace(target, old)
        os.replace(temp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    sync_folder(target.parent)
    return target


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a folder so that renames inside it survive a crash (a no-op where unsupported)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def sync_tree(folder: str | os.PathLike[str]) -> None:
    """fsync every file and folder under `folder` (before it is renamed into place)."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as stream:
                os.fsync(stream.fileno())
        sync_folder(root)
