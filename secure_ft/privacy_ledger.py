"""The privacy ledger: everything needed to recompute a run's ε, persisted with every checkpoint.

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

ε is always computed by Opacus' own accountants (``prv`` by default, an upper bound with
error ``eps_error = 0.01``; ``rdp``; ``gdp``, a CLT approximation that can *under*-state ε).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from secure_ft.errors import PrivacyError

LEDGER_FILE = "privacy_ledger.json"
LEDGER_FORMAT = 1
ACCOUNTANTS = ("prv", "rdp", "gdp")
PRV_MAX_DOMAIN = 5e6  # grid points; beyond this σ is so small that ε is meaningless anyway

History = tuple[tuple[float, float, int], ...]


def normalise_history(history: Any) -> History:
    """An accountant history as a tuple of ``(noise_multiplier, sample_rate, steps)`` tuples."""
    try:
        return tuple((float(sigma), float(rate), int(steps)) for sigma, rate, steps in history)
    except (TypeError, ValueError):
        raise PrivacyError(f"accountant history {history!r} is not a list of (noise_multiplier, sample_rate, steps)") from None


def _new_accountant(name: str):
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gdp warns on every construction; we warn once, at attach
        return create_accountant(mechanism=name)


@functools.lru_cache(maxsize=256)
def epsilon_from_history(accountant: str, history: History, delta: float) -> float:
    """ε after `history` at `delta`, computed by a fresh Opacus accountant of kind `accountant`.

    Zero steps spend nothing (ε = 0). Cached: the same arguments always give the same ε.
    """
    history = tuple(entry for entry in history if entry[2] > 0)
    if not history:
        return 0.0
    meter = _new_accountant(accountant)
    meter.history = [tuple(entry) for entry in history]
    if accountant == "prv" and _prv_domain_size(meter, history, delta) > PRV_MAX_DOMAIN:
        # so little noise that PRV's discretisation would need more memory than any machine
        # has: the privacy loss is enormous, state no guarantee rather than a wrong one
        return math.inf
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return float(meter.get_epsilon(delta=delta))
    except MemoryError:
        return math.inf
    except ValueError:
        if accountant != "gdp":
            raise
        # Opacus' gdp inverts δ(ε) with a root search bracketed on [0, 500]: with very
        # little privacy loss δ(0) is already below the target (ε = 0 is exact), with a
        # huge one no ε ≤ 500 reaches it (report unbounded).
        from opacus.accountants.analysis.gdp import compute_mu_poisson, delta_eps_mu

        sigma, rate, steps = history[-1]
        mu = compute_mu_poisson(steps=steps, noise_multiplier=sigma, sample_rate=rate)
        return 0.0 if delta_eps_mu(eps=0.0, mu=mu) <= delta else math.inf


def _prv_domain_size(meter, history: History, delta: float) -> float:
    """Grid points PRV's get_epsilon(delta) would allocate (its own default error bounds)."""
    import numpy as np

    try:
        from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # overflows are expected exactly when σ is tiny
            prvs = [PoissonSubsampledGaussianPRV(rate, sigma) for sigma, rate, _ in history]
            domain = meter._get_domain(prvs=prvs, num_self_compositions=[steps for _, _, steps in history],
                                       eps_error=0.01, delta_error=delta / 1000)
        size = float(domain.size)
        return size if math.isfinite(size) else math.inf
    except (AttributeError, TypeError):  # another Opacus version: let get_epsilon decide
        return 0.0


def extend_history(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """`history` followed by `steps` more steps at (σ, q), merged as Opacus' accountants merge them."""
    if steps <= 0:
        return history
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        return history[:-1] + ((noise_multiplier, sample_rate, history[-1][2] + steps),)
    return history + ((noise_multiplier, sample_rate, steps),)


def steps_within_budget(accountant: str, history: History, noise_multiplier: float, sample_rate: float,
                        delta: float, target_epsilon: float, upper: int) -> int:
    """The largest k ≤ `upper` such that `history` plus k steps at (σ, q) keeps ε ≤ `target_epsilon`.

    ε grows monotonically with the number of steps, so a bisection over k is exact.
    """
    def fits(extra: int) -> bool:
        return epsilon_from_history(accountant, extend_history(history, noise_multiplier, sample_rate, extra),
                                    delta) <= target_epsilon

    if fits(upper):
        return upper
    low, high = 0, upper  # fits(low) or low == 0; not fits(high)
    if not fits(0):
        return 0
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


@dataclass
class PrivacyLedger:
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
    format: int = LEDGER_FORMAT

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
    def from_dict(cls, raw: dict[str, Any], where: str = "privacy ledger") -> "PrivacyLedger":
        if not isinstance(raw, dict):
            raise PrivacyError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != LEDGER_FORMAT:
            raise PrivacyError(f"{where}: ledger format {raw.get('format')!r} is not supported (expected {LEDGER_FORMAT})")
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
        from secure_ft.config import atomic_write_text

        path = Path(run_dir) / LEDGER_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def finite_or_none(value: float) -> float | None:
    """ε for JSON: a number, or null when no finite bound exists (strict JSON has no Infinity)."""
    return value if math.isfinite(value) else None


def load_ledger(run_dir: Path) -> PrivacyLedger:
    path = Path(run_dir) / LEDGER_FILE
    if not path.is_file():
        raise PrivacyError(f"{path}: no privacy ledger; this run was not trained with privacy.mode: dp "
                           "(or the file was removed)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PrivacyError(f"{path}: not valid JSON ({error}); the ledger is corrupt") from None
    return PrivacyLedger.from_dict(raw, str(path))
