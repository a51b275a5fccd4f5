"""Privacy accountants: pick one by name, compute ε from a history, calibrate σ to a target ε.

Opacus keeps one small module per accountant behind a tiny interface; this module is the one
place secure-ft talks to them. Every ε the platform states and every σ it calibrates comes
from here, for central runs, distributed runs and federated sites alike, so the same inputs
always give the same numbers wherever they are computed.

An accountant composes the steps of DP-SGD — a *history* of ``(σ, q, steps)`` runs — into an
(ε, δ) guarantee:

``prv``
    Privacy random variables (Gopi et al. 2021): an upper bound on ε within ``eps_error``.
    The default.
``rdp``
    Rényi DP (Mironov 2017) converted to (ε, δ): a rigorous, slightly looser bound.
``gdp``
    Gaussian DP through the central limit theorem (Dong et al. 2019): an *approximation*
    that can understate ε. Selectable for comparison, never for a federated site (see
    `Accountant.usable_at_sites`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any

from secure_ft.errors import ConfigError, PrivacyError

History = tuple[tuple[float, float, int], ...]
PRV_EPS_ERROR = 0.01  # PRV's error bound on ε at Opacus' defaults
PRV_MAX_DOMAIN = 5e6  # grid points; beyond this σ is so small that ε is meaningless anyway
CALIBRATION_TOLERANCE = 0.01  # Opacus' default epsilon_tolerance when searching σ


@dataclass(frozen=True)
class Accountant:
    """What secure-ft knows about one Opacus accountant."""

    name: str  # as the config, privacy.json and Opacus' create_accountant call it
    rigorous: bool  # an upper bound on ε (False: an approximation that can understate it)
    eps_error: float  # how far a recomputed ε may differ from a stated one (absolute)
    usable_at_sites: bool  # may a federated site account with it
    note: str  # one line for privacy.json and the report

    def epsilon(self, history: History, delta: float) -> float:
        return epsilon_from_history(self.name, history, delta)


ACCOUNTANTS: dict[str, Accountant] = {
    "prv": Accountant("prv", rigorous=True, eps_error=PRV_EPS_ERROR, usable_at_sites=True,
                      note=f"prv: upper bound with eps_error {PRV_EPS_ERROR}"),
    "rdp": Accountant("rdp", rigorous=True, eps_error=0.0, usable_at_sites=True,
                      note="rdp: Rényi-DP bound converted to (ε, δ)"),
    # a site's σ is calibrated for its whole participation and its ε reported with every
    # update; an approximation that can understate ε has no place in that promise
    "gdp": Accountant("gdp", rigorous=False, eps_error=0.0, usable_at_sites=False,
                      note="gdp is a central-limit approximation and can understate ε"),
}


def get_accountant(name: str) -> Accountant:
    """The accountant called `name`; a `PrivacyError` listing the known ones otherwise."""
    try:
        return ACCOUNTANTS[name]
    except KeyError:
        raise PrivacyError(f"unknown accountant {name!r}; use one of {', '.join(ACCOUNTANTS)}") from None


def require_usable_at_sites(name: str, where: str = "privacy.accountant") -> Accountant:
    """The accountant for a federated site, or a `ConfigError` saying which to use instead."""
    accountant = get_accountant(name)
    if not accountant.usable_at_sites:
        usable = ", ".join(n for n, a in ACCOUNTANTS.items() if a.usable_at_sites)
        raise ConfigError(f"{where}: {name!r} cannot be used at a federated site ({accountant.note}); "
                          f"set privacy.accountant to one of {usable}")
    return accountant


def normalise_history(history: Any) -> History:
    """An accountant history as a tuple of ``(noise_multiplier, sample_rate, steps)`` tuples."""
    try:
        return tuple((float(sigma), float(rate), int(steps)) for sigma, rate, steps in history)
    except (TypeError, ValueError):
        raise PrivacyError(f"accountant history {history!r} is not a list of (noise_multiplier, sample_rate, steps)") from None


def extend_history(history: History, noise_multiplier: float, sample_rate: float, steps: int) -> History:
    """`history` followed by `steps` more steps at (σ, q), merged as Opacus' accountants merge them."""
    if steps <= 0:
        return history
    if history and history[-1][0] == noise_multiplier and history[-1][1] == sample_rate:
        return history[:-1] + ((noise_multiplier, sample_rate, history[-1][2] + steps),)
    return history + ((noise_multiplier, sample_rate, steps),)


def new_opacus_accountant(name: str):
    """A fresh Opacus accountant object of kind `name`."""
    from opacus.accountants import create_accountant

    get_accountant(name)
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
    meter = new_opacus_accountant(accountant)
    meter.history = [tuple(entry) for entry in history]
    with memoized_rdp():
        if accountant == "prv" and _prv_domain_size(meter, history, delta) > PRV_MAX_DOMAIN:
            # so little noise that PRV's discretisation would need more memory than any machine
            # has: the privacy loss is enormous, state no guarantee rather than a wrong one
            return math.inf
        return _opacus_epsilon(meter, accountant, history, delta)


def _opacus_epsilon(meter, accountant: str, history: History, delta: float) -> float:
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


@functools.lru_cache(maxsize=1)
def _remembering_compute_rdp():
    """Opacus' RDP of one sampled-Gaussian step, ``_compute_rdp(q, σ, α)``, with its results remembered."""
    from opacus.accountants.analysis import rdp

    return functools.lru_cache(maxsize=1 << 16)(rdp._compute_rdp)


@contextlib.contextmanager
def memoized_rdp():
    """Within this block, Opacus computes the RDP of one step at each (q, σ, α) once.

    PRV's ε starts by bounding its discretisation domain with an RDP accountant
    (``compute_safe_domain_size``), and Opacus' RDP of one step at a fractional order is a
    pure-Python series: about 0.6 s per call on 2 busy cores, twice per ε, while a run's ε
    after every epoch (and on the progress bar) only ever asks for the same (q, σ) at more
    steps. RDP composes linearly (``compute_rdp`` multiplies the one-step values by the
    steps), so remembering the one-step values — a pure function of (q, σ, α) — gives the
    same ε, bit for bit, for a fraction of the time.
    """
    from opacus.accountants.analysis import rdp

    remembering = _remembering_compute_rdp()
    if rdp._compute_rdp is remembering:  # nested: the outer block restores it
        yield
        return
    original, rdp._compute_rdp = rdp._compute_rdp, remembering
    try:
        yield
    finally:
        rdp._compute_rdp = original


def _prv_domain_size(meter, history: History, delta: float) -> float:
    """Grid points PRV's get_epsilon(delta) would allocate (its own default error bounds)."""
    import numpy as np

    try:
        from opacus.accountants.analysis.prv import PoissonSubsampledGaussianPRV

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # overflows are expected exactly when σ is tiny
            prvs = [PoissonSubsampledGaussianPRV(rate, sigma) for sigma, rate, _ in history]
            domain = meter._get_domain(prvs=prvs, num_self_compositions=[steps for _, _, steps in history],
                                       eps_error=PRV_EPS_ERROR, delta_error=delta / 1000)
        size = float(domain.size)
        return size if math.isfinite(size) else math.inf
    except (AttributeError, TypeError):  # another Opacus version: let get_epsilon decide
        return 0.0


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


class BudgetUnreachable(PrivacyError):
    """No σ (up to 10⁶) brings the planned training within the target ε."""


def calibrate_noise(accountant: str, *, target_epsilon: float, delta: float, sample_rate: float,
                    epochs: float) -> float:
    """σ such that `epochs` epochs at sampling rate `sample_rate` end at `target_epsilon`.

    Opacus' own search (`get_noise_multiplier`, what `make_private_with_epsilon` calls) for
    ``prv`` and ``rdp``; for ``gdp`` a bisection on our `epsilon_from_history`, because
    Opacus' search breaks for large σ under gdp. Raises `BudgetUnreachable` when even
    σ = 10⁶ spends too much.
    """
    get_accountant(accountant)
    if accountant == "gdp":
        return _gdp_noise_for_epsilon(target_epsilon, delta, sample_rate, epochs)
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings(), memoized_rdp():
            warnings.simplefilter("ignore")  # opacus: "optimal order is the largest alpha" while searching σ
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, epochs=epochs, accountant=accountant,
                                              epsilon_tolerance=CALIBRATION_TOLERANCE))
    except ValueError as error:
        if "privacy budget is too low" in str(error):
            raise BudgetUnreachable(str(error)) from None
        raise


def _gdp_noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, epochs: float) -> float:
    steps = int(epochs / sample_rate)
    low, high = 0.0, 1.0
    while epsilon_from_history("gdp", ((high, sample_rate, steps),), delta) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e6:
            raise BudgetUnreachable(f"target ε {target_epsilon:g} cannot be reached in {epochs:g} epochs")
    while high - low > 1e-4 * high:
        middle = (low + high) / 2
        if epsilon_from_history("gdp", ((middle, sample_rate, steps),), delta) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
