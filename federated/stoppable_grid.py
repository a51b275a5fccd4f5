"""A Grid wrapper the caller can stop: Ctrl-C ends a simulation instead of leaving the server waiting.

In Flower's in-process simulation the ServerApp runs in a (non-daemon) thread. When the user
interrupts the main thread, Flower shuts the sites down, but the server thread would keep
waiting for their replies until the round timeout (an hour by default) and keep the process
alive. `StoppableGrid` polls for replies itself and raises `RunStopped` as soon as its stop
event is set, also while the strategy waits for sites to connect.
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


class StoppableGrid(Grid):
    def __init__(self, grid: Grid, stop: threading.Event):
        self.grid = grid
        self.stop = stop

    def _check(self) -> None:
        if self.stop.is_set():
            raise RunStopped("the federated run was stopped before it finished")

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
        return self.grid.get_node_ids()

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
