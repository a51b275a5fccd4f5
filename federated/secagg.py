"""Secure aggregation (SecAgg+) mode: the server learns only the weighted sum of the sites' updates.

In flwr 1.42 SecAgg+ exists only in Flower's legacy API: the server runs a
``SecAggPlusWorkflow`` inside a ``DefaultWorkflow`` with a ``LegacyContext`` and a legacy
``flwr.server.strategy.FedAvg``; each site's ``train`` passes through ``secaggplus_mod``,
which masks the site's tensors so that the masks cancel only in the sum. This module wires
that as its own mode of the same ServerApp and ClientApp:

- sites send their *update* (w_site − w_global), not their weights: updates are small, so
  the fixed-point quantization SecAgg+ needs (each coordinate clipped to
  ± ``secagg_clipping_range`` and mapped onto 2²² levels) loses little precision;
- each update is weighted by the site's example count (``num_examples / secagg_max_weight``
  inside the protocol); the server adds the aggregated update to the global model;
- a site may drop out mid-round: its mask is reconstructed from
  ``secagg_reconstruction_threshold`` shares held by the others.

What SecAgg+ can be combined with
---------------------------------
Yes: FedAvg and FedProx, ``privacy.mode: dp`` (each site's sample-level DP-SGD is applied
before masking, and each site still reports its ε), LoRA / top-k / full transfer,
server-side evaluation, failures of individual sites (within the threshold).

No: central DP (``central_dp``: server-side clipping needs each site's update, which is
exactly what SecAgg+ hides — a ConfigError), per-site update validation
(``update_norm_bound``; only the aggregate can be checked, which is done: a non-finite
aggregate is rejected and the model stays unchanged; every coordinate is bounded by
``secagg_clipping_range``), and federated evaluation (the legacy evaluate path is not wired;
the server evaluates on its held-out split instead). Metrics other than the tensors
(loss, ε, example count) are sent in the clear.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server.strategy import FedAvg as LegacyFedAvg

from federated import protocol
from federated.site_identity import SiteBook
from federated.site_privacy import decode_site_privacy, encode_site_privacy
from federated.site_training import read_instructions, train_site_round
from federated.update_validation import ACCEPTED, FAILED, SiteOutcome

log = logging.getLogger(__name__)

TENSOR_NAMES = "tensor-names"
QUANTIZATION_RANGE = 2**22


# -- site side ---------------------------------------------------------------------------------

def secagg_when_requested(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Route SecAgg+ protocol messages through Flower's ``secaggplus_mod``; pass others through."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def is_legacy_fit(msg: Message) -> bool:
    return "fitins.parameters" in msg.content.array_records


def train_legacy(msg: Message, context: Context) -> Message:
    """The SecAgg+ round's training step: train as usual, reply with the update as a legacy FitRes."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    instructions = read_instructions(fitins.config, context.node_config)
    names = json.loads(str(fitins.config[TENSOR_NAMES]))
    global_arrays = dict(zip(names, parameters_to_ndarrays(fitins.parameters)))
    report = train_site_round(instructions, global_arrays, context.node_config, context.run_id)
    update = [np.asarray(report.arrays[name], dtype=np.float32) - np.asarray(global_arrays[name], dtype=np.float32)
              for name in names]
    bound = float(instructions.config.federated.secagg_clipping_range)
    beyond = sum(int(np.count_nonzero(np.abs(values) > bound)) for values in update)
    if beyond:
        log.warning("site %s: %d update coordinates exceed ± secagg_clipping_range = %g and are clipped by SecAgg+",
                    report.site, beyond, bound)
    metrics: dict[str, Any] = {key: float(value) for key, value in report.metrics.items()}
    metrics[protocol.SITE] = report.site
    if report.privacy is not None:  # legacy metrics may hold strings: the accountant inputs as JSON
        metrics[protocol.SITE_PRIVACY] = encode_site_privacy(report.privacy)
    if report.statement is not None:
        metrics[protocol.SITE_STATEMENT] = json.dumps(report.statement, sort_keys=True)
    fitres = FitRes(status=Status(Code.OK, "ok"), parameters=ndarrays_to_parameters(update),
                    num_examples=int(report.metrics[protocol.NUM_EXAMPLES]), metrics=metrics)
    return Message(content=compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


# -- server side -------------------------------------------------------------------------------

class SecAggUpdateAverage(LegacyFedAvg):
    """Legacy FedAvg over the SecAgg+ sum of updates: global ← global + weighted mean update.

    Records each round like `UpdateGuard` does (outcomes, skipped rounds, metrics, bytes),
    so the run's records read the same in both modes.
    """

    def __init__(self, names: list[str], initial: dict[str, np.ndarray], *, min_accepted: int, **kwargs):
        super().__init__(**kwargs)
        self.names = names
        self.current = [np.asarray(initial[name], dtype=np.float32) for name in names]
        self.min_accepted = min_accepted
        self.outcomes: list[SiteOutcome] = []
        self.skipped_rounds: dict[int, str] = {}
        self.train_metrics: dict[int, dict[str, float]] = {}
        self.evaluate_metrics: dict[int, dict[str, float]] = {}
        self.bytes_down: dict[int, int] = {}
        self.bytes_up: dict[int, int] = {}
        self.sampled: dict[int, int] = {}
        self.sites = SiteBook()  # names from registered keys, rounds sent, signed privacy statements

    def configure_fit(self, server_round, parameters: Parameters, client_manager):
        self.current = [np.asarray(value, dtype=np.float32) for value in parameters_to_ndarrays(parameters)]
        instructions = super().configure_fit(server_round, parameters, client_manager)
        self.sampled[server_round] = len(instructions)
        self.sites.sent_training(server_round, [proxy.node_id for proxy, _ in instructions])
        size = sum(value.nbytes for value in self.current)
        self.bytes_down[server_round] = size * len(instructions)
        # every site sends its masked, quantized update: one 4-byte integer per coordinate
        self.bytes_up[server_round] = sum(value.size for value in self.current) * 4 * len(instructions)
        return instructions

    def aggregate_fit(self, server_round, results, failures):
        for failure in failures:
            reason = str(getattr(failure, "reason", failure))
            site = _site_in(reason) or "a site"
            self.outcomes.append(SiteOutcome(server_round, "train", site, -1, FAILED, reason))
            log.warning("round %d: %s failed: %s", server_round, site, reason)
        site_metrics = []
        for proxy, fitres in results:
            metrics = {key: float(value) for key, value in fitres.metrics.items()
                       if isinstance(value, (int, float)) and not isinstance(value, bool)}
            site_metrics.append((fitres.num_examples, metrics))
            declared = fitres.metrics.get(protocol.SITE)
            # a masked update cannot be taken out of the sum: a problem is recorded (and fails the privacy checks)
            problem = (self.sites.identity_problem(proxy.node_id, str(declared) if declared else None)
                       or self.sites.receive_statement(server_round, proxy.node_id,
                                                       fitres.metrics.get(protocol.SITE_STATEMENT)))
            if problem is not None:
                log.warning("round %d: node %s: %s", server_round, proxy.node_id, problem)
            self.outcomes.append(SiteOutcome(server_round, "train", self.sites.name_of(proxy.node_id),
                                             proxy.node_id, ACCEPTED, problem, None, metrics,
                                             decode_site_privacy(fitres.metrics.get(protocol.SITE_PRIVACY)),
                                             self.sites.key_of(proxy.node_id)))
        reason = None
        if failures and not self.accept_failures:
            reason = f"{len(failures)} site(s) failed and accept_failures is false"
        elif len(results) < self.min_accepted:
            reason = f"only {len(results)} site(s) completed, fewer than min_train_sites = {self.min_accepted}"
        if reason is not None:
            self.skipped_rounds[server_round] = reason
            log.warning("round %d: not aggregated, the global model stays unchanged: %s", server_round, reason)
            return None, {}
        aggregated, _ = super().aggregate_fit(server_round, results, [])
        update = parameters_to_ndarrays(aggregated)
        if not all(np.all(np.isfinite(values)) for values in update):
            self.skipped_rounds[server_round] = "the securely aggregated update holds non-finite values"
            log.error("round %d: the aggregate holds non-finite values; the global model stays unchanged",
                      server_round)
            return None, {}
        new_global = [current + delta.astype(np.float32) for current, delta in zip(self.current, update)]
        self.train_metrics[server_round] = _weighted_metrics(site_metrics)
        return ndarrays_to_parameters(new_global), self.train_metrics[server_round]


def _site_in(reason: str) -> str | None:
    import re

    match = re.search(r"site (\S+?):", reason)
    return match.group(1) if match else None


def _weighted_metrics(site_metrics: list[tuple[int, dict[str, float]]]) -> dict[str, float]:
    total = sum(examples for examples, _ in site_metrics) or 1
    result: dict[str, float] = {}
    for examples, metrics in site_metrics:
        for key, value in metrics.items():
            if key in (protocol.EPSILON, protocol.DELTA):
                result[key] = max(result.get(key, -math.inf), value)
            elif key == protocol.NUM_EXAMPLES:
                result[key] = result.get(key, 0.0) + value
            else:
                result[key] = result.get(key, 0.0) + value * examples / total
    return result


def run_secagg(grid, context: Context, config, initial: dict[str, np.ndarray], instructions: dict[str, Any],
               book) -> SecAggUpdateAverage:
    """Run all rounds with SecAgg+; returns the strategy holding the round records."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from federated.strategy import sites_per_round
    from federated.task import arrays_to_record

    federated = config.federated
    names = sorted(initial)
    per_round = sites_per_round(federated)

    def fit_config(server_round: int) -> dict[str, Any]:
        return {**instructions, protocol.SERVER_ROUND: server_round, TENSOR_NAMES: json.dumps(names),
                **({protocol.PROXIMAL_MU: federated.proximal_mu} if federated.strategy == "fedprox" else {})}

    def evaluate(server_round: int, ndarrays, _config) -> tuple[float, dict[str, float]] | None:
        record = book.evaluate(server_round, arrays_to_record(dict(zip(names, ndarrays))))
        return (math.nan, dict(record)) if record is not None else None

    strategy = SecAggUpdateAverage(
        names, initial, min_accepted=federated.min_train_sites,
        fraction_fit=federated.fraction_train, fraction_evaluate=0.0,
        min_fit_clients=per_round, min_evaluate_clients=0,
        min_available_clients=max(federated.min_available_sites, per_round),
        evaluate_fn=evaluate, on_fit_config_fn=fit_config, accept_failures=federated.accept_failures,
        initial_parameters=ndarrays_to_parameters([initial[name] for name in names]),
    )
    # an integer threshold must stay below the number of shares; with two sites both shares are needed
    threshold = min(federated.secagg_reconstruction_threshold, per_round - 1) if per_round > 2 else 1.0
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=per_round, reconstruction_threshold=threshold,
        max_weight=federated.secagg_max_weight, clipping_range=federated.secagg_clipping_range,
        quantization_range=QUANTIZATION_RANGE, timeout=federated.round_timeout_s,
    ))
    if federated.federated_evaluation:
        log.info("SecAgg+ mode: sites do not evaluate the global model (federated_evaluation is ignored); "
                 "the server evaluates it on its held-out validation split")
    book.source = strategy  # the round book reads this round's outcomes while the rounds run
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=federated.rounds,
                                                        round_timeout=federated.round_timeout_s),
                           strategy=strategy)
    log.info("SecAgg+: %d sites per round, reconstruction threshold %d, coordinates clipped to ±%g, max weight %g",
             per_round, per_round if threshold == 1.0 else threshold, federated.secagg_clipping_range,
             federated.secagg_max_weight)
    workflow(grid, legacy)
    return strategy
