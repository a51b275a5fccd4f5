"""Training checkpoints: written atomically, verified on load.

A checkpoint is one `torch.save` file plus a `.sha256` sidecar. It is written to a temporary
file and renamed, so a killed run leaves either the previous checkpoint or the new one,
never half of one. Loading checks the digest and uses `weights_only=True`, so a tampered or
truncated file is a :class:`~secure_ft.errors.CheckpointError`, never code execution.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from secure_ft.errors import CheckpointError
from secure_ft.records.atomic_files import atomic_write_bytes

LAST = "last.pt"


class CheckpointStore:
    """The checkpoints of one run, in `<run_dir>/checkpoints/`."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    @property
    def last_path(self) -> Path:
        return self.folder / LAST

    def exists(self) -> bool:
        return self.last_path.is_file()

    def save(self, state: dict[str, Any]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest()
        atomic_write_bytes(self.last_path, payload)
        atomic_write_bytes(self.last_path.with_suffix(".pt.sha256"), f"{digest}  {LAST}\n".encode())
        return self.last_path

    def load(self) -> dict[str, Any]:
        path = self.last_path
        if not path.is_file():
            raise CheckpointError(f"{path}: no checkpoint to resume from; start the run without --resume")
        sidecar = path.with_suffix(".pt.sha256")
        payload = path.read_bytes()
        if not sidecar.is_file():
            raise CheckpointError(f"{sidecar}: checksum file missing; the checkpoint cannot be trusted, start a new run")
        expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        if hashlib.sha256(payload).hexdigest() != expected:
            raise CheckpointError(
                f"{path}: checkpoint is corrupt or was modified (SHA-256 does not match {sidecar.name}); "
                "delete the checkpoints folder and start a new run"
            )
        try:
            return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{path}: checkpoint cannot be read ({error}); start a new run") from None
