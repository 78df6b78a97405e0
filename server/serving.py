"""Running the app under uvicorn with a graceful drain (SPEC §8), and process-wide memory setup.

On SIGTERM (or Ctrl-C) the server does not stop at once: for `drain_seconds` `/readyz` answers
503 and every response carries `Connection: close`, while new connections are still accepted and
served, so load balancers and Kubernetes endpoints notice and clients move elsewhere. Then the
listener closes, connections accepted in the last instant get a moment to deliver their
request, every accepted request is answered (up to `shutdown_timeout_seconds`), the lifespan
shuts the batchers down and the process exits 0. A second signal ends the drain early.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import time

import uvicorn

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LAST_REQUEST_GRACE_S = 0.5


def return_large_blocks_to_os(threshold: int = 1 << 20) -> bool:
    """Serve allocations of `threshold` bytes and more (decoded images) from mmap, so they go back
    to the OS when freed. glibc's default threshold grows after each large free, and the next
    large images then stay in the heap: RSS climbed and stayed after a burst of large uploads."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc
        return False


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state, drain_seconds: float):
        super().__init__(config)
        self.state, self.drain_seconds = state, drain_seconds  # state: the app's (its `draining` flag)
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        # Unlike uvicorn's, the signal is not re-raised after shutdown: a drained server exits 0.
        if self.drain_deadline is None and self.drain_seconds > 0 and self.started:
            log.warning("signal %d: draining for %.1f s (readyz 503, Connection: close), then shutting "
                        "down; signal again to skip", sig, self.drain_seconds)
            self.state.draining = True
            self.drain_deadline = time.monotonic() + self.drain_seconds
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and time.monotonic() >= self.drain_deadline:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        self.state.draining = True
        for server in self.servers:
            server.close()
        # A connection accepted just before the listener closed has not delivered its request yet;
        # uvicorn would close it as idle. Give it a moment.
        deadline = time.monotonic() + LAST_REQUEST_GRACE_S
        while time.monotonic() < deadline and any(getattr(c, "cycle", 0) is None
                                                  for c in self.server_state.connections):
            await asyncio.sleep(0.02)
        await super().shutdown(sockets)


def serve(app, settings) -> None:
    return_large_blocks_to_os()
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=settings.log_level == "debug",
                            timeout_graceful_shutdown=settings.shutdown_timeout_seconds)
    DrainingServer(config, app.state, settings.drain_seconds).run()
