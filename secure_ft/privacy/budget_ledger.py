"""The privacy budget ledger: every run that touched a data set, kept per data fingerprint.

A run's ε says what that one release cost. Privacy loss composes across every release made
from the same records, so an organisation keeps a ledger per data set, keyed by the data
fingerprint (`secure_ft.records.data.fingerprint`: the canonical rows and the column mapping), in
an organisation state folder that no run owns:

``<budget_dir>/<fingerprint>/<entry>.json``

One file per run attempt, written whole with `secure_ft.records.atomic_files` (temporary file,
fsync, rename). Runs never write the same file, so two runs finishing at once cannot lose
each other's record and no lock is needed; a reader lists the folder and ignores the
temporary files (names starting with a dot).

An entry is opened before the first step and kept up to date as training proceeds:

* a DP run writes *ahead*: before taking steps it records the steps it may take before its
  next write (``reserved``), so a process killed without warning is counted up to that
  reservation, never less than it actually took;
* when training ends — finished, stopped (Ctrl-C) or crashed — the entry is closed with the
  exact accountant history of the steps taken (``history``) and the status;
* a non-private run records the mechanism ``none``: its ε is unbounded (∞), and so is the
  data set's cumulative ε from then on;
* a resumed run opens a new entry holding only the steps taken after the checkpoint it
  resumed from (the earlier attempt's entry keeps the steps it took, even those after its
  last checkpoint: they ran on the data too).

Who writes entries: central training runs (`secure_ft.training.central_run`, kind ``train``), a
simulated federation's coordinator (`federated.simulation_budget`, one entry holding every
site's history), the privacy audit's throw-away canary run (`audits._canary`, kind ``canary
audit``), measurement scripts that train on data (kind ``bench``), and — in their own state
folders, not the organisation's — deployed sites (kind ``site``).

`budget_composition` composes the entries into the data set's cumulative ε.
The folder is ``privacy.budget_dir`` of the run config, else ``$SECURE_FT_BUDGET_DIR``, else
``privacy-budget`` in the per-user data folder (``$XDG_DATA_HOME/secure-ft``, else
``~/.local/share/secure-ft``), beside the per-user config folder that holds the keys.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from secure_ft.errors import PrivacyError
from secure_ft.records.atomic_files import atomic_write_text, json_text

log = logging.getLogger(__name__)

BUDGET_DIR_ENV = "SECURE_FT_BUDGET_DIR"
ENTRY_FORMAT = 1
OPEN, FINISHED, STOPPED, CRASHED = "running", "finished", "stopped", "crashed"
RELEASED = "released"  # a federated site between rounds: every update that left it is recorded
STATUSES = (OPEN, FINISHED, STOPPED, CRASHED, RELEASED)
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


def default_budget_dir() -> Path:
    """``$SECURE_FT_BUDGET_DIR``, else ``privacy-budget`` in the user's secure-ft data folder."""
    if os.environ.get(BUDGET_DIR_ENV):
        return Path(os.environ[BUDGET_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base).expanduser() / "secure-ft" / "privacy-budget"


def budget_dir_for(config) -> Path:
    """The budget folder a run config names (``privacy.budget_dir``, relative to the config file), else the default."""
    configured = getattr(config.privacy, "budget_dir", None)
    return Path(config.resolve_path(configured)) if configured else default_budget_dir()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _steps(history: list[list[float]]) -> int:
    return sum(int(entry[2]) for entry in history)


def steps_beyond(history: list[list[float]], baseline: list[list[float]]) -> list[list[float]]:
    """`history` less the steps already in `baseline`, setting by setting (what a resumed attempt added)."""
    left: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in baseline:
        left[(float(sigma), float(rate))] = left.get((float(sigma), float(rate)), 0) + int(steps)
    added = []
    for sigma, rate, steps in history:
        key = (float(sigma), float(rate))
        kept = min(int(steps), left.get(key, 0))
        left[key] = left.get(key, 0) - kept
        if int(steps) - kept > 0:
            added.append([float(sigma), float(rate), int(steps) - kept])
    return added


class BudgetLedger:
    """The ledger folder: one sub-folder per data fingerprint, one file per run attempt."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def folder(self, fingerprint: str) -> Path:
        if not _FINGERPRINT.match(str(fingerprint)):
            raise PrivacyError(f"{fingerprint!r} is not a data fingerprint (64 hex digits, as data.json and "
                               "`secure-ft privacy budget --data FILE` show it)")
        return self.root / fingerprint

    def fingerprints(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(path.name for path in self.root.iterdir() if path.is_dir() and _FINGERPRINT.match(path.name))

    def entries(self, fingerprint: str) -> list[dict[str, Any]]:
        """Every entry recorded for `fingerprint`, oldest first; an unreadable one is an error, never skipped."""
        folder = self.folder(fingerprint)
        if not folder.is_dir():
            return []
        entries = []
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue  # a write in progress (atomic_files' temporary name)
            entries.append(read_entry(path))
        return sorted(entries, key=lambda entry: (entry["started_at"], entry["entry"]))

    def write(self, entry: dict[str, Any]) -> Path:
        entry["updated_at"] = _now()
        path = self.folder(entry["fingerprint"]) / f"{entry['entry']}.json"
        return atomic_write_text(path, json_text(entry), mode=0o600)


def entry_problem(entry: Any) -> str | None:
    """What makes `entry` unusable for composition (None when it is usable)."""
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        return f"not a budget entry of format {ENTRY_FORMAT}"
    missing = [key for key in ("entry", "run", "fingerprint", "mechanism", "status", "history", "started_at")
               if key not in entry]
    if missing:
        return f"missing {', '.join(missing)}"
    if entry["mechanism"] == "dp-sgd":
        for key in ("delta", "accountant"):
            if key not in entry:
                return f"a DP entry without {key}"
        try:
            [(float(s), float(q), int(k)) for s, q, k in entry["history"] + (entry.get("reserved") or [])]
        except (TypeError, ValueError):
            return "history is not a list of (noise_multiplier, sample_rate, steps)"
    elif entry["mechanism"] != "none":
        return f"unknown mechanism {entry['mechanism']!r}"
    if entry["status"] not in STATUSES:
        return f"unknown status {entry['status']!r}"
    return None


class RunSpend:
    """One run attempt's entry in the ledger, kept current as training proceeds (see the module docstring)."""

    def __init__(self, ledger: BudgetLedger, entry: dict[str, Any]):
        self.ledger, self.entry = ledger, entry
        self.path = ledger.write(entry)

    @classmethod
    def open(cls, ledger: BudgetLedger, *, fingerprint: str, run: str, run_dir: str | Path | None, kind: str,
             mechanism: str, accountant: str | None = None, delta: float | None = None,
             dataset_size: int | None = None, site: str | None = None, entry_id: str | None = None,
             details: dict[str, Any] | None = None) -> "RunSpend":
        """Open an entry before the run touches the data (status ``running``).

        `details` are further fields kept with the entry (a simulated federation's ``sites``
        and ``composition``, a canary run's ``audit``); they never change what is counted.
        """
        moment = datetime.now(timezone.utc)
        started = moment.isoformat(timespec="microseconds")  # orders runs started within the same second
        entry = {
            "format": ENTRY_FORMAT,
            "entry": entry_id or f"{moment.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:12]}",
            "run": str(run), "run_dir": None if run_dir is None else str(run_dir), "kind": kind, "site": site,
            "fingerprint": fingerprint, "mechanism": mechanism, "accountant": accountant,
            "delta": None if delta is None else float(delta), "dataset_size": dataset_size,
            "history": [], "reserved": [], "status": OPEN, "started_at": started, "updated_at": started,
            "host": socket.gethostname(), "pid": os.getpid(), "resumed_from_step": None, "stop_reason": None,
            **(details or {}),
        }
        return cls(ledger, entry)

    @classmethod
    def reopen_or_open(cls, ledger: BudgetLedger, entry_id: str, **fields: Any) -> "RunSpend":
        """The entry `entry_id` as recorded (a federated site's run, one process per round), else a new one."""
        path = ledger.folder(fields["fingerprint"]) / f"{entry_id}.json"
        if path.is_file():
            return cls(ledger, read_entry(path))
        return cls.open(ledger, entry_id=entry_id, **fields)

    def resumed_from(self, step: int) -> None:
        self.entry["resumed_from_step"] = int(step)
        self.ledger.write(self.entry)

    def reserve(self, taken: list[list[float]], ahead: list[list[float]]) -> None:
        """Record the steps taken so far and, written before they run, the steps that may follow."""
        self.entry["history"] = [list(map(float, e[:2])) + [int(e[2])] for e in taken]
        self.entry["reserved"] = [list(map(float, e[:2])) + [int(e[2])] for e in ahead]
        self.entry["status"] = OPEN
        self.ledger.write(self.entry)

    def close(self, taken: list[list[float]] | None, status: str, reason: str | None = None) -> None:
        """The exact steps taken and how the run ended; the reservation is dropped."""
        if status not in STATUSES or status == OPEN:
            raise ValueError(f"close with a final status, not {status!r}")
        if taken is not None:
            self.entry["history"] = [list(map(float, e[:2])) + [int(e[2])] for e in taken]
        self.entry["reserved"] = []
        self.entry["status"], self.entry["stop_reason"] = status, reason
        self.ledger.write(self.entry)
        log.info("privacy budget: recorded %s run %s (%d steps) in %s", status, self.entry["run"],
                 _steps(self.entry["history"]), self.path)


def read_entry(path: Path) -> dict[str, Any]:
    """One recorded entry, checked; an unreadable or malformed one is an error, never skipped or restarted
    (either would under-state the data set's ε)."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise PrivacyError(f"{path}: unreadable privacy budget entry ({error}); restore it from a backup. "
                           "Leaving it out would under-state the data set's cumulative ε") from None
    problem = entry_problem(entry)
    if problem:
        raise PrivacyError(f"{path}: {problem}; restore the entry from a backup")
    return entry


def counted_history(entry: dict[str, Any]) -> list[list[float]]:
    """The (σ, q, steps) an entry counts: its steps taken, plus what it reserved while still open."""
    return [list(e) for e in entry["history"]] + [list(e) for e in (entry.get("reserved") or [])]


def status_of(entry: dict[str, Any]) -> str:
    """An entry's status in words; an open entry whose process is gone ended without closing it."""
    if entry["status"] != OPEN:
        return entry["status"]
    if entry.get("host") == socket.gethostname() and isinstance(entry.get("pid"), int):
        try:
            os.kill(entry["pid"], 0)
        except ProcessLookupError:
            return "ended without closing (counted up to its reservation)"
        except PermissionError:
            pass
    return "running (counted up to its reservation)"
