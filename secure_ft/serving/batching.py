"""Dynamic batching: concurrent requests share one forward pass.

Requests wait in an asyncio queue; one worker takes whatever is queued (up to
``max_batch_size`` texts), waits at most ``max_wait_ms`` for more, runs the batch in a
single worker thread so the event loop keeps accepting requests, and hands each request its
own rows. While a forward pass runs, new requests pile up and form the next batch, so the
batch size follows the load. The wait ends early once the batch holds as many requests as
the previous one did: a lone client is never delayed, while clients whose answers just went
out are given the time to send again and join. A request larger than ``max_batch_size`` runs
alone, never split.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class BatcherStopped(RuntimeError):
    """The server is shutting down; the request was not run."""


@dataclass
class _Pending:
    texts: Sequence[str]
    future: asyncio.Future = field(repr=False)


class DynamicBatcher:
    """Gathers concurrent ``submit`` calls into batches for `run_batch`.

    Parameters
    ----------
    run_batch
        Maps a list of texts to an array with one row per text; runs in a worker thread.
    max_batch_size
        Most texts in one call of `run_batch` (1: every request runs alone).
    max_wait_ms
        How long the worker waits for more requests once it holds some.
    on_batch
        Called with the number of texts of each batch that ran (metrics).
    """

    def __init__(self, run_batch: Callable[[list[str]], np.ndarray], max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, on_batch: Callable[[int], None] | None = None):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None  # taken from the queue but too big for the last batch
        self._running: list[_Pending] = []  # the batch in its forward pass
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
            leftovers = self._running + ([self._carry] if self._carry else [])
            while not self._queue.empty():
                leftovers.append(self._queue.get_nowait())
            for pending in leftovers:
                if not pending.future.done():
                    pending.future.set_exception(BatcherStopped("the server is shutting down"))
            self._carry, self._running = None, []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    async def submit(self, texts: Sequence[str]) -> np.ndarray:
        """The rows of `run_batch` for `texts`, computed together with other waiting requests."""
        if not self.running:
            raise BatcherStopped("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(texts, future))
        return await future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = self._running = await self._gather()
            texts = [text for pending in batch for text in pending.texts]
            try:
                rows = await loop.run_in_executor(self._executor, self.run_batch, texts)
            except Exception as error:  # every request of the batch gets the error
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                self._running = []
                continue
            self.on_batch(len(texts))
            start = 0
            for pending in batch:
                end = start + len(pending.texts)
                if not pending.future.done():  # a client that went away leaves a cancelled future
                    pending.future.set_result(rows[start:end])
                start = end
            self._running = []

    async def _gather(self) -> list[_Pending]:
        """The next batch: what is queued now, plus what arrives within max_wait, up to the size limit.

        Waiting stops once the batch holds as many requests as the previous batch.
        """
        loop = asyncio.get_running_loop()
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, size = [first], len(first.texts)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_size:
            try:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or len(batch) >= self._last_requests:
                        break
                    item = await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            if item.future.done():  # cancelled while queued
                continue
            if size + len(item.texts) > self.max_batch_size:
                self._carry = item
                break
            batch.append(item)
            size += len(item.texts)
        batch = [pending for pending in batch if not pending.future.done()]
        if not batch:
            return await self._gather()
        self._last_requests = len(batch)
        return batch
