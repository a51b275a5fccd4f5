"""The accountant history: everything needed to recompute a run's ε, persisted with every checkpoint.

DP-SGD's guarantee follows from a few numbers only: the sampling rate q (each example joins a
step's batch independently with probability q), the noise multiplier σ, the number of steps,
the clipping norm C (which scales the noise, σ·C, but does not enter ε) and δ. Opacus'
accountants keep the first three as a *history* of ``(σ, q, steps)`` runs. The ledger
stores that history together with δ, C, the accountant's name, the dataset size and the
data fingerprint, so that

* a resumed run continues exactly the same accounting (the history is restored, not
  re-estimated), and
* an auditor can recompute ε from the ledger with a fresh Opacus accountant
  (``secure-ft privacy RUN_DIR``) without trusting the number the run wrote.

ε is always computed by Opacus' own accountants, picked by name from
`secure_ft.privacy.accountants`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secure_ft.errors import PrivacyError
from secure_ft.privacy.accountants import History, epsilon_from_history, extend_history, normalise_history
from secure_ft.records.atomic_files import atomic_write_json
from secure_ft.records.run_directory import ACCOUNTANT_HISTORY_FILE

HISTORY_FORMAT = 1


@dataclass
class AccountantHistory:
    """The accounting state of one DP run (see the module docstring)."""

    accountant: str
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    dataset_size: int
    fingerprint: str
    target_epsilon: float | None = None
    history: list[list[float]] = field(default_factory=list)  # [[σ, q, steps], ...] as Opacus keeps it
    epsilon_history: list[list[float]] = field(default_factory=list)  # [[step, ε], ...]
    events: list[dict[str, Any]] = field(default_factory=list)  # resumes, early stop
    opacus_version: str = ""
    format: int = HISTORY_FORMAT

    @property
    def steps(self) -> int:
        return sum(int(entry[2]) for entry in self.history)

    def history_tuple(self) -> History:
        return normalise_history(self.history)

    def epsilon(self, extra_steps: int = 0) -> float:
        """ε spent so far, or after `extra_steps` more steps at this run's (σ, q)."""
        history = extend_history(self.history_tuple(), self.noise_multiplier, self.sample_rate, extra_steps)
        return epsilon_from_history(self.accountant, history, self.delta)

    def record_epsilon(self, step: int) -> float:
        epsilon = self.epsilon()
        entry = [step, finite_or_none(epsilon)]
        if self.epsilon_history and self.epsilon_history[-1][0] == step:
            self.epsilon_history[-1] = entry
        else:
            self.epsilon_history.append(entry)
        return epsilon

    def accountant_state(self) -> dict[str, Any]:
        """The accountant's state_dict, as Opacus writes it (history + mechanism)."""
        return {"history": [tuple(entry) for entry in self.history_tuple()], "mechanism": self.accountant}

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["history"] = [list(entry) for entry in self.history_tuple()]
        payload["steps"] = self.steps
        return payload

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "privacy ledger") -> "AccountantHistory":
        if not isinstance(raw, dict):
            raise PrivacyError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != HISTORY_FORMAT:
            raise PrivacyError(f"{where}: ledger format {raw.get('format')!r} is not supported (expected {HISTORY_FORMAT})")
        names = {f for f in cls.__dataclass_fields__}
        missing = sorted(names - set(raw) - {"target_epsilon", "epsilon_history", "events", "opacus_version"})
        if missing:
            raise PrivacyError(f"{where}: missing field(s) {', '.join(missing)}; the ledger is incomplete")
        ledger = cls(**{key: value for key, value in raw.items() if key in names})
        ledger.history = [list(entry) for entry in normalise_history(ledger.history)]
        if "steps" in raw and int(raw["steps"]) != ledger.steps:
            raise PrivacyError(f"{where}: 'steps' is {raw['steps']} but the accountant history sums to {ledger.steps}")
        return ledger

    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / ACCOUNTANT_HISTORY_FILE
        atomic_write_json(path, self.to_dict())
        return path


def finite_or_none(value: float) -> float | None:
    """ε for JSON: a number, or null when no finite bound exists (strict JSON has no Infinity)."""
    return value if math.isfinite(value) else None


def load_accountant_history(run_dir: Path) -> AccountantHistory:
    path = Path(run_dir) / ACCOUNTANT_HISTORY_FILE
    if not path.is_file():
        raise PrivacyError(f"{path}: no privacy ledger; this run was not trained with privacy.mode: dp "
                           "(or the file was removed)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrivacyError(f"{path}: not valid JSON ({error}); the ledger is corrupt") from None
    return AccountantHistory.from_dict(raw, str(path))
