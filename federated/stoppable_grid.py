"""A Grid wrapper that bounds every wait: Ctrl-C, a run deadline, and sites that never connect.

In Flower's in-process simulation the ServerApp runs in a (non-daemon) thread. When the user
interrupts the main thread, Flower shuts the sites down, but the server thread would keep
waiting for their replies until the round timeout (an hour by default) and keep the process
alive. `StoppableGrid` polls for replies itself and raises `RunStopped` as soon as its stop
event is set, also while the strategy waits for sites to connect.

Flower's strategies wait for ``min_available_nodes`` connected sites with no time limit
(``sample_nodes`` polls ``get_node_ids`` once a second, forever): a site that is gone for
good would hang the coordinator. The round loop (`federated.round_loop`) therefore tells the
grid, before each phase, how many sites the phase needs and until when it may wait
(`expect`); `get_node_ids` raises `SitesNotConnected` once that time has passed with too few
sites online. Every call also checks the run's overall deadline (`RunDeadlinePassed`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

POLL_SECONDS = 0.1


class RunStopped(RuntimeError):
    """The run was stopped from outside (Ctrl-C) before it finished."""


class RunDeadlinePassed(RuntimeError):
    """The run's overall deadline (``federated.run_timeout_s``) passed before it finished."""


class SitesNotConnected(RuntimeError):
    """Fewer sites than a phase needs stayed connected until its wait ended."""

    def __init__(self, connected: list[int], needed: int, waited_s: float):
        super().__init__(f"{len(connected)} site(s) connected, {needed} needed, after waiting {waited_s:.0f}s")
        self.connected = connected
        self.needed = needed
        self.waited_s = waited_s


class StoppableGrid(Grid):
    """Wraps `grid`; every call checks `stop`, the run deadline and the current wait for sites.

    Parameters
    ----------
    grid
        The grid Flower gave the ServerApp (or a `LocalGrid`).
    stop
        Set from outside to end the run at the next poll.
    deadline
        ``time.monotonic()`` value past which the run fails (None: no overall deadline).
    """

    def __init__(self, grid: Grid, stop: threading.Event, deadline: float | None = None):
        self.grid = grid
        self.stop = stop
        self.deadline = deadline
        self._needed = 0
        self._wait_started = 0.0
        self._wait_until: float | None = None

    def expect(self, needed: int, wait_s: float) -> None:
        """The next phase needs `needed` connected sites and waits for them at most `wait_s` seconds."""
        self._needed = needed
        self._wait_started = time.monotonic()
        self._wait_until = self._wait_started + wait_s

    def _check(self) -> None:
        if self.stop.is_set():
            raise RunStopped("the federated run was stopped before it finished")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise RunDeadlinePassed("the federated run passed its overall deadline (federated.run_timeout_s)")

    def set_run(self, run) -> None:
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        nodes = list(self.grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) < self._needed and self._wait_until is not None and now >= self._wait_until:
            raise SitesNotConnected(nodes, self._needed, now - self._wait_started)
        return nodes

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        pending = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            for reply in self.pull_messages(list(pending)):
                replies.append(reply)
                pending.discard(reply.metadata.reply_to_message_id)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                break
            self.stop.wait(POLL_SECONDS)
            self._check()
        return replies
