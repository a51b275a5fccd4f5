"""Update validation: NaN/Inf, wrong keys or shapes, oversized updates are rejected (or clipped) with a reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from federated import protocol
from federated.task import arrays_to_record, record_to_arrays
from federated.update_validation import UpdateGuard, UpdateValidator, aggregate_site_metrics

GLOBAL = {"head.weight": np.zeros((2, 3), dtype=np.float32), "head.bias": np.zeros(2, dtype=np.float32)}


@pytest.fixture(autouse=True)
def server_identity():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SUPERLINK_NODE_ID, 1


def shifted(value: float) -> dict[str, np.ndarray]:
    return {name: array + np.float32(value) for name, array in GLOBAL.items()}


def reply(node: int, site: str, arrays: dict | None, examples: float = 10.0, loss: float = 1.0) -> Message:
    sent = Message(content=RecordDict(), dst_node_id=node, message_type="train")
    content = RecordDict({protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: examples, protocol.TRAIN_LOSS: loss}),
                          protocol.SITE: ConfigRecord({protocol.SITE_NAME: site})})
    if arrays is not None:
        content[protocol.ARRAYS] = arrays_to_record(arrays)
    return Message(content=content, reply_to=sent)


def failed_reply(node: int, reason: str) -> Message:
    return Message(Error(code=2, reason=reason), reply_to=Message(content=RecordDict(), dst_node_id=node,
                                                                  message_type="train"))


def guard(**kwargs) -> UpdateGuard:
    inner = FedAvg(weighted_by_key=protocol.AGGREGATION_WEIGHT, train_metrics_aggr_fn=aggregate_site_metrics)
    strategy = UpdateGuard(inner, kwargs.pop("validator", UpdateValidator()), **kwargs)
    strategy.current_arrays = arrays_to_record(GLOBAL)
    return strategy


@pytest.mark.parametrize("update, words", [
    ({**shifted(0.1), "head.bias": np.array([np.nan, 0.0], dtype=np.float32)}, "non-finite values (NaN/Inf) in 'head.bias'"),
    ({**shifted(0.1), "head.weight": np.full((2, 3), np.inf, dtype=np.float32)}, "non-finite values (NaN/Inf) in 'head.weight'"),
    ({"head.weight": GLOBAL["head.weight"]}, "wrong tensor keys: 1 missing (e.g. 'head.bias')"),
    ({**shifted(0.0), "encoder.secret": np.ones(1, dtype=np.float32)}, "1 unexpected (e.g. 'encoder.secret')"),
    ({**shifted(0.0), "head.bias": np.zeros(3, dtype=np.float32)}, "wrong shape for 'head.bias'"),
    ({**shifted(0.0), "head.bias": np.zeros(2, dtype=np.int64)}, "expected floating point"),
    (shifted(10.0), "update norm 28.28 exceeds update_norm_bound 5"),
])
def test_bad_updates_are_rejected_with_the_reason(update, words):
    check = UpdateValidator(norm_bound=5.0, on_oversized="drop").check(update, GLOBAL)
    assert check.status == "rejected"
    assert words in check.reason


def test_oversized_update_can_be_clipped_to_the_bound_instead():
    check = UpdateValidator(norm_bound=2.0, on_oversized="clip").check(shifted(10.0), GLOBAL)
    assert check.status == "clipped" and "clipped to update_norm_bound 2" in check.reason
    norm = np.sqrt(sum(np.sum((check.arrays[name] - GLOBAL[name]) ** 2) for name in GLOBAL))
    assert norm == pytest.approx(2.0, rel=1e-5)
    direction = check.arrays["head.weight"] - GLOBAL["head.weight"]
    assert np.allclose(direction, direction.flat[0])  # scaled, not reshaped
    assert UpdateValidator(norm_bound=100.0).check(shifted(1.0), GLOBAL).status == "accepted"


def test_one_poisoned_site_does_not_reach_the_model(caplog):
    strategy = guard(validator=UpdateValidator(norm_bound=5.0), min_accepted=2)
    nan = shifted(0.5)
    nan["head.weight"][0, 0] = np.nan
    replies = [reply(11, "site-a", shifted(0.2), examples=30), reply(12, "site-b", shifted(0.4), examples=10),
               reply(13, "site-c", nan), reply(14, "site-d", shifted(50.0)),
               failed_reply(15, "<class 'SiteFailure'>:<'site site-e: RuntimeError: disk full'>")]
    with caplog.at_level(logging.WARNING, logger="federated.update_validation"):
        arrays, metrics = strategy.aggregate_train(1, replies)
    aggregated = record_to_arrays(arrays)
    assert np.allclose(aggregated["head.weight"], 0.25)  # (30·0.2 + 10·0.4) / 40: only the good sites, by examples
    assert metrics[protocol.NUM_EXAMPLES] == 40 and metrics[protocol.TRAIN_LOSS] == pytest.approx(1.0)
    outcome = {entry.site: entry for entry in strategy.outcomes}
    assert outcome["site-a"].status == outcome["site-b"].status == "accepted"
    assert outcome["site-c"].status == "rejected" and "NaN" in outcome["site-c"].reason
    assert outcome["site-d"].status == "rejected" and "exceeds update_norm_bound" in outcome["site-d"].reason
    assert outcome["site-e"].status == "failed" and "disk full" in outcome["site-e"].reason
    logged = caplog.text
    assert "rejected update from site-c: non-finite values" in logged
    assert "rejected update from site-d: update norm" in logged
    assert "failed update from site-e" in logged


def test_rounds_without_enough_good_updates_leave_the_model_unchanged():
    strategy = guard(validator=UpdateValidator(norm_bound=1.0), min_accepted=2)
    arrays, metrics = strategy.aggregate_train(3, [reply(1, "a", shifted(0.1)), reply(2, "b", shifted(9.0))])
    assert arrays is None and metrics is None
    assert "fewer than min_train_sites = 2" in strategy.skipped_rounds[3]

    strict = guard(accept_failures=False, min_accepted=1)
    arrays, _ = strict.aggregate_train(1, [reply(1, "a", shifted(0.1)), failed_reply(2, "boom")])
    assert arrays is None and "accept_failures is false" in strict.skipped_rounds[1]


def test_equal_weights_for_central_dp_and_a_site_cannot_choose_its_weight():
    strategy = guard(uniform_weights=True)
    arrays, _ = strategy.aggregate_train(1, [reply(1, "a", shifted(0.2), examples=90),
                                             reply(2, "b", shifted(0.4), examples=10)])
    assert np.allclose(record_to_arrays(arrays)["head.bias"], 0.3)
    weighted = guard()
    liar = reply(2, "b", shifted(0.4), examples=10)
    liar.content[protocol.METRICS][protocol.AGGREGATION_WEIGHT] = 1e9  # overwritten by the server
    arrays, _ = weighted.aggregate_train(1, [reply(1, "a", shifted(0.2), examples=90), liar])
    assert np.allclose(record_to_arrays(arrays)["head.bias"], 0.22)
    missing = guard()
    arrays, _ = missing.aggregate_train(1, [reply(1, "a", shifted(0.2), examples=0), reply(2, "b", shifted(0.4))])
    assert [entry.status for entry in missing.outcomes] == ["rejected", "accepted"]
    assert "num-examples" in missing.outcomes[0].reason
