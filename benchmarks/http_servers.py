"""What the HTTP server itself costs a request, apart from any model: uvicorn (httptools + uvloop,
what `python -m server` runs) against granian (a Rust HTTP server; its ASGI interface, and its own
RSGI one), each one process on one event loop, serving the same minimal app: read the whole body
(3 KB, a pixel tensor's size), answer 94 bytes of JSON. wrk, one thread, 16 connections.

Reported: req/s and the server's CPU-microseconds a request (all its processes and threads). The
inference hot path spends far more than this per request (results/BENCHMARKS.md), so this bounds
what replacing the HTTP server could save.

granian lives in a venv of its own (`--granian-venv`; skipped with a message where it is missing):

    python3 -m venv /opt/peers/granian && /opt/peers/granian/bin/pip install "granian[uvloop]==2.5.0"
    python benchmarks/http_servers.py [--granian-venv /opt/peers/granian] [--rounds 2] [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANSWER = b'{"model_name":"default","outputs":[{"name":"class_id","data":[3]},{"name":"exit","data":[1]}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send):
    """ASGI: the whole body read, one JSON answer."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


class RsgiApp:
    """granian's RSGI: the same, through its own interface."""

    async def __rsgi__(self, scope, protocol):
        await protocol()
        protocol.response_bytes(200, [("content-type", "application/json")], ANSWER)


rsgi_app = RsgiApp()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(port: int, granian: Path | None) -> dict[str, list[str]]:
    servers = {
        "uvicorn (httptools, uvloop)": [
            sys.executable, "-m", "uvicorn", "http_servers:app", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--log-level", "warning", "--no-access-log",
        ],
    }  # fmt: skip
    if granian is not None:
        for interface, target in (("asgi", "http_servers:app"), ("rsgi", "http_servers:rsgi_app")):
            servers[f"granian {interface.upper()} (uvloop)"] = [
                str(granian / "bin" / "granian"), "--interface", interface, target, "--port", str(port),
                "--loop", "uvloop", "--workers", "1", "--runtime-threads", "1", "--log-level", "warning",
                "--no-access-log",
            ]  # fmt: skip
    return servers


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port}: {proc.args}")


def cpu_seconds(pid: int) -> float:
    import psutil  # here, not at the top: granian's venv imports this module for the app alone

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(p.cpu_times().user + p.cpu_times().system for p in procs)


def measure(command: list[str], port: int, script: Path, seconds: float) -> tuple[float, float]:
    """(req/s, CPU-microseconds a request) of one server under wrk."""
    proc = subprocess.Popen(command, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        time.sleep(0.5)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        out = subprocess.run(
            ["wrk", "-t1", "-c16", f"-d{max(1, round(seconds))}s", "-s", str(script), f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cores = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    return rps, cores / rps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--granian-venv", type=Path, default=Path(os.environ.get("PEER_VENVS", "/opt/peers")) / "granian")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8)
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    granian = args.granian_venv if (args.granian_venv / "bin" / "granian").exists() else None
    if granian is None:
        print(f"granian skipped: no venv at {args.granian_venv}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; wrk -t1 -c16, {args.seconds:g} s a run")
    print(f"{'round':<6} {'server':<28} {'req/s':>9} {'CPU us/req':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(os.urandom(32 * 32 * 3))
        script = Path(tmp) / "post.lua"
        script.write_text(
            f'wrk.method = "POST"\nlocal f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
            'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        )
        for round_ in range(1, args.rounds + 1):
            for name in commands(0, granian):
                port = free_port()
                rps, us = measure(commands(port, granian)[name], port, script, args.seconds)
                print(f"{round_:<6} {name:<28} {rps:9.0f} {us:11.1f}", flush=True)


if __name__ == "__main__":
    main()
