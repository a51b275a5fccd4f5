"""Dynamic batching: concurrent submissions share one call, each gets its own rows, errors reach everyone."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import numpy as np
import pytest

from secure_ft.serving.batching import BatcherOverloaded, BatcherStopped, DynamicBatcher


class Recorder:
    """A fake forward pass: row i is [len(text_i)]; remembers each batch."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.batches: list[list[str]] = []
        self.delay, self.fail = delay, fail
        self.threads: set[str] = set()

    def __call__(self, texts):
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(texts))
        if self.delay:
            threading.Event().wait(self.delay)
        if self.fail:
            raise RuntimeError("forward failed")
        return np.array([[len(text)] for text in texts], dtype=np.float32)


def _run(coroutine):
    return asyncio.run(coroutine)


@contextlib.asynccontextmanager
async def running(batcher: DynamicBatcher):
    """`batcher` started, and stopped again whatever the scenario does."""
    await batcher.start()
    try:
        yield batcher
    finally:
        await batcher.stop()


def test_concurrent_requests_share_one_forward_pass_and_get_their_own_rows():
    recorder = Recorder()

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=32, max_wait_ms=50)) as batcher:
            requests = [["a" * (i + 1)] * (1 + i % 3) for i in range(8)]
            results = await asyncio.gather(*(batcher.submit(texts) for texts in requests))
        return requests, results

    requests, results = _run(scenario())
    for texts, rows in zip(requests, results):
        assert rows.tolist() == [[len(text)] for text in texts]
    assert len(recorder.batches) == 1 and len(recorder.batches[0]) == sum(len(t) for t in requests)
    assert all(name.startswith("secure-ft-forward") for name in recorder.threads)  # never on the event loop


def test_batches_respect_the_size_limit_and_a_large_request_is_split():
    recorder = Recorder()

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=4, max_wait_ms=20)) as batcher:
            sizes = [3, 3, 6, 1]
            results = await asyncio.gather(*(batcher.submit([f"t{n}-{i}" for i in range(n)]) for n in sizes))
        return sizes, results

    sizes, results = _run(scenario())
    for size, rows in zip(sizes, results):  # each request gets its own rows, in order, however it was split
        assert rows.tolist() == [[len(f"t{size}-{i}")] for i in range(size)]
    assert all(len(batch) <= 4 for batch in recorder.batches)
    assert sorted(text for batch in recorder.batches for text in batch) == sorted(
        f"t{n}-{i}" for n in sizes for i in range(n))


def test_a_small_request_is_not_stuck_behind_a_large_one():
    recorder = Recorder(delay=0.05)

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=8, max_wait_ms=0)) as batcher:
            large = asyncio.create_task(batcher.submit([f"L{i}" for i in range(64)]))
            await asyncio.sleep(0.01)  # the large request's first batch is running
            await batcher.submit(["small"])
            await large

    _run(scenario())
    # 64 texts need 8 passes of 8; the small one ran in the second pass (shared with the large one), not the ninth
    assert next(i for i, batch in enumerate(recorder.batches) if "small" in batch) == 1, recorder.batches
    assert len(recorder.batches[1]) == 8
    assert sum(len(batch) for batch in recorder.batches) == 65 and len(recorder.batches) == 9


def test_queued_texts_past_the_limit_are_refused_and_cancelled_requests_free_their_places():
    recorder = Recorder(delay=0.2)

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=4, max_wait_ms=0, max_queued_texts=10)) as batcher:
            first = asyncio.create_task(batcher.submit(["a"] * 8))
            await asyncio.sleep(0.01)
            with pytest.raises(BatcherOverloaded):
                await batcher.submit(["b"] * 3)  # 8 + 3 > 10
            queued_then = batcher.queued_texts
            first.cancel()  # the client went away
            await asyncio.sleep(0)
            after_cancel = batcher.queued_texts
            rows = await batcher.submit(["c"] * 10)
        return queued_then, after_cancel, rows

    queued_then, after_cancel, rows = _run(scenario())
    assert (queued_then, after_cancel, len(rows)) == (8, 0, 10)


def test_max_batch_size_one_runs_every_request_alone():
    recorder = Recorder()

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=1, max_wait_ms=0)) as batcher:
            await asyncio.gather(*(batcher.submit([str(i)]) for i in range(5)))

    _run(scenario())
    assert [len(batch) for batch in recorder.batches] == [1] * 5


def test_a_failing_forward_pass_fails_every_request_of_its_batch_and_the_worker_survives():
    recorder = Recorder(fail=True)

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=8, max_wait_ms=20)) as batcher:
            outcomes = await asyncio.gather(*(batcher.submit(["x"]) for _ in range(3)), return_exceptions=True)
            recorder.fail = False
            after = await batcher.submit(["yy"])
        return outcomes, after

    outcomes, after = _run(scenario())
    assert all(isinstance(outcome, RuntimeError) for outcome in outcomes)
    assert after.tolist() == [[2]]


def test_stopping_fails_queued_requests_and_refuses_new_ones():
    recorder = Recorder(delay=0.2)

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        first = asyncio.create_task(batcher.submit(["a"]))
        queued = asyncio.create_task(batcher.submit(["b"]))
        await asyncio.sleep(0.05)  # the first is in its forward pass, the second waits
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(["c"])
        return await asyncio.gather(first, queued, return_exceptions=True)

    first, queued = _run(scenario())
    assert isinstance(first, BatcherStopped) and isinstance(queued, BatcherStopped)


def test_a_lone_client_is_not_delayed_by_the_wait_for_company():
    recorder = Recorder()

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=32, max_wait_ms=400)) as batcher:
            loop = asyncio.get_running_loop()
            started = loop.time()
            for index in range(5):  # one request at a time: every batch equals the previous one (1)
                await batcher.submit([str(index)])
            return loop.time() - started

    assert _run(scenario()) < 0.4  # 5 requests waiting out max_wait would take 2 s
    assert [len(batch) for batch in recorder.batches] == [1] * 5


def test_a_batch_waits_for_as_many_requests_as_the_previous_one_held():
    recorder = Recorder()

    async def scenario():
        async with running(DynamicBatcher(recorder, max_batch_size=32, max_wait_ms=2000)) as batcher:
            await asyncio.gather(*(batcher.submit([f"a{i}"]) for i in range(3)))  # a batch of 3

            async def late(delay, text):
                await asyncio.sleep(delay)
                return await batcher.submit([text])

            loop = asyncio.get_running_loop()
            started = loop.time()
            await asyncio.gather(late(0, "b0"), late(0.05, "b1"), late(0.1, "b2"))
            return loop.time() - started

    took = _run(scenario())
    assert [len(batch) for batch in recorder.batches] == [3, 3]  # the stragglers joined the first one
    assert took < 1.0  # and the batch ran once it held 3, not after max_wait


def test_a_cost_budget_bounds_each_batch_so_a_small_request_waits_for_little_work():
    recorder = Recorder(delay=0.05)

    async def scenario():
        batcher = DynamicBatcher(recorder, max_batch_size=32, max_wait_ms=0, cost=len, max_batch_cost=400)
        async with running(batcher):
            large = asyncio.create_task(batcher.submit(["L" * 100] * 16))  # 16 texts of cost 100
            await asyncio.sleep(0.01)
            await batcher.submit(["s"])
            await large

    _run(scenario())
    assert len(recorder.batches[0]) == 4  # 4 texts of cost 100 fill the budget of 400
    assert "s" in recorder.batches[1]  # the second pass, behind 4 texts' work, not 16
    assert all(sum(len(text) for text in batch) <= 400 for batch in recorder.batches)
    oversized = Recorder()

    async def alone():
        async with running(DynamicBatcher(oversized, max_batch_size=8, max_wait_ms=0, cost=len,
                                          max_batch_cost=10)) as batcher:
            return await batcher.submit(["x" * 50, "y"])

    rows = _run(alone())  # a text over the budget still runs, alone in its batch
    assert rows.tolist() == [[50], [1]] and [len(batch) for batch in oversized.batches] == [1, 1]
