"""Update validation: one bad site must not poison the global model.

Before any aggregation the server checks every site's reply (`UpdateValidator`):

1. the reply carries exactly one tensor record and a positive, finite ``num-examples``;
2. the tensors have exactly the keys and shapes of the global model sent this round, and
   a floating-point type;
3. every value is finite (no NaN / Inf);
4. the update's L2 norm ‖w_site − w_global‖ is at most ``federated.update_norm_bound``;
   beyond it the update is scaled down to the bound (``on_oversized_update: clip``) or
   rejected (``drop``).

`UpdateGuard` is a Flower strategy wrapper (the shape of Flower's own DP wrappers) that runs
these checks in ``aggregate_train``, logs every rejection with the site's name and the
reason, records every site's outcome per round, and only then hands the accepted replies to
the wrapped strategy. It also decides the aggregation weight the wrapped strategy uses
(examples per site, or equal weights where central DP needs them), so a site cannot pick
its own weight key, and it refuses to aggregate a round with fewer than
``min_train_sites`` accepted updates.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from federated import protocol
from federated.site_identity import SiteBook, declared_name, statement_text
from federated.site_privacy import decode_site_privacy
from federated.task import arrays_to_record, record_to_arrays

log = logging.getLogger(__name__)

ACCEPTED, CLIPPED, REJECTED, FAILED = "accepted", "clipped", "rejected", "failed"
_SITE_IN_REASON = re.compile(r"site (\S+?):")


@dataclass
class UpdateCheck:
    """The outcome of checking one update."""

    status: str  # accepted | clipped | rejected
    reason: str | None = None
    norm: float | None = None
    arrays: dict[str, np.ndarray] | None = None  # the arrays to aggregate (clipped ones replaced)


class UpdateValidator:
    """Checks one site's tensors against the global tensors they update.

    Parameters
    ----------
    norm_bound
        Largest allowed L2 norm of the update (all tensors together); None = no bound.
    on_oversized
        ``clip`` scales an oversized update down to `norm_bound`; ``drop`` rejects it.
    """

    def __init__(self, norm_bound: float | None = None, on_oversized: str = "drop"):
        if on_oversized not in ("clip", "drop"):
            raise ValueError(f"on_oversized must be clip or drop, got {on_oversized!r}")
        self.norm_bound = norm_bound
        self.on_oversized = on_oversized

    def check(self, update: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> UpdateCheck:
        missing = sorted(set(reference) - set(update))
        unexpected = sorted(set(update) - set(reference))
        if missing or unexpected:
            detail = []
            if missing:
                detail.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
            if unexpected:
                detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
            return UpdateCheck(REJECTED, f"wrong tensor keys: {', '.join(detail)}")
        squared = 0.0
        for name, reference_value in reference.items():
            value = np.asarray(update[name])
            if value.shape != np.shape(reference_value):
                return UpdateCheck(REJECTED, f"wrong shape for {name!r}: {value.shape}, "
                                             f"expected {np.shape(reference_value)}")
            if not np.issubdtype(value.dtype, np.floating):
                return UpdateCheck(REJECTED, f"tensor {name!r} has type {value.dtype}, expected floating point")
            if not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                return UpdateCheck(REJECTED, f"non-finite values (NaN/Inf) in {name!r}: {bad} of {value.size}")
            difference = value.astype(np.float64) - np.asarray(reference_value, dtype=np.float64)
            squared += float(np.sum(difference * difference))
        norm = math.sqrt(squared)
        arrays = {name: np.asarray(update[name]) for name in reference}
        if not math.isfinite(norm):
            return UpdateCheck(REJECTED, "the update's norm overflows", norm)
        if self.norm_bound is None or norm <= self.norm_bound:
            return UpdateCheck(ACCEPTED, None, norm, arrays)
        if self.on_oversized == "drop":
            return UpdateCheck(REJECTED, f"update norm {norm:.4g} exceeds update_norm_bound {self.norm_bound:g}", norm)
        scale = self.norm_bound / norm
        clipped = {name: (np.asarray(reference[name], dtype=np.float64)
                          + scale * (np.asarray(update[name], dtype=np.float64)
                                     - np.asarray(reference[name], dtype=np.float64))).astype(np.asarray(update[name]).dtype)
                   for name in reference}
        return UpdateCheck(CLIPPED, f"update norm {norm:.4g} clipped to update_norm_bound {self.norm_bound:g}",
                           norm, clipped)


@dataclass
class SiteOutcome:
    """What happened to one site's reply in one round."""

    round: int
    phase: str  # train | evaluate
    site: str
    node_id: int
    status: str  # accepted | clipped | rejected | failed
    reason: str | None = None
    update_norm: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None  # a DP site's accountant inputs (`federated.site_privacy`)
    key_sha256: str | None = None  # deployments: the registered key the reply came with

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def aggregate_site_metrics(records: list, weight_key: str) -> MetricRecord:
    """Weighted means of the sites' metrics, except ε and δ: the largest (weakest) site's values."""
    weights = [float(next(iter(record.metric_records.values()))[weight_key]) for record in records]
    total = sum(weights) or 1.0
    aggregated: dict[str, float] = {}
    for record, weight in zip(records, weights):
        for key, value in next(iter(record.metric_records.values())).items():
            if key == weight_key or isinstance(value, list):
                continue
            if key in (protocol.EPSILON, protocol.DELTA):
                aggregated[key] = max(aggregated.get(key, -math.inf), float(value))
            elif key == protocol.NUM_EXAMPLES:
                aggregated[key] = aggregated.get(key, 0.0) + float(value)
            else:
                aggregated[key] = aggregated.get(key, 0.0) + float(value) * weight / total
    return MetricRecord(aggregated)


class UpdateGuard(Strategy):
    """Validate, log and weight the sites' replies, then delegate to the wrapped strategy.

    Parameters
    ----------
    strategy
        The wrapped strategy (FedAvg / FedProx, possibly inside a central-DP wrapper); it
        must aggregate with ``weighted_by_key = "aggregation-weight"``.
    validator
        The per-update checks.
    min_accepted
        Fewest accepted updates a round needs to be aggregated.
    accept_failures
        Aggregate a round although some sites failed or were rejected.
    uniform_weights
        Weight every accepted site equally (central DP's sensitivity analysis needs it);
        otherwise by its number of training examples.
    require_all_sampled
        Skip a round unless every sampled site's update was accepted (central DP calibrates
        its noise to the number of sampled sites).
    """

    def __init__(self, strategy: Strategy, validator: UpdateValidator, *, min_accepted: int = 1,
                 accept_failures: bool = True, uniform_weights: bool = False, require_all_sampled: bool = False):
        super().__init__()
        self.strategy = strategy
        self.validator = validator
        self.min_accepted = min_accepted
        self.accept_failures = accept_failures
        self.uniform_weights = uniform_weights
        self.require_all_sampled = require_all_sampled
        self.current_arrays: ArrayRecord = ArrayRecord()
        self.sampled: dict[int, int] = {}
        self.outcomes: list[SiteOutcome] = []
        self.skipped_rounds: dict[int, str] = {}
        self.node_sites: dict[int, str] = {}
        self.train_metrics: dict[int, dict[str, float]] = {}
        self.evaluate_metrics: dict[int, dict[str, float]] = {}
        self.bytes_down: dict[int, int] = {}  # global tensors sent to the sampled sites
        self.bytes_up: dict[int, int] = {}  # tensors the sites sent back
        self.sites = SiteBook()  # names from registered keys, rounds sent, signed privacy statements

    # -- configure: remember what was sent -------------------------------------------------

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.sampled[server_round] = len(messages)
        self.sites.sent_training(server_round, [message.metadata.dst_node_id for message in messages], messages)
        self.bytes_down[server_round] = arrays.count_bytes() * len(messages)
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    # -- aggregate: check first ------------------------------------------------------------

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        reference = record_to_arrays(self.current_arrays)
        accepted: list[Message] = []
        problems = 0
        replies = list(replies)
        self.bytes_up[server_round] = sum(record.count_bytes() for reply in replies if not reply.has_error()
                                          for record in reply.content.array_records.values())
        for reply in replies:
            outcome = self._check_train_reply(server_round, reply, reference)
            self.outcomes.append(outcome)
            if outcome.status in (ACCEPTED, CLIPPED):
                accepted.append(reply)
            else:
                problems += 1
                log.warning("round %d: %s update from %s: %s", server_round, outcome.status, outcome.site,
                            outcome.reason)
        sampled = self.sampled.get(server_round, len(accepted) + problems)
        reason = None
        if problems and not self.accept_failures:
            reason = f"{problems} site(s) failed or were rejected and accept_failures is false"
        elif self.require_all_sampled and len(accepted) < sampled:
            reason = (f"central DP: only {len(accepted)} of the {sampled} sampled sites' updates were accepted and "
                      "the noise is calibrated for all of them")
        elif len(accepted) < self.min_accepted:
            reason = f"only {len(accepted)} accepted update(s), fewer than min_train_sites = {self.min_accepted}"
        if reason is not None:
            self.skipped_rounds[server_round] = reason
            log.warning("round %d: not aggregated, the global model stays unchanged: %s", server_round, reason)
            return None, None
        _harmonise_metric_keys(accepted, server_round)
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        if arrays is not None and not all(np.all(np.isfinite(value)) for value in record_to_arrays(arrays).values()):
            self.skipped_rounds[server_round] = "the aggregate holds non-finite values"
            log.error("round %d: the aggregate holds non-finite values; the global model stays unchanged", server_round)
            return None, None
        if arrays is None:
            self.skipped_rounds[server_round] = "the wrapped strategy did not aggregate"
        if metrics is not None:
            self.train_metrics[server_round] = _plain_metrics(metrics)
        return arrays, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                site = self._site_from_error(reply)
                self.outcomes.append(SiteOutcome(server_round, "evaluate", site, node, FAILED, reply.error.reason))
                log.warning("round %d: %s failed to evaluate: %s", server_round, site, reply.error.reason)
                continue
            site = self._site_name(reply)
            metrics = _single_metric_record(reply)
            examples = _examples(metrics)
            if metrics is None or examples is None:
                reason = "reply has no valid metrics / num-examples"
                self.outcomes.append(SiteOutcome(server_round, "evaluate", site, node, REJECTED, reason))
                log.warning("round %d: evaluation from %s ignored: %s", server_round, site, reason)
                continue
            metrics[protocol.AGGREGATION_WEIGHT] = examples
            self.outcomes.append(SiteOutcome(server_round, "evaluate", site, node, ACCEPTED,
                                             metrics=_plain_metrics(metrics)))
            valid.append(reply)
        if not valid:
            return None
        _harmonise_metric_keys(valid, server_round)
        metrics = self.strategy.aggregate_evaluate(server_round, valid)
        if metrics is not None:
            self.evaluate_metrics[server_round] = _plain_metrics(metrics)
        return metrics

    def summary(self) -> None:
        log.info("update validation: norm bound %s (%s), min accepted updates %d, accept failures %s, %s weights",
                 self.validator.norm_bound, self.validator.on_oversized, self.min_accepted, self.accept_failures,
                 "equal" if self.uniform_weights else "example-count")
        self.strategy.summary()

    # -- helpers ---------------------------------------------------------------------------

    def _check_train_reply(self, server_round: int, reply: Message, reference: dict[str, np.ndarray]) -> SiteOutcome:
        node = reply.metadata.src_node_id
        if reply.has_error():
            node = self.sites.origin(server_round, reply)
            self.sites.failed(server_round, node, reply.error.reason)
            return SiteOutcome(server_round, "train", self._site_from_error(reply, node), node, FAILED,
                               reply.error.reason, key_sha256=self.sites.key_of(node))
        site = self._site_name(reply)
        content = reply.content
        # a site is who its key says: a reply under another name, or with a refused statement, is not aggregated
        problem = (self.sites.identity_problem(node, declared_name(content))
                   or self.sites.receive_statement(server_round, node, statement_text(content)))
        if problem is not None:
            return SiteOutcome(server_round, "train", site, node, REJECTED, problem, key_sha256=self.sites.key_of(node))
        metrics = _single_metric_record(reply)
        examples = _examples(metrics)
        if len(content.array_records) != 1 or metrics is None:
            return SiteOutcome(server_round, "train", site, node, REJECTED,
                               "reply must carry exactly one tensor record and one metric record")
        if examples is None:
            return SiteOutcome(server_round, "train", site, node, REJECTED,
                               "num-examples is missing, not a number, or not positive")
        key, record = next(iter(content.array_records.items()))
        check = self.validator.check(record_to_arrays(record), reference)
        if check.status == REJECTED:
            return SiteOutcome(server_round, "train", site, node, REJECTED, check.reason, check.norm,
                               _plain_metrics(metrics))
        if check.status == CLIPPED:
            content[key] = arrays_to_record(check.arrays)
            log.warning("round %d: %s: %s", server_round, site, check.reason)
        metrics[protocol.AGGREGATION_WEIGHT] = 1.0 if self.uniform_weights else examples
        return SiteOutcome(server_round, "train", site, node, check.status, check.reason, check.norm,
                           _plain_metrics(metrics), self._site_privacy(reply), self.sites.key_of(node))

    def _site_name(self, reply: Message) -> str:
        """The site's name: its registered key's (deployments), else the name it declares."""
        node = reply.metadata.src_node_id
        declared = declared_name(reply.content)
        if declared:
            self.sites.declared[node] = declared
        self.node_sites[node] = self.sites.name_of(node)
        return self.node_sites[node]

    @staticmethod
    def _site_privacy(reply: Message) -> dict[str, Any] | None:
        record = reply.content.config_records.get(protocol.SITE)
        return decode_site_privacy(record.get(protocol.SITE_PRIVACY)) if record is not None else None

    def _site_from_error(self, reply: Message, node: int | None = None) -> str:
        node = reply.metadata.src_node_id if node is None else node
        if self.sites.deployed_registry:
            return self.sites.name_of(node)
        match = _SITE_IN_REASON.search(reply.error.reason or "")
        if match:
            return match.group(1)
        return self.node_sites.get(node, f"node {node}")


def _single_metric_record(reply: Message) -> MetricRecord | None:
    records = reply.content.metric_records
    return next(iter(records.values())) if len(records) == 1 else None


def _examples(metrics: MetricRecord | None) -> float | None:
    if metrics is None:
        return None
    value = metrics.get(protocol.NUM_EXAMPLES)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _plain_metrics(metrics: MetricRecord) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if key != protocol.AGGREGATION_WEIGHT and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _harmonise_metric_keys(replies: list[Message], server_round: int) -> None:
    """Keep only the metric keys every reply has (Flower refuses to aggregate otherwise)."""
    key_sets = [set(next(iter(reply.content.metric_records.values())).keys()) for reply in replies]
    shared = set.intersection(*key_sets)
    extra = set.union(*key_sets) - shared
    if extra:
        log.warning("round %d: metrics %s are not reported by every site and are left out of the aggregate",
                    server_round, sorted(extra))
        for reply in replies:
            metrics = next(iter(reply.content.metric_records.values()))
            for key in extra & set(metrics.keys()):
                del metrics[key]
