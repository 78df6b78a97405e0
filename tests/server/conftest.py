import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from ..conftest import REPO, cli_args

MODELS = REPO / "models"
# The checkpoint models/default was exported from (scripts/ship_default.sh).
DEFAULT_CHECKPOINT = REPO / "results" / "fits" / "hybrid-lt-mid-if100-seed0-rebalance" / "checkpoint.pt"
# The shipped model's number of exits (its manifest): tests that count exits follow it.
DEFAULT_EXITS = len(json.loads((MODELS / "default" / "manifest.json").read_text())["stages"])


def exit_mix(first: int, last: int) -> dict[str, float]:
    """elf_exits_total by exit label after `first` images left at exit 1 and `last` at the final exit."""
    return {str(k): float(first if k == 1 else last if k == DEFAULT_EXITS else 0) for k in range(1, DEFAULT_EXITS + 1)}


def png(array: np.ndarray) -> bytes:
    """A real image upload: one CIFAR-10 array (H x W x 3, uint8) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def read_response(f) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response from a socket's file (status, lower-case headers, body)."""
    status = int(f.readline().split()[1])
    headers = {}
    while line := f.readline().decode().strip():
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return status, headers, f.read(int(headers["content-length"]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, *args, env=None, port=None, base_env=None):
        self.port = port or free_port()
        self.health_port = self.grpc_port = self.port
        while self.health_port == self.port:
            self.health_port = free_port()
        while self.grpc_port in (self.port, self.health_port):
            self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.health_url = f"http://127.0.0.1:{self.health_port}"  # the supervisor's /healthz and /readyz
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server",
                *cli_args(
                    *args, port=self.port, health_port=self.health_port, grpc_port=self.grpc_port, log_level="warning"
                ),
            ],
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
            # no drain period unless a test asks for one: stopping takes no 5 s then
            env={**(os.environ if base_env is None else base_env), "ELF_DRAIN_SECONDS": "0", **(env or {})},
        )
        self.started = time.monotonic()
        self._wait_until(lambda: httpx.get(self.url + "/healthz", timeout=1).status_code == 200, "answer")
        self.first_answer_s = time.monotonic() - self.started
        # Every worker listening: connections opened before would all stay on worker 1.
        self._wait_until(
            lambda: (
                not any(
                    "is starting" in p for p in httpx.get(self.health_url + "/readyz", timeout=1).json()["problems"]
                )
            ),
            "start every worker",
        )

    def _wait_until(self, started, what: str) -> None:
        deadline = self.started + 60
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                if started():
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server did not {what} in 60 s"
            time.sleep(0.05)

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def sigterm_under_load(server: RunningServer, threads: list, done, at_signal):
    """Start the load's threads, SIGTERM the server 2 s later, wait for its exit and the threads'
    end (`done` set once it has exited): (its exit code, what `at_signal()` said just before the
    signal)."""
    for t in threads:
        t.start()
    time.sleep(2)
    before = at_signal()
    server.proc.send_signal(signal.SIGTERM)
    status = server.proc.wait(30)
    done.set()
    for t in threads:
        t.join()
    return status, before


@pytest.fixture(scope="module")
def server():
    s = RunningServer("--model-repository", str(MODELS))
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
