"""Liveness of the worker processes: a heartbeat from each worker's event loop, in shared memory.

A worker's event loop writes the time into its slot every BEAT_S. The supervisor reads the slots
(nothing to send, nothing to wait for) and acts on silence: past `heartbeat_timeout_seconds` the
server is not ready (the health port's /readyz 503: take it out of the load balancer); past
`worker_timeout_seconds` the worker is killed (SIGKILL, which also ends a stopped process) and
replaced, and /healthz fails until it is. A beat proves the loop runs, not that a request will
finish: the inference and decoding threads have their own bounds (admission, the body deadline).
"""

from __future__ import annotations

import asyncio
import time

BEAT_S = 0.25


class Heartbeats:
    def __init__(self, ctx, workers: int):
        self.beats = ctx.Array("d", workers, lock=False)  # one float per slot: no lock needed

    def reset(self, slot: int) -> None:
        """A new worker in the slot: silent until its event loop runs."""
        self.beats[slot] = 0.0

    def silence(self, slot: int) -> float | None:
        """Seconds since the slot's worker last beat, or None before its first beat."""
        last = self.beats[slot]
        return time.monotonic() - last if last else None

    async def beat(self, slot: int) -> None:
        """The worker's side: beat until the event loop ends (through the drain as well)."""
        while True:
            self.beats[slot] = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process
            await asyncio.sleep(BEAT_S)
