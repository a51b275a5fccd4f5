"""The run ledger: an append-only, hash-chained log of what happened in one run directory.

Every step of a run (config loaded, data fingerprinted, epoch done with its ε, audit
finished, verdict, export) appends one JSON line to ``RUN_DIR/ledger.jsonl``::

    {"seq": 3, "timestamp": "2025-01-01T12:00:00.123456+00:00", "event": "epoch_done",
     "data": {...}, "prev_sha256": "<SHA-256 of line 2's bytes>", "line_sha256": "<...>"}

``prev_sha256`` chains each line to the bytes of the line before it (``"0" * 64`` for the
first), so a dropped, inserted or reordered line breaks the chain at that point.
``line_sha256`` is the SHA-256 of the entry's canonical JSON without that field, so an edit
to any line (the last one included) is caught even though no later line points at it.

A hash chain alone cannot show that lines were cut off the *end*: a shorter ledger is still
a valid chain. The export bundle therefore records the ledger's line count and the hash of
its last line in the signed manifest; :func:`verify_ledger` checks against such an anchor
when given one.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from secure_ft.errors import BundleError

GENESIS_SHA256 = "0" * 64
_FIELDS = ("seq", "timestamp", "event", "data", "prev_sha256", "line_sha256")

try:  # serialise appends from several processes (e.g. federated sites) on POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _json_default(value: Any) -> Any:
    """JSON for the values runs log: paths, numpy/torch scalars, datetimes, sets."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    raise TypeError(f"cannot record a {type(value).__name__} in the ledger; pass plain JSON values")


def _canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _line_sha256(entry: dict[str, Any]) -> str:
    body = {key: value for key, value in entry.items() if key != "line_sha256"}
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def line_digest(line: bytes) -> str:
    """SHA-256 of one ledger line's bytes, without its trailing newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


# the run directory lists this file (`secure_ft.records.run_directory`); the ledger names it
RUN_LEDGER_FILE = "ledger.jsonl"


class Ledger:
    """Append-only, hash-chained event log of one run directory.

    Parameters
    ----------
    run_dir
        The run directory; the ledger is ``run_dir/ledger.jsonl``. Opening an existing
        ledger continues its chain (e.g. after a resumed run).
    """

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RUN_LEDGER_FILE

    def append(self, event: str, **data: Any) -> dict[str, Any]:
        """Append one event and return the entry as written.

        The existing chain is verified first: a ledger that no longer verifies is never
        extended, because a new line would appear to vouch for the tampered ones.
        """
        if not event or not isinstance(event, str):
            raise ValueError("a ledger event needs a non-empty name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as stream:
            if fcntl is not None:
                fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
            try:
                stream.seek(0)
                existing = stream.read()
                count, last_digest = _verify_bytes(existing, self.path)
                entry: dict[str, Any] = {
                    "seq": count + 1,
                    "timestamp": datetime.now(timezone.utc).isoformat(),
                    "event": event,
                    "data": json.loads(_canonical(data)),  # fail here, not half-way through a write
                    "prev_sha256": last_digest,
                }
                entry["line_sha256"] = _line_sha256(entry)
                stream.seek(0, os.SEEK_END)
                stream.write((_canonical(entry) + "\n").encode("utf-8"))
                stream.flush()
                os.fsync(stream.fileno())
            finally:
                if fcntl is not None:
                    fcntl.flock(stream.fileno(), fcntl.LOCK_UN)
        return entry

    def events(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (without verifying; see :func:`verify_ledger`)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_bytes().splitlines() if line.strip()]

    def head(self) -> tuple[int, str]:
        """(number of lines, SHA-256 of the last line) of a verified ledger: an anchor for later checks."""
        if not self.path.is_file():
            return 0, GENESIS_SHA256
        return _verify_bytes(self.path.read_bytes(), self.path)


def verify_ledger(run_dir: str | os.PathLike[str], expected_lines: int | None = None,
                  expected_head_sha256: str | None = None) -> int:
    """Check the whole chain of ``run_dir/ledger.jsonl``; return its number of lines.

    Parameters
    ----------
    run_dir
        Run directory holding ``ledger.jsonl``.
    expected_lines, expected_head_sha256
        Optional anchor (e.g. from a bundle manifest): the ledger must hold at least that many
        lines and its line number ``expected_lines`` must have that hash. This catches lines
        cut off the end, which the chain alone cannot.

    Raises
    ------
    BundleError
        Naming the first line that is edited, missing, inserted or out of order.
    """
    path = Path(run_dir) / RUN_LEDGER_FILE
    if not path.is_file():
        raise BundleError(f"{path}: no run ledger found; is {run_dir} a secure-ft run directory?")
    data = path.read_bytes()
    count, _ = _verify_bytes(data, path)
    if expected_lines is not None:
        if count < expected_lines:
            raise BundleError(
                f"{path}: holds {count} lines but {expected_lines} were recorded when it was anchored; "
                f"lines {count + 1}..{expected_lines} were removed"
            )
        if expected_head_sha256 is not None:
            anchored = data.splitlines()[expected_lines - 1] if expected_lines else b""
            digest = line_digest(anchored) if expected_lines else GENESIS_SHA256
            if digest != expected_head_sha256:
                raise BundleError(f"{path}: line {expected_lines} differs from the anchored ledger head")
    return count


def _verify_bytes(data: bytes, path: Path) -> tuple[int, str]:
    """(line count, digest of the last line) of a valid chain, else BundleError naming the line."""
    if data and not data.endswith(b"\n"):
        raise BundleError(
            f"{path}: the last line is incomplete (no newline); the ledger was cut off mid-write or edited"
        )
    previous = GENESIS_SHA256
    lines = data.split(b"\n")[:-1] if data else []
    for number, line in enumerate(lines, start=1):
        where = f"{path}: line {number}"
        try:
            entry = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BundleError(f"{where} is not a JSON ledger entry (edited or corrupt)") from None
        if not isinstance(entry, dict) or set(entry) != set(_FIELDS):
            raise BundleError(f"{where} does not have the ledger fields {', '.join(_FIELDS)} (edited or corrupt)")
        if entry["line_sha256"] != _line_sha256(entry) or _canonical(entry).encode("utf-8") != line:
            raise BundleError(f"{where} ({entry.get('event')!r}) was edited: its content no longer matches its hash")
        if entry["seq"] != number:
            raise BundleError(
                f"{where} has sequence number {entry['seq']}, expected {number}: a line was dropped, inserted or moved"
            )
        if entry["prev_sha256"] != previous:
            raise BundleError(
                f"{where} ({entry['event']!r}) does not chain to line {number - 1}: "
                "a line before it was edited, dropped, inserted or moved"
            )
        previous = line_digest(line)
    return len(lines), previous
