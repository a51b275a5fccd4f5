"""The rounds of a federated run, each bounded in time, resumable after any aggregated round.

Flower's ``Strategy.start`` runs rounds 1…R in one call: it cannot start at round k, it waits
for sites to connect with no time limit, and it gives no hook between rounds. `RoundLoop`
runs the same steps per round with the same strategy objects (configure → send and receive
→ aggregate, for training and then federated evaluation, then the server's evaluation), and
adds what a deployment needs:

* **bounded waits.** Before each phase the grid is told how many sites the phase needs and
  that it may wait ``round_timeout_s`` for them (`StoppableGrid.expect`); the replies are
  then awaited for ``round_timeout_s`` more. A round that ends with fewer than
  ``min_train_sites`` usable updates *because sites did not answer or were not connected*
  fails the run with `SitesMissing`, naming those sites by name. A round with enough updates
  goes on without the silent sites (they are recorded as ``missing`` in the round's entry),
  and a site that comes back is sampled again from the next round on;
* **checkpoints.** After every round `on_round_end` gets the round number and the global
  tensors (the coordinator writes its checkpoint there), and a resumed run starts at
  ``first_round`` from the tensors it saved, with the same round numbers the sites saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp.strategy import Strategy

from federated.round_book import RoundBook
from federated.stoppable_grid import SitesNotConnected, StoppableGrid
from secure_ft.errors import SecureFTError
from secure_ft.records.config import FederatedConfig

log = logging.getLogger(__name__)


class SitesMissing(SecureFTError):
    """A round ended without enough updates because sites did not answer or were not connected."""

    def __init__(self, message: str, server_round: int, missing: list[str]):
        super().__init__(message)
        self.server_round = server_round
        self.missing = missing


def sites_needed(config: FederatedConfig) -> int:
    """Connected sites a training round waits for (Flower's ``sample_nodes`` condition)."""
    from federated.strategy import sites_per_round

    needed = max(config.min_available_sites, config.min_train_sites)
    return max(needed, sites_per_round(config)) if config.central_dp != "none" else needed


@dataclass
class RoundLoop:
    """Runs rounds `first_round`…``config.rounds`` of `strategy` on `grid`.

    Parameters
    ----------
    strategy
        The server strategy (`UpdateGuard` around FedAvg / FedProx / central DP).
    grid
        The grid, wrapped so that its waits are bounded.
    config
        The run's federated section (rounds, timeouts, site counts).
    book
        The round book; its `evaluate` is the server-side evaluation of every round, and it
        records which sites were missing.
    site_name
        The name of a node id (registry, or what the site said in an earlier round).
    known_nodes
        Node ids the coordinator expects (registered, or seen in earlier rounds): those not
        connected when a wait ends are the missing ones.
    on_round_end
        Called after each round's server-side evaluation with the round and the global tensors.
    """

    strategy: Strategy
    grid: StoppableGrid
    config: FederatedConfig
    book: RoundBook
    site_name: Callable[[int], str]
    known_nodes: Callable[[], set[int]]
    on_round_end: Callable[[int, ArrayRecord], None] = lambda server_round, arrays: None
    seen_nodes: set[int] = field(default_factory=set)

    def run(self, arrays: ArrayRecord, train_config: ConfigRecord, evaluate_config: ConfigRecord,
            first_round: int = 1) -> ArrayRecord:
        """Run the remaining rounds; return the last global tensors."""
        timeout = self.config.round_timeout_s
        if first_round == 1:
            self.book.evaluate(0, arrays)
        for server_round in range(first_round, self.config.rounds + 1):
            log.info("[round %d/%d]", server_round, self.config.rounds)
            messages = self._configure(server_round, lambda: self.strategy.configure_train(
                server_round, arrays, ConfigRecord(dict(train_config)), self.grid))
            replies = list(self.grid.send_and_receive(messages, timeout=timeout))
            missing = self._silent(messages, replies)
            aggregated, _ = self.strategy.aggregate_train(server_round, replies)
            self.book.missing[server_round] = missing
            if aggregated is None and missing:
                self._fail(server_round, missing, f"sent no update (unreachable, or no answer within "
                                                  f"round_timeout_s = {timeout:g}s)")
            if missing:
                log.warning("round %d: %s did not answer within %gs; aggregated without them", server_round,
                            ", ".join(missing), timeout)
            if aggregated is not None:
                arrays = aggregated
            self._evaluate_at_sites(server_round, arrays, evaluate_config)
            self.book.evaluate(server_round, arrays)
            self.on_round_end(server_round, arrays)
        return arrays

    def _configure(self, server_round: int, configure: Callable[[], object]) -> list[Message]:
        self.grid.expect(sites_needed(self.config), self.config.round_timeout_s)
        try:
            messages = list(configure())
        except SitesNotConnected as error:
            missing = sorted(self.site_name(node) for node in (self.known_nodes() | self.seen_nodes)
                             - set(error.connected))
            self.book.missing[server_round] = missing
            self._fail(server_round, missing, f"not connected ({len(error.connected)} of the {error.needed} sites "
                                              f"a round needs were, after waiting round_timeout_s = "
                                              f"{error.waited_s:.0f}s)")
        self.seen_nodes |= {message.metadata.dst_node_id for message in messages}
        return messages

    def _evaluate_at_sites(self, server_round: int, arrays: ArrayRecord, evaluate_config: ConfigRecord) -> None:
        try:
            messages = self._configure(server_round, lambda: self.strategy.configure_evaluate(
                server_round, arrays, ConfigRecord(dict(evaluate_config)), self.grid))
        except SitesMissing as error:  # evaluation at the sites is a report, not a step of training
            log.warning("round %d: no federated evaluation: %s", server_round, error)
            return
        if not messages:
            return
        replies = list(self.grid.send_and_receive(messages, timeout=self.config.round_timeout_s))
        missing = self._silent(messages, replies)
        if missing:
            log.warning("round %d: %s did not send an evaluation within %gs", server_round, ", ".join(missing),
                        self.config.round_timeout_s)
        self.strategy.aggregate_evaluate(server_round, replies)

    def _silent(self, messages: list[Message], replies: list[Message]) -> list[str]:
        answered = {reply.metadata.src_node_id for reply in replies}
        return sorted(self.site_name(message.metadata.dst_node_id) for message in messages
                      if message.metadata.dst_node_id not in answered)

    def _fail(self, server_round: int, missing: list[str], what: str) -> None:
        names = ", ".join(missing) or "(no site is known by name yet)"
        raise SitesMissing(
            f"round {server_round}/{self.config.rounds}: site(s) {names} {what}; the round has fewer than "
            f"min_train_sites = {self.config.min_train_sites} usable updates. Bring the site(s) back (or lower "
            "federated.min_train_sites / min_available_sites to let a run go on without a site)",
            server_round, missing)
