"""The server's strategy: FedAvg, FedProx or FedAvgM, optionally central DP, always behind update validation.

The layers, outermost first::

    UpdateGuard                       validate + log + weight every reply (federated.update_validation)
      DifferentialPrivacyServerSide…  clip each update to C, add noise, account ε (federated.central_dp)
        FixedSampleFedAvg / …FedProx  weighted average of the accepted updates (Flower)

FedAvgM (Hsu et al. 2019, Flower's own) moves the global model by ``server_learning_rate``
times the averaged update, with optional momentum. On the demo's three non-IID sites it did
not help (`bench/federated.py --strategy fedavgm`: server learning rate 2 or momentum 0.5
overshot and lost 9–10 test points against FedAvg), so FedAvg stays the default. It is
refused with central DP, whose noise is calibrated to the plain average (see
`secure_ft.records.config.FederatedConfig`).

FedAvg and FedProx are Flower's own: each round they sample ``fraction_train`` of the
connected sites (at least ``min_train_sites``, once ``min_available_sites`` are connected).
Under central DP the subclasses here sample exactly ``max(⌊num_sites · fraction_train⌋,
min_train_sites)`` sites instead, because the noise is calibrated to that number; the server
then waits until that many sites are connected.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedAvgM, FedProx, Strategy
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from federated import protocol
from federated.central_dp import OpacusRdpAccountant, wrap_with_central_dp
from federated.update_validation import UpdateGuard, UpdateValidator, aggregate_site_metrics
from secure_ft.records.config import FederatedConfig


def sites_per_round(config: FederatedConfig) -> int:
    """Sites asked to train each round when all `num_sites` are connected."""
    return max(int(config.num_sites * config.fraction_train), config.min_train_sites)


def _configure_fixed_sample(strategy: FedAvg, sample_size: int, server_round: int, arrays: ArrayRecord,
                            config: ConfigRecord, grid: Grid) -> Iterable[Message]:
    node_ids, _ = sample_nodes(grid, strategy.min_available_nodes, sample_size)
    config[protocol.SERVER_ROUND] = server_round
    record = RecordDict({strategy.arrayrecord_key: arrays, strategy.configrecord_key: config})
    return strategy._construct_messages(record, node_ids, MessageType.TRAIN)


class FixedSampleFedAvg(FedAvg):
    """Flower's FedAvg, sampling exactly `sample_size` sites per training round."""

    def __init__(self, *, sample_size: int, **kwargs):
        super().__init__(**kwargs)
        self.sample_size = sample_size

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return _configure_fixed_sample(self, self.sample_size, server_round, arrays, config, grid)


class FixedSampleFedProx(FedProx):
    """Flower's FedProx (sends ``proximal-mu`` to the sites), sampling exactly `sample_size` sites."""

    def __init__(self, *, sample_size: int, **kwargs):
        super().__init__(**kwargs)
        self.sample_size = sample_size

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config[protocol.PROXIMAL_MU] = self.proximal_mu
        return _configure_fixed_sample(self, self.sample_size, server_round, arrays, config, grid)


def build_strategy(config: FederatedConfig) -> tuple[UpdateGuard, OpacusRdpAccountant | None]:
    """The full server strategy for `config` and the central-DP accountant (None without central DP)."""
    sample_size = sites_per_round(config)
    central = config.central_dp != "none"
    common = dict(
        fraction_train=config.fraction_train,
        fraction_evaluate=1.0 if config.federated_evaluation else 0.0,
        min_train_nodes=config.min_train_sites,
        min_evaluate_nodes=config.min_train_sites,
        min_available_nodes=max(config.min_available_sites, sample_size) if central else config.min_available_sites,
        weighted_by_key=protocol.AGGREGATION_WEIGHT,
        train_metrics_aggr_fn=aggregate_site_metrics,
        evaluate_metrics_aggr_fn=aggregate_site_metrics,
    )
    if config.strategy == "fedprox":
        base: Strategy = (FixedSampleFedProx(sample_size=sample_size, proximal_mu=config.proximal_mu, **common)
                          if central else FedProx(proximal_mu=config.proximal_mu, **common))
    elif config.strategy == "fedavgm":  # never with central DP (refused by the config)
        base = FedAvgM(server_learning_rate=config.server_learning_rate, server_momentum=config.server_momentum,
                       **common)
    else:
        base = FixedSampleFedAvg(sample_size=sample_size, **common) if central else FedAvg(**common)
    wrapped, accountant = wrap_with_central_dp(base, config, sample_size)
    guard = UpdateGuard(
        wrapped, UpdateValidator(config.update_norm_bound, config.on_oversized_update),
        min_accepted=config.min_train_sites, accept_failures=config.accept_failures,
        uniform_weights=central, require_all_sampled=central,
    )
    return guard, accountant
