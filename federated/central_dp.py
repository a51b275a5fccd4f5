"""Central (client-level) differential privacy: Flower's DP wrappers plus an accountant.

With ``federated.central_dp`` the server clips every site's update to a norm C and adds
Gaussian noise N(0, (z·C/m)²) to the average of the m sampled sites' updates (Flower's
``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping``). That protects each *site* as a
whole: the released global models reveal little about whether any one site took part at
all (client-level DP, McMahan et al. 2018) — a different unit from the per-site
sample-level DP of ``privacy.mode: dp``, which protects each *record* within a site.

Accounting. Every round that releases an aggregate composes one Gaussian mechanism with
noise multiplier z. No amplification by sampling is claimed (Flower samples a fixed number
of sites without replacement, and with ``fraction_train: 1`` everyone takes part), so
ε after R rounds is that of R Gaussian mechanisms, computed here with Rényi DP (Opacus'
analysis) and converted to (ε, δ) at ``central_delta``. The sensitivity argument needs
equal site weights, so under central DP the server averages sites with equal weight
(`UpdateGuard(uniform_weights=True)`), and a round in which any sampled site failed or was
rejected is skipped rather than released with too little noise. Adaptive clipping spends
part of the budget on the noisy count of clipped updates; Flower splits z between the two
releases so the pair is equivalent to one Gaussian mechanism with multiplier z (Andrew et
al. 2021), which is what is accounted.

`OpacusRdpAccountant` implements Flower's ``PrivacyAccountant`` protocol on Opacus' RDP
analysis, so no further dependency (Google's ``dp-accounting``, Flower's ``[dp]`` extra)
is needed.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, PrivacySpent, SamplingMethod
from flwr.serverapp.strategy import (DifferentialPrivacyServerSideAdaptiveClipping,
                                     DifferentialPrivacyServerSideFixedClipping, Strategy)

from secure_ft.records.config import FederatedConfig

log = logging.getLogger(__name__)

ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024])


class OpacusRdpAccountant:
    """Flower's ``PrivacyAccountant`` protocol backed by Opacus' Rényi-DP analysis.

    Supports ``no-amplification`` (each release is a full Gaussian mechanism) and
    ``poisson`` sampling (the sampled Gaussian mechanism with q = sample / population).
    """

    def __init__(self, config: PrivacyConfig, orders: tuple[float, ...] = ORDERS):
        if config.sampling_method not in (SamplingMethod.NO_AMPLIFICATION, SamplingMethod.POISSON):
            raise ValueError(f"sampling method {config.sampling_method.value!r} is not supported by this accountant")
        self._config = config
        self._orders = tuple(float(order) for order in orders)
        self._events: list[tuple[GaussianPrivacyEvent, int]] = []

    @property
    def config(self) -> PrivacyConfig:
        return self._config

    @property
    def num_releases(self) -> int:
        return sum(count for _, count in self._events)

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        if count < 1:
            raise ValueError("count must be a positive integer")
        self._events.append((event, int(count)))

    def _rdp(self, events: list[tuple[GaussianPrivacyEvent, int]]) -> np.ndarray:
        from opacus.accountants.analysis.rdp import compute_rdp

        total = np.zeros(len(self._orders))
        for event, count in events:
            rate = 1.0 if self._config.sampling_method is SamplingMethod.NO_AMPLIFICATION else \
                event.sample_size / event.population_size
            total += np.asarray(compute_rdp(q=rate, noise_multiplier=event.noise_multiplier, steps=count,
                                            orders=list(self._orders)))
        return total

    def _epsilon(self, events: list[tuple[GaussianPrivacyEvent, int]], delta: float) -> tuple[float, float | None]:
        from opacus.accountants.analysis.rdp import get_privacy_spent

        if not events:
            return 0.0, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha" for tiny noise
            epsilon, order = get_privacy_spent(orders=list(self._orders), rdp=self._rdp(events), delta=delta)
        return float(epsilon), (None if order is None or (isinstance(order, float) and math.isnan(order))
                                else float(order))

    def get_epsilon(self, delta: float) -> float:
        return self._epsilon(self._events, delta)[0]

    def get_delta(self, epsilon: float) -> float:
        """Smallest δ at which the composed releases are (ε, δ)-DP (inverse of the RDP conversion)."""
        if not self._events:
            return 0.0
        orders = np.asarray(self._orders)
        rdp = self._rdp(self._events)
        log_delta = (orders - 1) * (rdp - epsilon + np.log((orders - 1) / orders)) - np.log(orders)
        return float(min(1.0, np.exp(np.nanmin(log_delta))))

    def get_privacy_spent(self, delta: float | None = None) -> PrivacySpent:
        delta = self._config.target_delta if delta is None else delta
        epsilon, order = self._epsilon(self._events, delta)
        return PrivacySpent(epsilon=epsilon, delta=delta, num_releases=self.num_releases,
                            accounting_method="rdp (opacus)", optimal_order=order)

    def would_exceed(self, event: GaussianPrivacyEvent, max_epsilon: float | None = None, count: int = 1) -> bool:
        limit = self._config.max_epsilon if max_epsilon is None else max_epsilon
        if limit is None:
            raise ValueError("max_epsilon must be given in PrivacyConfig or to would_exceed()")
        return self._epsilon(self._events + [(event, count)], self._config.target_delta)[0] > limit

    def state_dict(self) -> dict[str, object]:
        return {"backend": "opacus-rdp", "orders": list(self._orders),
                "events": [{"noise_multiplier": event.noise_multiplier, "sample_size": event.sample_size,
                            "population_size": event.population_size, "count": count}
                           for event, count in self._events]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        if state.get("backend") != "opacus-rdp":
            raise ValueError("accountant state was written by another backend")
        self._orders = tuple(float(order) for order in state["orders"])
        self._events = [(GaussianPrivacyEvent(float(item["noise_multiplier"]), int(item["sample_size"]),
                                              int(item["population_size"])), int(item["count"]))
                        for item in state["events"]]


class AccountedAdaptiveClipping(DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, composing one Gaussian event per released aggregate."""

    def __init__(self, strategy: Strategy, noise_multiplier: float, num_sampled_clients: int,
                 accountant: OpacusRdpAccountant, **kwargs: Any):
        super().__init__(strategy, noise_multiplier, num_sampled_clients, **kwargs)
        self.configured_noise_multiplier = noise_multiplier
        self.accountant = accountant

    def aggregate_train(self, server_round: int, replies) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            self.accountant.compose(GaussianPrivacyEvent(self.configured_noise_multiplier, len(replies),
                                                         self.accountant.config.population_size))
        return arrays, metrics


def wrap_with_central_dp(strategy: Strategy, config: FederatedConfig,
                         num_sampled: int) -> tuple[Strategy, OpacusRdpAccountant | None]:
    """`strategy` inside Flower's central-DP wrapper chosen by `config.central_dp`, and its accountant."""
    if config.central_dp == "none":
        return strategy, None
    accountant = OpacusRdpAccountant(PrivacyConfig(
        target_delta=config.central_delta, population_size=config.num_sites,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE, sampling_method=SamplingMethod.NO_AMPLIFICATION,
    ))
    if config.central_dp == "fixed":
        wrapped = DifferentialPrivacyServerSideFixedClipping(
            strategy, config.central_noise_multiplier, config.central_clipping_norm, num_sampled,
            accountant=accountant)
    else:
        # Flower's default σ_b = m/20 is meant for hundreds of sites; with few sites it cannot leave
        # enough of z for the update noise ((2σ_b) must exceed z), so use at least z.
        wrapped = AccountedAdaptiveClipping(
            strategy, config.central_noise_multiplier, num_sampled, accountant,
            initial_clipping_norm=config.central_clipping_norm,
            target_clipped_quantile=config.central_target_quantile,
            clipped_count_stddev=max(num_sampled / 20, config.central_noise_multiplier))
    log.info("central DP (%s clipping): z = %g, C = %g, %d sites per round, δ = %g", config.central_dp,
             config.central_noise_multiplier, config.central_clipping_norm, num_sampled, config.central_delta)
    return wrapped, accountant


def central_guarantee(config: FederatedConfig, accountant: OpacusRdpAccountant, wrapped: Strategy) -> dict[str, Any]:
    """The ``central`` section of privacy.json, with the accountant inputs that recompute its ε.

    Every released aggregate is one Gaussian mechanism with multiplier z and no sampling
    amplification (q = 1), so the whole run is the history [(z, 1, releases)]. ε is computed
    from exactly that history by the same Opacus RDP accountant the gate recomputes it with
    (`secure_ft.privacy.accountants`); Flower's accountant above (a wider set of Rényi orders)
    only steers the run.
    """
    from secure_ft.privacy.accountants import epsilon_from_history, normalise_history

    spent = accountant.get_privacy_spent()
    history = [[float(config.central_noise_multiplier), 1.0, int(spent.num_releases)]]
    epsilon = epsilon_from_history("rdp", normalise_history(history), float(spent.delta))
    return {
        "epsilon": epsilon,
        "delta": spent.delta,
        "unit": "site (client-level DP: protects each site's whole contribution)",
        "accountant": "rdp",
        "history": history,
        "mechanism": f"Gaussian, server-side {config.central_dp} clipping (Flower)",
        "noise_multiplier": config.central_noise_multiplier,
        "clipping_norm": (getattr(wrapped, "clipping_norm", config.central_clipping_norm)),
        "initial_clipping_norm": config.central_clipping_norm,
        "releases": spent.num_releases,
        "sites": config.num_sites,
        "sampling": "no amplification claimed",
        "optimal_order": spent.optimal_order,
    }
