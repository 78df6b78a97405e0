"""The process layout of `python -m server` (server/supervisor.py), on real processes: worker
processes behind one socket with one coherent /metrics, the supervisor's health port, a killed
worker replaced without losing the server, and readiness through the drain."""

import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from server.schemas import Readiness
from server.supervisor import cpu_share

from .conftest import MODELS, RunningServer, png


def classify_count(metrics_text: str) -> float:
    line = next(
        x
        for x in metrics_text.splitlines()
        if x.startswith('elf_http_requests_total{endpoint="/classify",status="200"}')
    )
    return float(line.split()[-1])


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def health(server, path: str) -> httpx.Response:
    return httpx.get(server.health_url + path, timeout=5)


def workers_of(server) -> list[psutil.Process]:
    """The server's worker processes (the spawned children; not multiprocessing's resource tracker)."""
    return [p for p in psutil.Process(server.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]


@pytest.fixture
def two_workers(tmp_path):
    s = RunningServer(
        "--model-repository", str(MODELS), "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    )
    assert health(s, "/readyz").status_code == 200  # RunningServer waited for every worker
    yield s
    s.stop()


def test_workers_share_the_load_and_metrics_add_up(two_workers, cifar):
    server = two_workers
    workers = workers_of(server)
    assert len(workers) == 2
    busy_before = [sum(w.cpu_times()[:2]) for w in workers]
    data = [png(im) for im in cifar[1].images[:64]]

    def send(i):
        with httpx.Client(base_url=server.url, timeout=30) as c:  # a new connection each: the kernel spreads them
            return c.post("/classify", files={"file": ("x.png", data[i % 64])}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(200)))
    assert statuses == [200] * 200
    busy = [sum(w.cpu_times()[:2]) - b for w, b in zip(workers, busy_before)]
    assert min(busy) > 0.1 * max(busy), busy  # both served, not one
    metrics = httpx.get(server.url + "/metrics").text
    assert classify_count(metrics) == 200  # whichever worker answered the scrape: every worker's count
    exits = sum(float(x.split()[-1]) for x in metrics.splitlines() if x.startswith("elf_exits_total{"))
    assert exits == 200
    assert "elf_ready 1.0" in metrics.splitlines()


def test_cpu_shares_divide_the_allowed_cpus_evenly(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 5, 6})
    assert [cpu_share(slot, 3) for slot in range(3)] == [{0, 1}, {2, 3}, {5, 6}]
    assert [cpu_share(slot, 2) for slot in range(2)] == [{0, 1, 2}, {3, 5, 6}]
    assert cpu_share(0, 4) is None  # 6 CPUs do not divide among 4 workers: left to the scheduler
    assert cpu_share(0, 1) is None  # one worker: all of them, as it is


def test_each_worker_runs_on_its_own_cpus(two_workers):
    shares = [cpu_share(0, 2), cpu_share(1, 2)]
    allowed = sorted(os.sched_getaffinity(0))
    got = sorted(sorted(w.cpu_affinity()) for w in workers_of(two_workers))
    if shares[0] is None:  # an odd number of CPUs here
        assert got == [allowed, allowed]
    else:
        assert got == sorted(sorted(share) for share in shares)
        assert sorted(got[0] + got[1]) == allowed
        # every thread of a worker, made after the pinning, inherited it
        for worker in workers_of(two_workers):
            assert {tuple(psutil.Process(t.id).cpu_affinity()) for t in worker.threads()} == {
                tuple(worker.cpu_affinity())
            }


def test_connections_opened_together_spread_over_the_workers(two_workers):
    """SO_REUSEPORT: with one shared listening socket the worker that woke first took every waiting
    connection (16 / 0 in 3 of 5 trials); hashed over two listeners, 16 give each at least 2
    (a 1-in-2,000 chance to fail by luck)."""
    server = two_workers
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
    try:

        def per_worker():
            counts = [
                sum(c.status == "ESTABLISHED" and c.laddr.port == server.port for c in w.net_connections("tcp"))
                for w in workers_of(server)
            ]
            return counts if sum(counts) == 16 else None

        counts = wait_for(per_worker, 5, "16 accepted connections")
        assert min(counts) >= 2, counts
    finally:
        for sock in socks:
            sock.close()


def test_health_port_answers_for_the_whole_server(two_workers):
    r = health(two_workers, "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    ready = Readiness.model_validate(health(two_workers, "/readyz").json())
    assert ready.ready and ready.providers == {"default": "CPUExecutionProvider"} and not ready.draining
    r = health(two_workers, "/classify")
    assert r.status_code == 404 and r.json()["status"] == 404 and "/healthz and /readyz" in r.json()["error"]


def test_a_killed_worker_is_replaced_and_counts_survive(two_workers, cifar):
    server = two_workers
    data = png(cifar[1].images[0])
    for _ in range(10):
        assert httpx.post(server.url + "/classify", files={"file": ("x.png", data)}).status_code == 200
    victim = workers_of(server)[1]
    victims_cpus = victim.cpu_affinity()
    victim.kill()
    victim.wait(10)
    # The health port says so, while the other worker keeps answering on the main port.
    problems = wait_for(lambda: health(server, "/readyz").json()["problems"], 5, "readyz to notice the death")
    assert any("died (exit -9)" in p or "is starting" in p for p in problems), problems
    assert httpx.post(server.url + "/classify", files={"file": ("x.png", data)}).status_code == 200
    wait_for(lambda: health(server, "/readyz").status_code == 200, 30, "the replacement to be ready")
    workers = workers_of(server)
    assert len(workers) == 2 and victim.pid not in [w.pid for w in workers]
    if cpu_share(1, 2) is not None:  # the replacement runs where its slot's worker ran
        assert sorted(p.cpu_affinity() for p in workers) == [sorted(cpu_share(0, 2)), sorted(cpu_share(1, 2))]
        assert victims_cpus in [w.cpu_affinity() for w in workers]
    metrics = httpx.get(server.url + "/metrics").text
    assert classify_count(metrics) == 11  # the dead worker's counts are kept
    assert "elf_ready 1.0" in metrics.splitlines()
    assert "died" in server.log.read_text()


def test_readyz_on_the_health_port_turns_503_at_sigterm(cifar):
    server = RunningServer("--model-repository", str(MODELS), "--workers", "2", "--drain-seconds", "1")
    assert health(server, "/readyz").status_code == 200
    server.proc.send_signal(signal.SIGINT)  # Ctrl-C drains like SIGTERM
    r = wait_for(
        lambda: (lambda r: r if r.status_code == 503 else None)(health(server, "/readyz")),
        2,
        "readyz 503 after the signal",
    )
    assert r.json()["draining"] and "draining" in r.json()["problems"][0]
    assert httpx.post(server.url + "/classify", files={"file": ("x.png", png(cifar[1].images[0]))}).status_code == 200
    assert server.proc.wait(30) == 0


def test_readiness_says_a_worker_exited_during_shutdown(tmp_path, monkeypatch):
    """Not 'is starting' for a worker that has exited normally in the drain."""
    import multiprocessing

    from server.config import Settings
    from server.supervisor import Supervisor, Worker

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    supervisor = Supervisor(Settings(workers=2))
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    process.join()
    supervisor.running[1] = Worker(1, process, readiness={"problems": [], "providers": {}})
    supervisor.draining = True
    supervisor.reap(supervisor.running[1])
    assert "worker 2 of 2 exited (0)" in supervisor.readiness()["problems"]
    assert supervisor.exit_codes == [0]
