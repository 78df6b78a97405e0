"""Running the app under uvicorn with a graceful drain (SPEC §8), and process-wide memory setup.

On SIGTERM (or Ctrl-C) the server does not stop at once. For `drain_seconds` `/readyz` answers
503 while everything is still served as before (keep-alive included), so load balancers and
Kubernetes endpoints notice and send new work elsewhere. Then the listener closes and the
closing phase begins: every response carries `Connection: close`, and the server waits (up to
LAST_REQUEST_GRACE_S) until no connection is idle, i.e. each open connection has either sent its
next request, which is answered, or gone. A connection idle for that whole time is closed, every
accepted request is answered (up to `shutdown_timeout_seconds`), the lifespan shuts the batchers
down and the process exits 0. A second signal ends the drain early.

Why not `Connection: close` during the drain as well: every client would reconnect for each
request, and connections still in the kernel's accept queue when the listener closes are reset
after their request was sent. For the same reason the worker processes listening on one port
(supervisor.py) close their listeners together: none sends `Connection: close` before every one has
stopped accepting (`ListenerBarrier`), or its clients would reconnect to a listener about to close.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import time

import uvicorn

from .protocol import server_protocol
from .state import ServerState

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
LAST_REQUEST_GRACE_S = 1.0  # closing phase: how long an idle connection may take to send its next request


def return_large_blocks_to_os(threshold: int = 1 << 20) -> bool:
    """Serve allocations of `threshold` bytes and more (decoded images) from mmap, so they go back
    to the OS when freed. glibc's default threshold grows after each large free, and the next
    large images then stay in the heap: RSS climbed and stayed after a burst of large uploads."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc
        return False


class ListenerBarrier:
    """Where the workers listening on one port wait for each other to have closed their listeners."""

    def __init__(self, closed, workers: int):
        self.closed, self.workers = closed, workers  # closed: a multiprocessing.Value("i") shared by all

    def arrive(self) -> None:
        with self.closed.get_lock():
            self.closed.value += 1

    async def wait(self, timeout: float) -> None:
        """Until every worker has arrived, or `timeout` (a worker may have died meanwhile)."""
        deadline = time.monotonic() + timeout
        while self.closed.value < self.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        state: ServerState,
        drain_seconds: float,
        barrier: ListenerBarrier,
        on_listening=None,
        heartbeat=None,
    ):
        super().__init__(config)
        self.state, self.drain_seconds = state, drain_seconds  # its `draining` and `closing` flags are set here
        self.drain_deadline: float | None = None
        self.barrier = barrier
        self.on_listening = on_listening or (lambda: None)  # after start-up: models warm, listener open
        self.heartbeat = heartbeat  # () -> coroutine beating until cancelled (liveness.Heartbeats.beat)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            if self.heartbeat is not None:  # a task of its own: it beats through the drain too
                self.heartbeat_task = asyncio.get_running_loop().create_task(self.heartbeat())
            self.on_listening()

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGINT:
            return  # Ctrl-C reaches the whole process group; the supervisor forwards it as SIGTERM
        # Unlike uvicorn's, the signal is not re-raised after shutdown: a drained server exits 0.
        # The first signal drains, the second closes at once, the third cancels what is running.
        if self.drain_deadline is None and self.drain_seconds > 0 and self.started:
            log.info(
                "signal %d: draining for %.1f s (readyz 503, still serving), then closing", sig, self.drain_seconds
            )
            self.state.draining = True
            self.drain_deadline = time.monotonic() + self.drain_seconds
        elif self.should_exit:
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
        # gRPC stops taking calls with the HTTP listeners and finishes those under way meanwhile.
        grpc = self.state.grpc
        grpc_stopped = (
            asyncio.ensure_future(grpc.stop(self.config.timeout_graceful_shutdown)) if grpc is not None else None
        )
        self.barrier.arrive()
        await self.barrier.wait(LAST_REQUEST_GRACE_S)
        self.state.closing = True
        deadline = time.monotonic() + LAST_REQUEST_GRACE_S
        while time.monotonic() < deadline and any(idle(c) for c in self.server_state.connections):
            await asyncio.sleep(0.01)
        await super().shutdown(sockets)  # closes idle connections, waits for requests in flight
        if grpc_stopped is not None:
            await grpc_stopped


def idle(connection) -> bool:
    """No request in flight on this connection (uvicorn's protocols keep the current one as `cycle`)."""
    cycle = getattr(connection, "cycle", None)
    return cycle is None or cycle.response_complete


def serve(app, settings, sock, barrier: ListenerBarrier, on_listening=None, heartbeat=None) -> None:
    """Serve `app` on `sock`, this worker's socket on the server's port (bound; uvicorn listens on it
    once the lifespan has warmed the models up, then calls `on_listening` and starts `heartbeat`)."""
    return_large_blocks_to_os()
    config = uvicorn.Config(
        app,
        http=server_protocol(app.state.server),
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_keep_alive=settings.keep_alive_timeout_seconds,
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
    )
    DrainingServer(config, app.state.server, settings.drain_seconds, barrier, on_listening, heartbeat).run(
        sockets=[sock]
    )
