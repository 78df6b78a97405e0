"""Micro-batching across requests: one queue and one worker loop per model.

Requests put single images on the model's queue and await their future. The loop takes what is
waiting, up to `batch_size` images or until `wait_s` has passed since the first, runs the staged
model once in a worker thread (the event loop never blocks) and resolves each future. With
`threads` > 1, up to that many batches run at once, each on its own thread (ONNX Runtime releases
the GIL): a worker whose connections bring more work than one inference thread can do (a gRPC
client multiplexes all its calls over one connection, which one worker serves) uses the cores the
others leave idle. A failed batch fails each of its requests; the loop keeps running. A full
queue refuses at once (Overloaded -> 503) rather than growing without bound; admission by
expected wait (admission.py) normally refuses long before that, using the batch timings reported
through `on_batch`.

Background work (`idle_work`, e.g. shadow runs) gets the worker thread only when no request is
waiting, one small chunk at a time, so a request that arrives meanwhile waits at most one chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .admission import Overloaded

log = logging.getLogger(__name__)


@dataclass
class Item:
    x: np.ndarray  # one image as the model takes it before preprocessing (32 x 32 x 3 uint8)
    threshold: tuple[float, ...]  # one per early exit
    future: asyncio.Future


async def collect_batch(queue: asyncio.Queue, batch_size: int, wait_s: float, first=None) -> list:
    """Block for one item (unless `first` is it), then take more until the batch is full or the
    deadline passes."""
    batch = [first if first is not None else await queue.get()]
    deadline = time.monotonic() + wait_s
    while len(batch) < batch_size:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch


class Batcher:
    def __init__(
        self,
        run_batch,
        batch_size: int,
        wait_s: float,
        max_queue: int,
        on_depth=None,
        idle_work=None,
        on_batch=None,
        threads: int = 1,
    ):
        self.run_batch = run_batch  # (x: N stacked images, thresholds: N x exits-1) -> per-image results
        self.batch_size, self.wait_s = batch_size, wait_s
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="inference")
        self.free_threads = asyncio.Semaphore(threads)  # a batch (or idle chunk) holds one while it runs
        self.running: set[asyncio.Task] = set()
        self.on_depth = on_depth or (lambda depth: None)
        self.on_batch = on_batch or (lambda images, seconds: None)  # each request batch's size and run time
        self.task: asyncio.Task | None = None
        # () -> bool: run one chunk of background work in the worker thread; False when none is left.
        self.idle_work = idle_work
        self.idle_pending = asyncio.Event()

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.running:  # batches under way finish and answer
            await asyncio.wait(self.running)
        self.executor.shutdown(wait=True)

    async def submit(self, xs: list[np.ndarray], threshold: tuple[float, ...]) -> list:
        """Queue the images of one request together, or refuse all of them if they don't fit."""
        if self.queue.maxsize - self.queue.qsize() < len(xs):
            raise Overloaded(f"inference queue is full ({self.queue.qsize()} images waiting)")
        loop = asyncio.get_running_loop()
        items = [Item(x, threshold, loop.create_future()) for x in xs]
        for item in items:
            self.queue.put_nowait(item)
        self.on_depth(self.queue.qsize())
        if len(items) == 1:  # most requests: gathering one future costs ~4 us more than awaiting it
            return [await items[0].future]
        return await asyncio.gather(*(item.future for item in items))

    @property
    def busy(self) -> bool:
        """Requests are waiting: background work would only delay them."""
        return not self.queue.empty()

    def wake_idle_work(self) -> None:
        self.idle_pending.set()

    async def _next_batch(self) -> list:
        """The next request batch; while none is waiting, run background work chunk by chunk."""
        loop = asyncio.get_running_loop()
        while self.idle_work is not None and self.queue.empty():
            if not self.idle_pending.is_set():
                getter = asyncio.ensure_future(self.queue.get())
                waker = asyncio.ensure_future(self.idle_pending.wait())
                done, _ = await asyncio.wait({getter, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                if getter in done:
                    return await collect_batch(self.queue, self.batch_size, self.wait_s, getter.result())
                getter.cancel()
                continue
            try:
                more = await loop.run_in_executor(self.executor, self.idle_work)
            except Exception:
                log.exception("background work failed")
                more = False
            if not more:
                self.idle_pending.clear()
        return await collect_batch(self.queue, self.batch_size, self.wait_s)

    async def _loop(self) -> None:
        while True:
            await self.free_threads.acquire()  # released by _run once its batch is done
            batch = await self._next_batch()
            self.on_depth(self.queue.qsize())
            task = asyncio.create_task(self._run(batch))
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def _run(self, batch: list) -> None:
        """One batch on a free inference thread; its requests answered."""
        try:
            x = np.stack([item.x for item in batch])
            thresholds = np.array([item.threshold for item in batch], dtype=np.float32)
            t0 = time.perf_counter()
            results = await self.loop.run_in_executor(self.executor, self.run_batch, x, thresholds)
            self.on_batch(len(batch), time.perf_counter() - t0)
        except Exception as exc:
            log.exception("inference batch of %d failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self.free_threads.release()
        for item, result in zip(batch, results):
            if not item.future.done():  # the client may have gone away
                item.future.set_result(result)
