"""A bundle read once: every file's bytes in memory, so what is checked is what is used.

An attacker who can write to a bundle folder can swap a file between the moment it is
verified and the moment it is loaded, or change a memory-mapped file under a running server.
Both are closed by reading every file of the bundle exactly once into a
:class:`BundleSnapshot`, verifying those bytes (`secure_ft.release.export.verify_snapshot`) and
building everything from the snapshot; nothing under the bundle folder is opened again.

Code that needs files on disk (the model-signing library, tokenizers) gets a *private copy*
of the snapshot (:meth:`BundleSnapshot.private_copy`): a fresh folder of mode 0700 under the
system temporary folder, owned by this process's user, removed when the block ends.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from secure_ft.errors import BundleError
from secure_ft.records.model_identity import open_regular_file


@dataclass(frozen=True)
class BundleSnapshot:
    """The bytes of every regular file of a bundle folder, by POSIX path relative to it.

    Attributes
    ----------
    root
        The folder the bytes were read from; used in messages only, never read again.
    files
        ``{"model/model.safetensors": b"...", ".gitignore": b"...", ...}``: every file, dot-files included.
    """

    root: Path
    files: Mapping[str, bytes] = field(repr=False)

    def read(self, relative: str) -> bytes:
        """One file's bytes (BundleError naming the bundle path when it is not in the snapshot)."""
        try:
            return self.files[relative]
        except KeyError:
            raise BundleError(f"{self.root / relative}: missing; this is not a complete secure-ft bundle") from None

    def release(self, relative: str) -> None:
        """Drop one file's bytes once they have been used (the weights: their tensors hold the copy now).

        Later reads of it raise BundleError; the snapshot's other files stay.
        """
        if isinstance(self.files, dict):
            self.files.pop(relative, None)

    def under(self, folder: str) -> dict[str, bytes]:
        """The files inside `folder` (e.g. ``"model"``), with paths relative to it."""
        prefix = folder.rstrip("/") + "/"
        return {name[len(prefix):]: data for name, data in self.files.items() if name.startswith(prefix)}

    @contextmanager
    def private_copy(self, folder: str | None = None, exclude: tuple[str, ...] = ()) -> Iterator[Path]:
        """A private folder (mode 0700) holding the snapshot's files, or those under `folder`; removed after.

        Parameters
        ----------
        folder
            Copy only the files under this folder (paths then relative to it); None: all.
        exclude
            Paths (relative to what is copied) left out, e.g. weights that are loaded from bytes.
        """
        files = self.files if folder is None else self.under(folder)
        scratch = Path(tempfile.mkdtemp(prefix="secure-ft-snapshot-"))  # mkdtemp: mode 0700, this user only
        try:
            for relative, data in files.items():
                if relative not in exclude:
                    _write_private(scratch, relative, data)
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def describe_path(self, text: str, private: Path) -> str:
        """`text` with a private copy's path replaced by the bundle's, so messages name the real file."""
        return text.replace(str(private), str(self.root))


def read_bundle_snapshot(bundle_dir: str | os.PathLike[str]) -> BundleSnapshot:
    """Read every file under `bundle_dir` once; refuse links and special files.

    Raises
    ------
    BundleError
        The folder is missing or unreadable, or holds a symbolic link, a FIFO, socket or
        device, or a name that is not UTF-8 (each message names the entry).
    """
    root = Path(bundle_dir)
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            raise BundleError(f"{root}: not a folder; a bundle is a folder")
    except FileNotFoundError:
        raise BundleError(f"{root}: bundle folder not found") from None
    except OSError as error:
        raise BundleError(f"{root}: bundle folder cannot be read ({error.strerror})") from None
    files: dict[str, bytes] = {}
    # os.walk lists dot-files and .git* like any other name; links are seen and refused, never followed
    for folder, dirs, names in os.walk(root, followlinks=False, onerror=_raise_walk_error):
        for name in sorted(dirs) + sorted(names):
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            try:
                relative.encode("utf-8")
            except UnicodeEncodeError:
                raise BundleError(f"{root}: {relative!r} is not a valid UTF-8 file name; a bundle holds none") from None
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise BundleError(f"{root}: {relative} is a symbolic link; a signed bundle holds real files only")
            if stat.S_ISREG(mode):
                files[relative] = _read_regular(root, relative)
            elif not stat.S_ISDIR(mode):
                raise BundleError(f"{root}: {relative} is not a regular file (FIFO, socket or device); remove it")
    return BundleSnapshot(root=root, files=dict(sorted(files.items())))


def _read_regular(root: Path, relative: str) -> bytes:
    """One file's bytes, opened without following links (it may have been swapped since the walk)."""
    with open_regular_file(root, relative, "the bundle was read") as stream:
        return stream.read()


def _write_private(scratch: Path, relative: str, data: bytes) -> None:
    parts = PurePosixPath(relative).parts
    if not parts or ".." in parts or PurePosixPath(relative).is_absolute():
        raise BundleError(f"{relative!r}: not a path inside the bundle")
    target = scratch.joinpath(*parts)
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(handle, "wb") as stream:
        stream.write(data)


def _raise_walk_error(error: OSError) -> None:
    raise BundleError(f"{error.filename}: cannot be listed ({error.strerror})")
