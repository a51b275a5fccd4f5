"""The server strategies: FedAvgM's server step, and the combinations the config refuses."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from pydantic import ValidationError

from federated import protocol
from federated.strategy import build_strategy
from federated.task import arrays_to_record, record_to_arrays
from secure_ft.records.config import FederatedConfig

GLOBAL = {"head.weight": np.zeros((2, 3), dtype=np.float32), "head.bias": np.zeros(2, dtype=np.float32)}


@pytest.fixture(autouse=True)
def server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SUPERLINK_NODE_ID, 1


def reply(node: int, arrays: dict[str, np.ndarray], examples: float) -> Message:
    sent = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    return Message(content=RecordDict({
        protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: examples, protocol.TRAIN_LOSS: 1.0}),
        protocol.SITE: ConfigRecord({protocol.SITE_NAME: f"site-{node}"}),
        protocol.ARRAYS: arrays_to_record(arrays),
    }), reply_to=sent)


def shifted(base: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {name: array + np.float32(value) for name, array in base.items()}


def one_round(strategy, server_round: int, start: dict[str, np.ndarray], moves: list[float]) -> dict[str, np.ndarray]:
    strategy.current_arrays = arrays_to_record(start)  # what configure_train records before a round
    if getattr(strategy.strategy, "current_arrays", None) is None:
        strategy.strategy.current_arrays = arrays_to_record(start)
    arrays, _ = strategy.aggregate_train(server_round, [reply(i + 1, shifted(start, move), 10.0)
                                                        for i, move in enumerate(moves)])
    return record_to_arrays(arrays)


def test_fedavgm_steps_the_server_learning_rate_times_the_average_update_with_momentum():
    plain, _ = build_strategy(FederatedConfig(num_sites=2))
    assert np.allclose(one_round(plain, 1, GLOBAL, [0.2, 0.4])["head.bias"], 0.3)

    faster, _ = build_strategy(FederatedConfig(num_sites=2, strategy="fedavgm", server_learning_rate=2.0))
    assert np.allclose(one_round(faster, 1, GLOBAL, [0.2, 0.4])["head.bias"], 0.6)

    momentum, _ = build_strategy(FederatedConfig(num_sites=2, strategy="fedavgm", server_momentum=0.5))
    first = one_round(momentum, 1, GLOBAL, [0.2, 0.4])
    assert np.allclose(first["head.weight"], 0.3)
    # round 2: the sites move +0.1 from the new global model; momentum adds half of round 1's step
    second = one_round(momentum, 2, first, [0.1, 0.1])
    assert np.allclose(second["head.weight"], 0.3 + 0.1 + 0.5 * 0.3)


@pytest.mark.parametrize("settings, words", [
    ({"server_learning_rate": 2.0}, "used by strategy: fedavgm only"),
    ({"strategy": "fedprox", "server_momentum": 0.9}, "used by strategy: fedavgm only"),
    ({"strategy": "fedavgm", "central_dp": "fixed"}, "cannot be combined with central_dp"),
    ({"strategy": "fedavgm", "secagg": True}, "not available with it"),
    ({"strategy": "fedavgm", "server_momentum": 1.0}, "less than 1"),
])
def test_server_optimiser_settings_that_would_be_ignored_or_unsafe_are_refused(settings, words):
    with pytest.raises(ValidationError, match=words):
        FederatedConfig(num_sites=2, **settings)
