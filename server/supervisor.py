"""`python -m server`'s processes: a supervisor and N server workers on one port.

Why processes (issue 18): in one Python process the event loop parsing every upload, the decode
threads and the inference thread share one GIL, so on a 2-core machine neither HTTP nor ONNX
Runtime gets a core of its own. Each worker here is the whole app (`create_app`: its own models,
batcher, admission and decode pool, with the machine's CPUs divided among the workers), listening
on its own socket bound to the same port with SO_REUSEPORT, so the kernel spreads new connections
evenly over the workers. (One shared listening socket did not: the worker that woke first accepted
every connection waiting, and 16 connections opened together landed 16 / 0 in 3 of 5 trials.) `results/BENCHMARKS.md` measures it against one
process (benchmarks/load_test.py, benchmarks/server_replicas.py).

The supervisor, which never parses an upload:
- reserves the port (bound, never listening: `--port 0` picks one for all), starts worker 1 and,
  once it serves, the others: a bad model repository is
  reported once, by worker 1, and the supervisor exits with its code (2);
- answers `/healthz` and `/readyz` on the health port from a thread of its own, so probes never
  wait behind uploads: ready when every worker serves, warmed up on its expected provider, and
  the server is not draining;
- starts a worker again when one dies (with back-off), and marks its live gauges dead;
- on SIGTERM or SIGINT: `/readyz` 503 at once, SIGTERM to every worker (each drains as serving.py
  says, the workers closing their listeners together), and exit 0 once every
  worker has exited 0. A second signal is forwarded too (the workers skip the rest of the drain).

Metrics: prometheus_client's multiprocess mode over a fresh folder (metrics.py): whichever worker
answers `/metrics`, it merges every worker's values.
"""
from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .config import Settings, machine_cpus

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


def run_worker(settings: Settings, port: int, slot: int, events, closed, workers: int) -> None:
    """One server worker process (the target of a spawned process)."""
    die_with_parent()
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    from modelrepo import ManifestError  # noqa: PLC0415

    from .app import create_app  # noqa: PLC0415
    from .engine import load_repository  # noqa: PLC0415
    from .routes import readiness  # noqa: PLC0415
    from .serving import ListenerBarrier, serve  # noqa: PLC0415
    try:
        models = load_repository(settings.model_repository, settings.default_model, settings.provider,
                                 settings.intra_op_threads, settings.ort_spinning)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    app = create_app(settings, models)
    # Bound now, listening once warmed up (no connection waits on a worker still loading); then it
    # reports its readiness to the supervisor.
    serve(app, settings, port_socket(settings.host, port), ListenerBarrier(closed, workers),
          on_listening=lambda: events.put((slot, os.getpid(), readiness(app.state).model_dump())))


@dataclass
class Worker:
    slot: int
    process: mp.Process
    readiness: dict | None = None  # the worker's Readiness once it listens


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
        self.failures = [0] * self.workers  # deaths since the slot last served
        self.next_start = [0.0] * self.workers
        self.lock = threading.Lock()  # `running` is read by the health thread

    # -- what the health port answers --------------------------------------------------------
    def readiness(self) -> dict:
        with self.lock:
            reports = {w.slot: w.readiness for w in self.running.values()}
        problems = ["shutting down: draining accepted requests"] if self.draining else []
        providers = {}
        for slot in range(self.workers):
            ready = reports.get(slot)
            if ready is None:
                problems.append(f"worker {slot + 1} of {self.workers} is starting")
                continue
            problems += [p for p in ready["problems"] if p not in problems]
            providers.update(ready["providers"])
        return {"ready": not problems, "problems": problems, "draining": self.draining, "providers": providers}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, slot: int) -> None:
        process = self.ctx.Process(target=run_worker, name=f"worker-{slot + 1}", daemon=False,
                                   args=(self.per_worker, self.port, slot, self.events, self.closed, self.workers))
        process.start()
        with self.lock:
            self.running[slot] = Worker(slot, process)

    def on_signal(self, sig: int, frame) -> None:
        self.draining = True  # readyz 503 from now on; the loop forwards the signal
        self.signals += 1

    def run(self) -> int:
        setup_multiprocess_metrics()
        try:
            self.sock = port_socket(self.settings.host, self.settings.port)
            health = ThreadingHTTPServer((self.settings.host, self.settings.health_port), health_handler(self))
        except OSError as exc:
            print(f"error: cannot listen on {self.settings.host} (port {self.settings.port}, health port "
                  f"{self.settings.health_port}): {exc}", file=sys.stderr)
            return 2
        health.daemon_threads = True
        threading.Thread(target=health.serve_forever, name="health", daemon=True).start()
        host, self.port = self.sock.getsockname()[:2]
        log.info("listening on http://%s:%d with %d worker(s) (ONNX Runtime threads %d, decode threads %d "
                 "each); /healthz and /readyz also on port %d", host, self.port, self.workers,
                 self.per_worker.intra_op_threads, self.per_worker.decode_workers, health.server_address[1])
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.on_signal)
        try:
            return self.supervise()
        finally:
            health.shutdown()
            health.server_close()
            self.sock.close()

    def supervise(self) -> int:
        while self.running or not self.draining:
            self.take_reports(timeout=0.1)
            if self.signals > self.forwarded:
                self.forward_signal()
            for worker in [w for w in self.running.values() if w.process.exitcode is not None]:
                code = self.reap(worker)
                if code is not None:
                    return code
            if not self.draining:
                self.start_missing()
        return max((abs(c) for c in self.exit_codes), default=0)

    def forward_signal(self) -> None:
        if self.forwarded == 0:
            log.warning("draining %d worker(s) (readyz 503, still serving); signal again to skip the drain",
                        len(self.running))
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
        with self.lock:
            del self.running[worker.slot]
        code, pid = worker.process.exitcode, worker.process.pid
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


def setup_multiprocess_metrics() -> None:
    """A fresh folder for the workers' metric files (inherited through the environment), or the
    operator's PROMETHEUS_MULTIPROC_DIR emptied of a previous run's files."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()
        return
    folder = tempfile.mkdtemp(prefix="elf-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    import atexit  # noqa: PLC0415
    atexit.register(shutil.rmtree, folder, ignore_errors=True)


def health_handler(supervisor: Supervisor) -> type[BaseHTTPRequestHandler]:
    class Health(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as probes and load balancers use it
        disable_nagle_algorithm = True  # headers and body are two writes: Nagle held the body ~40 ms

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path == "/healthz":
                self.answer(200, {"status": "ok"})
            elif self.path == "/readyz":
                body = supervisor.readiness()
                self.answer(200 if body["ready"] else 503, body)
            else:
                self.answer(404, {"error": f"not found: {self.path} (this port answers /healthz and /readyz)",
                                  "status": 404})

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
