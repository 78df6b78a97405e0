"""Faults a server meets in production, on real `python -m server` processes over loopback: slow
uploads beside normal clients, a stopped (hung) worker, a killed worker's replacement getting its
share, a second server on the same port or metrics directory, a bad metrics directory, uploads
unfinished at the end of a drain, aborted uploads, stalled health-port connections, and a
supervisor killed with SIGKILL. Each test asserts the outcome, not only that nothing crashed."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from server.config import Settings
from server.supervisor import HealthServer, Supervisor, Worker, health_handler

from ..conftest import REPO
from . import faults
from .conftest import MODELS, RunningServer, free_port, png
from .test_supervisor import health, wait_for, workers_of

pytestmark = pytest.mark.slow


def run_server_to_exit(port: int, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """A server started on `port` (its other ports free), run until it exits by itself."""
    command = [sys.executable, "-m", "server", "--port", str(port), "--health-port", str(free_port())]
    command += ["--grpc-port", str(free_port()), "--model-repository", str(MODELS)]
    return subprocess.run(
        command, capture_output=True, text=True, cwd=REPO, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_slow_uploads_hold_nothing_the_normal_clients_need(cifar):
    """100 connections sending their body at 1 byte/s (and 10 sending headers only) beside 8
    keep-alive clients: the clients are answered, the slow ones get 408 and are closed."""
    r = faults.slow_uploads(png(cifar[1].images[0]))
    statuses = r["statuses"]
    assert r["ok_share"] >= 0.9 and len(statuses) > 200, (
        r["ok_share"],
        len(statuses),
        {s: statuses.count(s) for s in set(statuses)},
    )
    assert all(t is not None and t < 40 for t in r["closed_after"]), r["closed_after"]
    for response in r["responses"]:
        assert response.startswith(b"HTTP/1.1 408") and b"connection: close" in response.lower(), response[:300]
        body = faults.json_body(response)
        assert body["status"] == 408 and "not received within 5 s" in body["error"]
    assert 'elf_http_requests_total{endpoint="/classify",status="408"} 110.0' in r["metrics"]


def test_slow_headers_get_408_from_the_protocol():
    server = RunningServer("--model-repository", str(MODELS), "--read-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the headers
            t0 = time.monotonic()
            response, closed = faults.read_until_closed(s, 10)
        assert closed is not None and 0.9 < closed - t0 < 3, closed and closed - t0
        assert response.startswith(b"HTTP/1.1 408") and faults.json_body(response) == {
            "error": "request headers not received within 1 s",
            "status": 408,
        }
    finally:
        server.stop()


def test_an_aborted_upload_is_counted_as_499_not_as_bad_input(cifar):
    server = RunningServer("--model-repository", str(MODELS))
    head, body = faults.upload(server.port, png(cifar[1].images[0]))
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(head + body[:100])
            time.sleep(0.3)
        metrics = wait_for(
            lambda: (lambda t: t if 'status="499"' in t else None)(httpx.get(server.url + "/metrics").text),
            5,
            "the abort to be counted",
        )
        assert 'elf_http_requests_total{endpoint="/classify",status="499"} 1.0' in metrics
        assert 'endpoint="/classify",status="400"' not in metrics
    finally:
        server.stop()


def test_a_stopped_worker_is_noticed_killed_and_replaced(cifar):
    r = faults.stopped_worker(png(cifar[1].images[0]))
    assert r["unready_after"] < 5 and any("has not answered for" in p for p in r["problems"]), r["problems"]
    assert r["replaced_after"] < 20 and r["victim"] not in r["workers"] and len(r["workers"]) == 2
    # new connections: none lands on a listener nobody accepts from
    assert all(status == 200 and seconds < 2 for status, seconds in r["answers"]), r["answers"]
    assert "has not answered for" in r["log"] and "killing it" in r["log"]


def test_a_paused_machine_kills_no_worker(cifar):
    """The whole server stopped past the worker timeout (as a paused VM is) and continued, the
    supervisor first: every worker's silence includes the supervisor's own pause, so none is
    killed, and the server answers at once."""
    server = RunningServer(
        "--workers", "2", env={"ELF_HEARTBEAT_TIMEOUT_SECONDS": "1", "ELF_WORKER_TIMEOUT_SECONDS": "2"}
    )
    try:
        workers = workers_of(server)
        for p in (server.proc, *workers):
            os.kill(p.pid, signal.SIGSTOP)
        time.sleep(4)
        os.kill(server.proc.pid, signal.SIGCONT)
        time.sleep(0.3)  # the supervisor looks before the workers beat again
        for p in workers:
            os.kill(p.pid, signal.SIGCONT)
        time.sleep(2.5)
        assert sorted(p.pid for p in workers_of(server)) == sorted(p.pid for p in workers)
        assert (
            httpx.post(server.url + "/classify", files={"file": ("x.png", png(cifar[1].images[0]))}).status_code == 200
        )
        assert httpx.get(server.health_url + "/readyz").status_code == 200
        assert "not scheduled for" in server.log.read_text() and "killing it" not in server.log.read_text()
    finally:
        server.stop()


def test_healthz_fails_while_a_worker_is_silent_past_the_timeout():
    """The health port of a supervisor whose one worker serves, then stops beating: /readyz fails
    past the heartbeat timeout, /healthz past the worker timeout (the liveness probe's cue when
    the supervisor's own kill does not take), and both recover with the next beat."""
    settings = Settings(workers=1, heartbeat_timeout_seconds=0.5, worker_timeout_seconds=2)
    supervisor = Supervisor(settings)
    supervisor.running[0] = Worker(0, process=None, readiness={"problems": [], "providers": {"default": "cpu"}})
    server = HealthServer(("127.0.0.1", 0), health_handler(supervisor))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    beats = supervisor.heartbeats.beats
    try:
        answers = {}
        for silent in (0.0, 1.0, 3.0, 0.0):
            beats[0] = time.monotonic() - silent
            answers[silent] = (httpx.get(url + "/readyz").status_code, httpx.get(url + "/healthz"))
        assert [answers[s][0] for s in (1.0, 3.0)] == [503, 503] and answers[0.0][0] == 200
        assert answers[1.0][1].status_code == 200 and answers[0.0][1].json() == {"status": "ok"}
        hung = answers[3.0][1]
        assert hung.status_code == 503 and hung.json()["status"] == "unresponsive"
        assert hung.json()["problems"][0].startswith("worker 1 of 1 has not answered for 3.")
    finally:
        server.shutdown()
        server.server_close()


def test_a_replaced_worker_gets_its_share_of_keep_alive_clients(cifar):
    r = faults.replacement_share(png(cifar[1].images[0]))
    assert r["share"] >= 0.25, r


def test_a_second_server_on_the_port_is_refused_and_the_first_keeps_its_metrics(tmp_path, cifar):
    metrics_dir = tmp_path / "metrics"
    first = RunningServer("--model-repository", str(MODELS), env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        for _ in range(3):
            assert (
                httpx.post(first.url + "/classify", files={"file": ("x.png", png(cifar[1].images[0]))}).status_code
                == 200
            )
        for env in ({}, {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}):  # its own metrics directory, or the first's
            t0 = time.monotonic()
            second = run_server_to_exit(first.port, timeout=15, env=env)
            assert second.returncode == 2 and time.monotonic() - t0 < 15
            assert second.stderr.count("\n") == 1 and second.stderr.startswith("error: "), second.stderr
            assert (
                f"port {first.port} is already served" in second.stderr
                or "metrics directory" in second.stderr
                and "in use by another server" in second.stderr
            )
        metrics = httpx.get(first.url + "/metrics").text
        assert 'elf_http_requests_total{endpoint="/classify",status="200"} 3.0' in metrics
    finally:
        first.stop()


def test_hot_restart_starts_beside_and_takes_over(cifar):
    first = RunningServer("--model-repository", str(MODELS))
    data = png(cifar[1].images[0])
    second = None
    try:
        second = RunningServer("--model-repository", str(MODELS), "--hot-restart", port=first.port)
        assert first.stop() == 0
        assert httpx.post(second.url + "/classify", files={"file": ("x.png", data)}).status_code == 200
        # The claim passed to the second: a third is refused.
        third = run_server_to_exit(first.port, timeout=30)
        assert third.returncode == 2 and f"pid {second.proc.pid}" in third.stderr, third.stderr
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.parametrize(
    "folder, reason", [("/dev/null/metrics", "Not a directory"), ("/proc/elf-metrics", "No such file or directory")]
)
def test_an_unusable_metrics_directory_is_one_line_and_exit_2(folder, reason):
    r = run_server_to_exit(free_port(), timeout=60, env={"PROMETHEUS_MULTIPROC_DIR": folder})
    assert r.returncode == 2 and r.stderr == f"error: metrics directory {folder}: {reason}\n", r.stderr


def test_uploads_unfinished_at_the_end_of_a_drain_get_a_json_503(cifar):
    server = RunningServer(
        "--model-repository",
        str(MODELS),
        "--read-timeout",
        "30",
        env={"ELF_DRAIN_SECONDS": "0.5", "ELF_SHUTDOWN_TIMEOUT_SECONDS": "1"},
    )
    head, body = faults.upload(server.port, png(cifar[1].images[0]))
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(head + body[:100])
        time.sleep(0.3)
        server.proc.send_signal(signal.SIGTERM)
        response, closed = faults.read_until_closed(s, 15)
    assert server.proc.wait(30) == 0
    assert closed is not None and response.startswith(b"HTTP/1.1 503"), response[:300]
    assert b"connection: close" in response.lower() and faults.json_body(response)["status"] == 503
    assert "shutting down" in faults.json_body(response)["error"]


def test_the_health_port_bounds_its_threads_and_drops_stalled_connections():
    server = RunningServer("--model-repository", str(MODELS))
    supervisor = psutil.Process(server.proc.pid)
    stalled = []
    try:
        threads_before = supervisor.num_threads()
        for _ in range(300):
            stalled.append(socket.create_connection(("127.0.0.1", server.health_port)))
            stalled[-1].sendall(b"GET /healthz HTTP/1.1\r\n")  # and nothing more
        time.sleep(0.5)
        assert supervisor.num_threads() <= threads_before + 32 + 1
        wait_for(lambda: health(server, "/healthz").status_code == 200, 10, "a probe answered among the stalled")
        closed = [faults.read_until_closed(s, 0.1)[1] for s in stalled]
        wait_for(
            lambda: all(faults.read_until_closed(s, 0.05)[1] or c for s, c in zip(stalled, closed)),
            10,
            "every stalled connection closed",
        )
    finally:
        for s in stalled:
            s.close()
        server.stop()


def test_workers_outliving_a_killed_supervisor_remove_its_metrics_folder():
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    server = RunningServer("--model-repository", str(MODELS), "--workers", "2", env=None, base_env=env)
    workers = workers_of(server)
    folder = Path(workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
    assert folder.is_dir() and folder.name.startswith("elf-metrics-")
    server.proc.kill()
    server.proc.wait(10)
    psutil.wait_procs(workers, timeout=30)
    assert not any(w.is_running() for w in workers)
    assert not folder.exists()
