"""A Flower ``Grid`` whose sites run in this process, one after the other.

Flower's simulation engine runs every ClientApp in a Ray worker: realistic isolation, but
Ray costs seconds to start and one model copy per worker. `LocalGrid` delivers each message
straight to the ClientApp in the calling process instead and returns its reply (or, when the
ClientApp raises, an error reply carrying the exception, exactly as a SuperNode would). The
ServerApp code cannot tell the difference, so the same strategy, validation, DP and hand-off
run unchanged. Use it to debug a site's code with a plain debugger, on machines without Ray,
and for fast tests (``run_federated(..., backend="local")``, ``secure-ft federate --local``).

Each site keeps its own Flower ``Context`` (with its persistent ``state``) across rounds, as
a SuperNode does.
"""

from __future__ import annotations

import copy
import logging
import secrets
import time
from collections.abc import Iterable, Mapping
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)


class LocalGrid(Grid):
    """Runs `client_app` in-process for every node in `node_configs` (one Context per node)."""

    def __init__(self, client_app: ClientApp, node_configs: list[Mapping[str, object]], run_id: int | None = None):
        self.client_app = client_app
        self._run = Run.create_empty(run_id if run_id is not None else secrets.randbits(63))
        # Messages created in this process get their sender identity from TaskIdentity
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        TaskIdentity.task_id = 1
        self.contexts = {
            1000 + index: Context(run_id=self._run.run_id, node_id=1000 + index, node_config=dict(config),
                                  state=RecordDict(), run_config={})
            for index, config in enumerate(node_configs)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            self._replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self.contexts.get(message.metadata.dst_node_id)
        if context is None:
            return self._reply_error(message, ErrorCode.UNKNOWN, f"no node {message.metadata.dst_node_id}")
        started = time.perf_counter()
        delivered = copy.deepcopy(message)  # a SuperNode gets its own copy (the server may reuse content objects)
        try:
            reply = self.client_app(message=delivered, context=context)
        except Exception as error:  # what a SuperNode does: report, do not crash the server
            log.debug("ClientApp on node %d raised", context.node_id, exc_info=True)
            return self._reply_error(message, ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                     f"{type(error)}:<'{error}'>")
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        log.debug("node %d answered %s in %.2fs", context.node_id, message.metadata.message_type,
                  time.perf_counter() - started)
        return reply

    @staticmethod
    def _reply_error(message: Message, code: int, reason: str) -> Message:
        reply = Message(Error(code=code, reason=reason), reply_to=message)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply
