"""Admission by expected wait (SPEC §8): refuse new work at once when what is already admitted
would take longer than a bound to serve at the measured service rate.

A deep queue only turns overload into latency: every waiting client times out late instead of
being told early to retry elsewhere. Here a request is admitted only while the images admitted
and not yet answered would be served within `max_wait_s`:

    expected wait = (ceil(k / batch_size) * a + k * b) / parallel      (k images outstanding)

where a batch of n images takes a + b*n seconds: a and b are fitted by exponentially weighted
least squares over recent inference batches (the first ones those of the warm-up), so the
estimate follows batch size (a backlog of 16 images is one batch, not 16) and the machine's load.
`parallel` batches run at once (inference threads): each one's time is measured while the others
run, so sharing cores shows as longer batches and the division stays right.

The check runs at a request's headers, so a refused request costs neither parsing nor decoding;
the request's work is reserved once its body is complete. Uploads in progress are bounded apart
(`max_uploads`): a body that arrives slowly holds an upload slot until its deadline, never a share
of the admitted work, so slow clients cannot make a server refuse the fast ones by seeming busy.
The batchers' queue cap stays as the hard limit. All models share the machine's cores, so one
Admission serves them all (per server worker process: each has its own models and batchers,
supervisor.py).
"""

from __future__ import annotations

import math
import threading


class Overloaded(RuntimeError):
    """The server refuses new work for now (503 + Retry-After)."""


class Admission:
    DECAY = 0.9  # weight left to the older batches at each new one (about the last 10 count)

    def __init__(self, max_wait_s: float, batch_size: int, max_uploads: int = 1 << 30, parallel: int = 1):
        self.max_wait_s, self.batch_size, self.max_uploads = max_wait_s, batch_size, max_uploads
        self.parallel = parallel
        self.outstanding = 0  # images admitted, not yet answered
        self.uploads = 0  # requests past the headers whose body is still arriving
        self.per_batch = self.per_image = 0.0  # a, b: unknown until the first batch (admit)
        self._sums = [0.0] * 5  # decayed sums of 1, n, n*n, t, n*t
        self._lock = threading.Lock()  # batches are timed in worker threads

    def expected_wait(self) -> float:
        k = self.outstanding
        if k <= 0:
            return 0.0
        return (math.ceil(k / self.batch_size) * self.per_batch + k * self.per_image) / self.parallel

    def check(self) -> None:
        """Refuse (Overloaded) when the work already admitted would take longer than the bound."""
        wait = self.expected_wait()
        if wait > self.max_wait_s:
            raise Overloaded(
                f"server busy: admitted work would take {1000 * wait:.0f} ms "
                f"> bound of {1000 * self.max_wait_s:.0f} ms; retry shortly"
            )
        if self.uploads >= self.max_uploads:
            raise Overloaded(
                f"server busy: {self.uploads} uploads in progress (limit {self.max_uploads}); retry shortly"
            )

    def start_upload(self) -> None:
        """A request passed the check at its headers; its body is on the way."""
        self.uploads += 1  # event-loop thread only

    def end_upload(self, images: int) -> None:
        """Its body is complete (reserve `images`) or will never be (0)."""
        self.uploads -= 1
        if images:
            self.reserve(images)

    def reserve(self, images: int) -> None:
        with self._lock:
            self.outstanding += images

    def release(self, images: int) -> None:
        with self._lock:
            self.outstanding -= images

    def observe_batch(self, images: int, seconds: float) -> None:
        """An inference batch of `images` took `seconds` of wall time: refit a and b."""
        if images <= 0:
            return
        with self._lock:
            s = [self.DECAY * v for v in self._sums]
            for i, v in enumerate((1.0, images, images * images, seconds, images * seconds)):
                s[i] += v
            self._sums = w, sn, snn, st, snt = s
            spread = w * snn - sn * sn
            b = (w * snt - sn * st) / spread if spread > 1e-9 * w * snn else -1.0
            a = (st - b * sn) / w
            if b < 0 or a < 0:  # one batch size only, or noise: cost proportional to images
                a, b = 0.0, st / sn
            self.per_batch, self.per_image = a, b

    def retry_after_s(self) -> int:
        """Whole seconds a refused client should wait: about the time to serve what is admitted."""
        return max(1, math.ceil(self.expected_wait()))
