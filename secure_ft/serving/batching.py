"""Dynamic, fair batching: concurrent requests share forward passes, and no request hogs them.

Requests wait in an asyncio queue; one worker forms a batch of at most ``max_batch_size``
texts, waits at most ``max_wait_ms`` for more, runs it in a single worker thread so the
event loop keeps accepting requests, and hands each request its own rows once all of its
texts have run. While a forward pass runs, new requests pile up and join the next batch, so
the batch size follows the load. The wait ends early once the batch holds as many requests
as the previous one did: a lone client is never delayed, while clients whose answers just
went out are given the time to send again and join.

Fairness: a request larger than the batch (or than its share of it) is split. Each batch is
filled round-robin, a text at a time from each waiting request, and a request that still has
texts left goes behind the requests that got none. A batch is bounded in texts and, given a
cost per text (tokens, on a CPU), in cost, so one batch never holds the worker long. A
one-text request arriving behind a 64-text one therefore runs in the next, short forward
pass, not after all 64.

Back-pressure: at most ``max_queued_texts`` texts are admitted (waiting or running); a
request that would go past it is refused at once with :class:`BatcherOverloaded` (the server
answers 503 with ``Retry-After``). A request whose client went away (its future cancelled)
is dropped from the queue, and its texts no longer count.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class BatcherStopped(RuntimeError):
    """The server is shutting down; the request was not run."""


class BatcherOverloaded(RuntimeError):
    """Admitting the request would queue more texts than the limit; retry later."""


@dataclass(eq=False)
class _Pending:
    texts: Sequence[str]
    future: asyncio.Future = field(repr=False)
    rows: np.ndarray | None = field(default=None, repr=False)
    scheduled: int = 0  # texts handed to a forward pass so far (a prefix of `texts`)
    finished: int = 0  # texts whose rows came back

    @property
    def waiting(self) -> int:
        return len(self.texts) - self.scheduled


@dataclass(eq=False)
class _Slice:
    pending: _Pending
    start: int
    end: int


class DynamicBatcher:
    """Gathers concurrent ``submit`` calls into fair batches for `run_batch`.

    Parameters
    ----------
    run_batch
        Maps a list of texts to an array with one row per text; runs in a worker thread.
    max_batch_size
        Most texts in one call of `run_batch` (1: one text per call).
    max_wait_ms
        How long the worker waits for more requests once it holds some.
    on_batch
        Called with the number of texts of each batch that ran (metrics).
    max_queued_texts
        Most texts admitted at once (waiting or running); None: no limit.
    cost, max_batch_cost
        Estimated cost of one text (e.g. its tokens) and the most a batch may cost (None: no
        limit). On a CPU a forward pass takes about its tokens' time, so a cost budget bounds
        how long a batch holds the worker, and so how long a newly arrived request waits.
    """

    def __init__(self, run_batch: Callable[[list[str]], np.ndarray], max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, on_batch: Callable[[int], None] | None = None,
                 max_queued_texts: int | None = None, cost: Callable[[str], float] | None = None,
                 max_batch_cost: float | None = None):
        self.run_batch = run_batch
        self.cost = cost or (lambda text: 1.0)
        self.max_batch_cost = max_batch_cost
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch or (lambda size: None)
        self.max_queued_texts = max_queued_texts
        self.queued_texts = 0  # admitted and not yet answered, cancelled or failed
        self._queue: asyncio.Queue[_Pending] | None = None
        self._active: deque[_Pending] = deque()  # requests with texts not yet scheduled, in service order
        self._running: list[_Slice] = []  # the batch in its forward pass
        self._last_requests = 1  # requests in the previous batch: how many a batch waits to gather
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        # one thread: forward passes never overlap, torch uses its own threads inside each
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="secure-ft-forward")
        self._worker = asyncio.create_task(self._work(), name="secure-ft-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
        if self._queue is not None:
            leftovers = [part.pending for part in self._running] + list(self._active)
            while not self._queue.empty():
                leftovers.append(self._queue.get_nowait())
            for pending in leftovers:
                if not pending.future.done():
                    pending.future.set_exception(BatcherStopped("the server is shutting down"))
            self._active, self._running = deque(), []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """The rows of `run_batch` for `texts`, computed together with other waiting requests.

        Raises
        ------
        BatcherOverloaded
            Admitting `texts` would exceed ``max_queued_texts``.
        BatcherStopped
            The batcher is not running.
        """
        if not self.running:
            raise BatcherStopped("the batcher is not running")
        if self.max_queued_texts is not None and self.queued_texts + len(texts) > self.max_queued_texts:
            raise BatcherOverloaded(f"{self.queued_texts} texts are queued; the limit is {self.max_queued_texts}")
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        try:
            self._queue.put_nowait(_Pending(texts, future))
            return await future
        finally:  # answered, failed or cancelled (the client went away): its texts no longer wait
            self.queued_texts -= len(texts)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._running = await self._gather()
            texts = [text for part in batch for text in part.pending.texts[part.start:part.end]]
            try:
                rows = await loop.run_in_executor(self._executor, self.run_batch, texts)
            except Exception as error:  # every request of the batch gets the error
                for part in batch:
                    self._fail(part.pending, error)
                self._running = []
                continue
            self.on_batch(len(texts))
            offset = 0
            for part in batch:
                size = part.end - part.start
                self._deliver(part, rows[offset:offset + size])
                offset += size
            self._running = []

    def _deliver(self, part: _Slice, rows: np.ndarray) -> None:
        pending = part.pending
        if pending.future.done():  # a client that went away leaves a cancelled future
            return
        if pending.rows is None:
            pending.rows = np.empty((len(pending.texts), *rows.shape[1:]), dtype=rows.dtype)
        pending.rows[part.start:part.end] = rows
        pending.finished += part.end - part.start
        if pending.finished == len(pending.texts):
            pending.future.set_result(pending.rows)

    def _fail(self, pending: _Pending, error: Exception) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)
        if pending in self._active:
            self._active.remove(pending)

    def _admit_queued(self) -> None:
        while not self._queue.empty():
            self._active.append(self._queue.get_nowait())

    def _drop_cancelled(self) -> None:
        self._active = deque(pending for pending in self._active if not pending.future.done())

    async def _gather(self) -> list[_Slice]:
        """The next batch: the waiting requests' texts, shared fairly, up to the size limit.

        With free places left, the batch waits up to max_wait for more requests, until it
        holds as many requests as the previous batch.
        """
        loop = asyncio.get_running_loop()
        while True:
            self._admit_queued()
            self._drop_cancelled()
            if not self._active:
                self._active.append(await self._queue.get())
                continue
            deadline = loop.time() + self.max_wait
            while (sum(p.waiting for p in self._active) < self.max_batch_size
                   and len(self._active) < self._last_requests):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    self._active.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
                self._admit_queued()
            self._drop_cancelled()
            if self._active:
                break
        batch = self._share_out()
        self._last_requests = len({id(part.pending) for part in batch})
        return batch

    def _share_out(self) -> list[_Slice]:
        """Round-robin, a text at a time, within the size and cost limits; unfinished requests move back.

        The batch's first text always goes, even when it alone costs more than the budget.
        """
        free_texts, free_cost = self.max_batch_size, self.max_batch_cost
        order = list(self._active)
        taken: dict[int, _Slice] = {}
        full: set[int] = set()  # requests whose next text does not fit this batch's cost any more
        while free_texts:
            moved = False
            for pending in order:
                if not free_texts:
                    break
                if id(pending) in full or not pending.waiting:
                    continue
                cost = self.cost(pending.texts[pending.scheduled])
                if free_cost is not None and taken and cost > free_cost:
                    full.add(id(pending))
                    continue
                part = taken.get(id(pending))
                if part is None:
                    part = taken[id(pending)] = _Slice(pending, pending.scheduled, pending.scheduled)
                pending.scheduled += 1
                part.end = pending.scheduled
                free_texts -= 1
                if free_cost is not None:
                    free_cost -= cost
                moved = True
            if not moved:
                break
        untouched = [p for p in order if id(p) not in taken]
        unfinished = [p for p in order if id(p) in taken and p.waiting]
        self._active = deque(untouched + unfinished)
        return list(taken.values())
