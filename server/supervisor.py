"""`python -m server`'s processes: a supervisor and N server workers on one port.

Why processes: in one Python process the event loop parsing every upload, the decode
threads and the inference thread share one GIL, so on a 2-core machine neither HTTP nor ONNX
Runtime gets a core of its own. Each worker here is the whole app (`create_app`: its own models,
batcher, admission and decode pool, with the machine's CPUs divided among the workers), listening
on its own socket bound to the same port with SO_REUSEPORT, so the kernel spreads new connections
evenly over the workers. (One shared listening socket did not: the worker that woke first accepted
every connection waiting, and 16 connections opened together landed 16 / 0 in 3 of 5 trials.)
`results/BENCHMARKS.md` measures it against one process (benchmarks/load_test.py,
benchmarks/server_replicas.py). uvicorn's own multi-process supervisor (which pings its workers
too) shares one listening socket, hence this one.

The supervisor, which never parses an upload:
- reserves the port (bound, never listening: `--port 0` picks one for all), starts worker 1 and,
  once it serves, the others: a bad model repository is
  reported once, by worker 1, and the supervisor exits with its code (2);
- answers `/healthz` and `/readyz` on the health port from a thread of its own, so probes never
  wait behind uploads: ready when every worker serves, warmed up on its expected provider, and
  the server is not draining;
- starts a worker again when one dies (with back-off), and marks its live gauges dead;
- watches every worker's heartbeat (liveness.py): a silent worker makes the server unready, one
  silent past `worker_timeout_seconds` is killed and replaced (a stopped or hung process would
  otherwise keep receiving its share of new connections from the kernel). When the supervisor
  itself went unscheduled past the heartbeat timeout (a paused VM, a stopped process group), every
  silence includes that pause: no worker is judged until the timeout has passed again;
- refuses to start beside another server on its port or metrics directory (instance.py);
- gives each worker its own share of the CPUs where they divide evenly (`cpu_share`);
- on SIGTERM or SIGINT: `/readyz` 503 at once, SIGTERM to every worker (each drains as serving.py
  says, the workers closing their listeners together), and exit 0 once every
  worker has exited 0. A second signal is forwarded too (the workers skip the rest of the drain).

Metrics: prometheus_client's multiprocess mode over a fresh folder (metrics.py): whichever worker
answers `/metrics`, it merges every worker's values.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing as mp
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .config import Settings, machine_cpus
from .instance import InstanceError, MetricsDirectory, PortClaim, hold_metrics_directory, remove_if_last
from .liveness import Heartbeats

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies
MAX_BACKOFF_S = 30.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def worker_settings(settings: Settings) -> tuple[int, Settings]:
    """How many workers, and each one's settings: the CPUs divided among them where a thread
    count is left to the server (0)."""
    cpus = machine_cpus()
    workers = settings.workers or cpus
    share = max(1, cpus // workers)
    update = {key: share for key in ("intra_op_threads", "decode_workers") if getattr(settings, key) == 0}
    return workers, settings.model_copy(update=update)


def port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with SO_REUSEPORT: the supervisor's reserves the port,
    each worker's listens on it (only listening sockets of the group get connections)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def die_with_parent() -> None:
    """A worker whose supervisor is killed (SIGKILL, OOM) drains and exits instead of living on."""
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc
        pass


def cpu_share(slot: int, workers: int) -> set[int] | None:
    """Worker `slot`'s part of the CPUs this process may run on: the `slot`-th of `workers` equal
    parts, or None where they do not divide evenly (or the platform cannot pin threads).

    Why: left to the scheduler, a worker's event loop, inference and decoding threads move
    between cores (each move refills a core's caches), and two busy threads at times share one
    core while the other idles: with 2 workers on 2 cores under 16 connections the machine idled
    4-21% of the time, pinned 1-11%, for 1.12x the requests a second at the default thresholds
    (alternating runs, results/BENCHMARKS.md)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if workers < 2 or len(cpus) % workers:
        return None
    size = len(cpus) // workers
    return set(cpus[slot * size : (slot + 1) * size])


def run_worker(
    settings: Settings, port: int, slot: int, events, closed, workers: int, heartbeats: Heartbeats, metrics_owned: bool
) -> None:
    """One server worker process (the target of a spawned process)."""
    supervisor = os.getppid()
    die_with_parent()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    # Before any thread starts: the threads this worker makes inherit the affinity.
    # Not with more than one inference thread: those are there to use cores other workers leave idle.
    share = cpu_share(slot, workers) if settings.cpu_affinity and settings.inference_threads == 1 else None
    if share is not None:
        try:
            os.sched_setaffinity(0, share)
            log.info("worker %d runs on CPU %s", slot + 1, ",".join(map(str, sorted(share))))
        except OSError as exc:  # a sandbox that forbids it: the scheduler places the threads
            log.warning("worker %d left unpinned: %s", slot + 1, exc)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    metrics_lock = hold_metrics_directory(metrics_dir)
    try:
        serve_worker(settings, port, slot, events, closed, workers, heartbeats)
    finally:
        if metrics_owned and os.getppid() != supervisor and remove_if_last(metrics_dir, metrics_lock):
            log.info("the supervisor is gone and this was its last worker: removed %s", metrics_dir)


def serve_worker(
    settings: Settings, port: int, slot: int, events, closed, workers: int, heartbeats: Heartbeats
) -> None:
    from modelrepo import ManifestError  # noqa: PLC0415

    from .app import create_app, load_models  # noqa: PLC0415
    from .routes import readiness  # noqa: PLC0415
    from .serving import ListenerBarrier, serve  # noqa: PLC0415

    try:
        models = load_models(settings)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    app = create_app(settings, models, grpc_port=settings.grpc_port)
    # Bound now, listening once warmed up (no connection waits on a worker still loading); then it
    # reports its readiness to the supervisor.
    serve(
        app,
        settings,
        port_socket(settings.host, port),
        ListenerBarrier(closed, workers),
        on_listening=lambda: events.put((slot, os.getpid(), readiness(app.state.server).model_dump())),
        heartbeat=lambda: heartbeats.beat(slot),
    )


@dataclass
class Worker:
    slot: int
    process: mp.Process
    readiness: dict | None = None  # the worker's Readiness once it listens
    killed: bool = False  # by the supervisor, for silence


class HealthServer(ThreadingHTTPServer):
    """The health port: a thread per connection, at most MAX_THREADS at once (a connection beyond
    them is closed at once), each connection closed after IDLE_TIMEOUT_S without a request."""

    daemon_threads = True
    MAX_THREADS = 32
    IDLE_TIMEOUT_S = 2.0

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(self.MAX_THREADS)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


@dataclass
class Supervisor:
    settings: Settings
    workers: int = 0
    ctx: mp.context.SpawnContext = field(default_factory=lambda: mp.get_context("spawn"))
    running: dict[int, Worker] = field(default_factory=dict)
    draining: bool = False
    signals: int = 0  # SIGTERM/SIGINT received ...
    forwarded: int = 0  # ... and forwarded to the workers
    exit_codes: list[int] = field(default_factory=list)  # of workers that served and were stopped

    def __post_init__(self):
        self.workers, self.per_worker = worker_settings(self.settings)
        self.events = self.ctx.Queue()
        self.closed = self.ctx.Value("i", 0)
        self.heartbeats = Heartbeats(self.ctx, self.workers)
        self.judge_after = 0.0  # monotonic time before which no silence counts (after the supervisor's own pause)
        self.failures = [0] * self.workers  # deaths since the slot last served
        self.next_start = [0.0] * self.workers
        self.ended: dict[int, str] = {}  # slot -> how its last worker ended, until a new one starts
        self.lock = threading.Lock()  # `running` is read by the health thread

    # -- what the health port answers --------------------------------------------------------
    def readiness(self) -> dict:
        with self.lock:
            reports = {w.slot: w.readiness for w in self.running.values()}
            ended = dict(self.ended)
        problems = ["shutting down: draining accepted requests"] if self.draining else []
        providers = {}
        for slot in range(self.workers):
            ready = reports.get(slot)
            if ready is None:
                problems.append(f"worker {slot + 1} of {self.workers} {ended.get(slot, 'is starting')}")
                continue
            silence = self.heartbeats.silence(slot)
            if silence is not None and silence > self.settings.heartbeat_timeout_seconds and self.judging():
                problems.append(f"worker {slot + 1} of {self.workers} has not answered for {silence:.1f} s")
            problems += [p for p in ready["problems"] if p not in problems]
            providers.update(ready["providers"])
        return {"ready": not problems, "problems": problems, "draining": self.draining, "providers": providers}

    def hung(self) -> list[int]:
        """Slots whose serving worker has been silent past the worker timeout (about to be replaced)."""
        if not self.judging():
            return []
        with self.lock:
            serving = [w.slot for w in self.running.values() if w.readiness is not None]
        return [slot for slot in serving if (self.heartbeats.silence(slot) or 0) > self.settings.worker_timeout_seconds]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, slot: int) -> None:
        self.heartbeats.reset(slot)
        process = self.ctx.Process(
            target=run_worker,
            name=f"worker-{slot + 1}",
            daemon=False,
            args=(
                self.per_worker,
                self.port,
                slot,
                self.events,
                self.closed,
                self.workers,
                self.heartbeats,
                self.metrics.owned,
            ),
        )
        process.start()
        with self.lock:
            self.running[slot] = Worker(slot, process)
            self.ended.pop(slot, None)

    def on_signal(self, sig: int, frame) -> None:
        self.draining = True  # readyz 503 from now on; the loop forwards the signal
        self.signals += 1

    def run(self) -> int:
        try:
            self.metrics = MetricsDirectory(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        except InstanceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics.path)  # the workers inherit it
        try:
            return self.run_claimed()
        finally:
            self.metrics.close()

    def run_claimed(self) -> int:
        """Bind the ports (the main one claimed for this server), then supervise; one line and exit 2
        for whatever cannot be had, with what was had given back."""
        with contextlib.ExitStack() as held:
            try:
                self.sock = held.enter_context(self.bind("port", self.settings.port, port_socket))
                self.port = self.sock.getsockname()[1]
                claim = PortClaim(self.port, self.settings.hot_restart)
                held.callback(claim.release)
                self.grpc_sock = held.enter_context(self.bind("gRPC port", self.settings.grpc_port, port_socket))
                grpc_port = self.grpc_sock.getsockname()[1]
                held.callback(PortClaim(grpc_port, self.settings.hot_restart).release)
                self.per_worker = self.per_worker.model_copy(update={"grpc_port": grpc_port})
                health = self.bind(
                    "health port",
                    self.settings.health_port,
                    lambda host, port: HealthServer((host, port), health_handler(self)),
                )
            except InstanceError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            return self.serve_health_and_workers(health, claim)

    def bind(self, what: str, port: int, open_port):
        """`open_port(host, port)`, or InstanceError saying which port could not be had."""
        try:
            return open_port(self.settings.host, port)
        except OSError as exc:
            raise InstanceError(
                f"cannot listen on {self.settings.host} ({what} {port}): {exc.strerror or exc}"
            ) from None

    def serve_health_and_workers(self, health: HealthServer, claim: PortClaim) -> int:
        threading.Thread(target=health.serve_forever, name="health", daemon=True).start()
        log.info(
            "listening on http://%s:%d (gRPC on port %d) with %d worker(s) (ONNX Runtime threads %d, decode "
            "threads %d each); /healthz and /readyz also on port %d%s",
            self.settings.host,
            self.port,
            self.per_worker.grpc_port,
            self.workers,
            self.per_worker.intra_op_threads,
            self.per_worker.decode_workers,
            health.server_address[1],
            "" if claim.socket else " (hot restart: beside the server already on this port)",
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        try:
            return self.supervise()
        finally:
            health.shutdown()
            health.server_close()

    def judging(self) -> bool:
        return time.monotonic() >= self.judge_after

    def supervise(self) -> int:
        last = time.monotonic()
        while self.running or not self.draining:
            self.take_reports(timeout=0.1)
            now = time.monotonic()
            if now - last > self.settings.heartbeat_timeout_seconds:
                log.warning(
                    "the supervisor was not scheduled for %.1f s (a paused machine or a stopped process "
                    "group): judging no worker's silence for %.1f s",
                    now - last,
                    self.settings.heartbeat_timeout_seconds,
                )
                self.judge_after = now + self.settings.heartbeat_timeout_seconds
            last = now
            if self.signals > self.forwarded:
                self.forward_signal()
            for slot in self.hung():
                self.kill_silent(self.running[slot])
            for worker in [w for w in self.running.values() if w.process.exitcode is not None]:
                code = self.reap(worker)
                if code is not None:
                    return code
            if not self.draining:
                self.start_missing()
        return max((abs(c) for c in self.exit_codes), default=0)

    def kill_silent(self, worker: Worker) -> None:
        if worker.killed:
            return
        worker.killed = True
        log.error(
            "worker %d (pid %d) has not answered for %.1f s (stopped or hung): killing it",
            worker.slot + 1,
            worker.process.pid,
            self.heartbeats.silence(worker.slot),
        )
        worker.process.kill()

    def forward_signal(self) -> None:
        if self.forwarded == 0:
            log.warning(
                "draining %d worker(s) (readyz 503, still serving); signal again to skip the drain", len(self.running)
            )
        self.forwarded = self.signals
        for worker in self.running.values():
            os.kill(worker.process.pid, signal.SIGTERM)

    def take_reports(self, timeout: float) -> None:
        """Readiness reports from workers that have started serving."""
        while True:
            try:
                slot, pid, ready = self.events.get(timeout=timeout)
            except queue.Empty:
                return
            timeout = 0
            worker = self.running.get(slot)
            if worker is not None and worker.process.pid == pid:  # not one that has died since
                worker.readiness = ready
                self.failures[slot] = 0

    def reap(self, worker: Worker) -> int | None:
        """A worker has exited. Returns the supervisor's exit code when it must stop."""
        from prometheus_client import multiprocess  # noqa: PLC0415

        code, pid = worker.process.exitcode, worker.process.pid
        with self.lock:
            del self.running[worker.slot]
            self.ended[worker.slot] = f"exited ({code})" if self.draining else f"died (exit {code}); starting it again"
        multiprocess.mark_process_dead(pid)
        if self.draining:
            if worker.readiness is not None:  # one still loading had accepted nothing
                self.exit_codes.append(code)
            log.info("worker %d (pid %d) exited %d", worker.slot + 1, pid, code)
            return None
        if worker.slot == 0 and worker.readiness is None and self.failures[0] == 0 and len(self.running) == 0:
            log.error("worker 1 failed to start (exit %d)", code)  # its own message says why
            return code if code > 0 else 1
        self.failures[worker.slot] += 1
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (self.failures[worker.slot] - 1))
        self.next_start[worker.slot] = time.monotonic() + delay
        log.error("worker %d (pid %d) died (exit %d); starting it again in %.1f s", worker.slot + 1, pid, code, delay)
        return None

    def start_missing(self) -> None:
        """Worker 1 first; the others once it has served (so a bad repository is reported once);
        any worker that died, after its back-off."""
        first_served = 0 in self.running and self.running[0].readiness is not None
        for slot in range(self.workers):
            if slot in self.running or time.monotonic() < self.next_start[slot]:
                continue
            if slot == 0 or first_served or self.failures[slot]:
                self.start(slot)


def health_handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Health(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as probes and load balancers use it
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle held the body ~40 ms
        timeout = HealthServer.IDLE_TIMEOUT_S

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                hung = supervisor.hung()
                if hung:
                    self.answer(
                        503,
                        {
                            "status": "unresponsive",
                            "problems": [
                                f"worker {slot + 1} of {supervisor.workers} has not answered for "
                                f"{supervisor.heartbeats.silence(slot):.1f} s; it is being replaced"
                                for slot in hung
                            ],
                        },
                    )
                else:
                    self.answer(200, {"status": "ok"})
            elif self.path == "/readyz":
                body = supervisor.readiness()
                self.answer(200 if body["ready"] else 503, body)
            else:
                self.answer(
                    404, {"error": f"not found: {self.path} (this port answers /healthz and /readyz)", "status": 404}
                )

        def answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # noqa: A002 (probes would flood the log)
            pass

    return Health


def serve_supervised(settings: Settings) -> int:
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    return Supervisor(settings).run()
