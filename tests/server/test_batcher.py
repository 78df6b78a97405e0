import asyncio
import threading
import time

import numpy as np
import pytest

from server.admission import Overloaded
from server.batcher import Batcher, collect_batch


def run(coro):
    return asyncio.run(coro)


def test_collect_batch_fills_up_to_size():
    async def go():
        q = asyncio.Queue()
        for i in range(10):
            q.put_nowait(i)
        return await collect_batch(q, 4, 0.01), q.qsize()

    assert run(go()) == ([0, 1, 2, 3], 6)


def test_collect_batch_stops_at_deadline():
    async def go():
        q = asyncio.Queue()
        q.put_nowait("a")
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, q.put_nowait, "late")
        t0 = loop.time()
        batch = await collect_batch(q, 8, 0.02)
        return batch, loop.time() - t0

    batch, took = run(go())
    assert batch == ["a"] and took < 0.15


def test_batches_across_requests_and_survives_a_failed_batch():
    calls = []

    def run_batch(x, thresholds):
        calls.append(len(x))
        if (x[:, 0, 0, 0] < 0).any():
            raise RuntimeError("boom")
        return [float(v) for v in x[:, 0, 0, 0]]

    async def go():
        b = Batcher(run_batch, batch_size=8, wait_s=0.05, max_queue=100)
        b.start()
        img = lambda v: np.full((3, 32, 32), v, np.float32)  # noqa: E731
        ok = await asyncio.gather(*(b.submit([img(i)], 0.5) for i in range(5)))
        with pytest.raises(RuntimeError, match="boom"):
            await b.submit([img(-1), img(7)], 0.5)
        after = await b.submit([img(9)], 0.5)
        await b.stop()
        return ok, after

    ok, after = run(go())
    assert [r[0] for r in ok] == [0, 1, 2, 3, 4]
    assert calls[0] == 5  # five requests, one batch
    assert after == [9.0]


def test_full_queue_refuses():
    async def go():
        b = Batcher(lambda x, t: list(range(len(x))), batch_size=4, wait_s=0.0, max_queue=3)
        # not started: nothing drains the queue
        task = asyncio.ensure_future(b.submit([np.zeros((3, 32, 32), np.float32)] * 3, 0.5))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await b.submit([np.zeros((3, 32, 32), np.float32)], 0.5)
        task.cancel()
        b.executor.shutdown()

    run(go())


def test_inference_threads_run_batches_at_once_and_stop_waits_for_them():
    """Two threads: a second batch starts while the first still runs (each waits at a barrier for
    the other; one thread would time out there); stop() lets batches under way answer."""
    both_running = threading.Barrier(2, timeout=5)
    sizes = []

    def run_batch(x, thresholds):
        sizes.append(len(x))
        both_running.wait()  # BrokenBarrierError unless another batch runs meanwhile
        time.sleep(0.05)
        return [float(v) for v in x[:, 0, 0, 0]]

    async def go():
        b = Batcher(run_batch, batch_size=2, wait_s=0.0, max_queue=100, threads=2)
        b.start()
        img = lambda v: np.full((3, 32, 32), v, np.float32)  # noqa: E731
        first = asyncio.ensure_future(b.submit([img(1), img(2)], 0.5))
        await asyncio.sleep(0.01)  # the first batch is on its thread, waiting for a second
        second = asyncio.ensure_future(b.submit([img(3), img(4)], 0.5))
        await asyncio.sleep(0.03)  # both past the barrier, sleeping
        await b.stop()
        return first.result(), second.result()

    assert run(go()) == ([1.0, 2.0], [3.0, 4.0])
    assert sizes == [2, 2]


def test_one_inference_thread_runs_one_batch_at_a_time():
    running, most = 0, 0
    lock = threading.Lock()

    def run_batch(x, thresholds):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return list(range(len(x)))

    async def go():
        b = Batcher(run_batch, batch_size=1, wait_s=0.0, max_queue=100)
        b.start()
        await asyncio.gather(*(b.submit([np.zeros((3, 32, 32), np.float32)], 0.5) for _ in range(6)))
        await b.stop()

    run(go())
    assert most == 1
