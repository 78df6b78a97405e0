"""Admission by expected wait (SPEC §8): refuse new work at once when what is already admitted
would take longer than a bound to serve at the measured service rate.

A deep queue only turns overload into latency: every waiting client times out late instead of
being told early to retry elsewhere. Here a request is admitted only while

    expected wait = images admitted and not yet answered x seconds per image  <=  max_wait

where seconds per image is an exponential moving average over inference batches (so it follows
batch size and the machine's load). The check runs before the request body is read, so a refused
request costs neither parsing nor decoding. The batchers' queue cap stays as the hard limit.

All models share the machine's cores, so one Admission serves them all.
"""
from __future__ import annotations

import threading


class Overloaded(RuntimeError):
    """The server refuses new work for now (503 + Retry-After)."""


class Admission:
    SMOOTHING = 0.2  # weight of the newest batch in the moving average

    def __init__(self, max_wait_s: float):
        self.max_wait_s = max_wait_s
        self.seconds_per_image = 0.0  # unknown until the first batch: admit
        self.outstanding = 0  # images admitted, not yet answered
        self._lock = threading.Lock()  # batches are timed in worker threads

    def expected_wait(self) -> float:
        return self.outstanding * self.seconds_per_image

    def check(self) -> None:
        """Refuse (Overloaded) when the work already admitted would take longer than the bound."""
        wait = self.expected_wait()
        if wait > self.max_wait_s:
            raise Overloaded(f"server busy: admitted work would take {1000 * wait:.0f} ms "
                             f"> bound of {1000 * self.max_wait_s:.0f} ms; retry shortly")

    def reserve(self, images: int) -> None:
        with self._lock:
            self.outstanding += images

    def release(self, images: int) -> None:
        with self._lock:
            self.outstanding -= images

    def observe_batch(self, images: int, seconds: float) -> None:
        """An inference batch of `images` took `seconds` of wall time."""
        if images <= 0:
            return
        sample = seconds / images
        with self._lock:
            if self.seconds_per_image == 0.0:
                self.seconds_per_image = sample
            else:
                self.seconds_per_image += self.SMOOTHING * (sample - self.seconds_per_image)

    def retry_after_s(self) -> int:
        """Whole seconds a refused client should wait: about the time to serve what is admitted."""
        return max(1, round(self.expected_wait()))
