"""Fault scenarios on a real `python -m server` (2 workers, default settings) that return what they
measured: the tests (test_faults.py) assert the goals on them, benchmarks/faults.py prints them."""

import json
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil

from .conftest import MODELS, RunningServer
from .test_supervisor import health, wait_for, workers_of


def upload(port: int, image: bytes, boundary: str = "b0undary") -> tuple[bytes, bytes]:
    """A /classify request for `image`: (headers, multipart body)."""
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode(), body


def keep_alive_clients(url: str, data: bytes, n: int, seconds: float) -> list[int]:
    """`n` keep-alive clients posting `data` for `seconds`: every status (None for a transport error)."""
    statuses, lock = [], threading.Lock()

    def client():
        with httpx.Client(base_url=url, timeout=10) as c:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                try:
                    status = c.post("/classify", files={"file": ("x.png", data)}).status_code
                except httpx.TransportError:
                    status = None
                with lock:
                    statuses.append(status)

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float | None]:
    """What the server sent, and when (monotonic) it closed the connection (None: still open)."""
    sock.settimeout(0.2)
    received, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return received, time.monotonic()
        if not chunk:
            return received, time.monotonic()
        received += chunk
    return received, None


def json_body(response: bytes) -> dict:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def watch_until_closed(conns: list[socket.socket], seconds: float) -> list[tuple[bytes, float | None]]:
    """Read every connection at once until the server closes it: (what it sent, monotonic time of
    the close, None if still open after `seconds`) per connection."""
    received = {s: b"" for s in conns}
    closed = {}
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        for s in conns:
            sel.register(s, selectors.EVENT_READ)
        while len(closed) < len(conns) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.1):
                try:
                    chunk = key.fileobj.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[key.fileobj] += chunk
                else:
                    closed[key.fileobj] = time.monotonic()
                    sel.unregister(key.fileobj)
    return [(received[s], closed.get(s)) for s in conns]


def slow_uploads(
    image: bytes,
    slow: int = 100,
    headers_only: int = 10,
    clients: int = 8,
    seconds: float = 15,
    close_within: float = 40,
) -> dict:
    """`slow` connections sending a real upload's body at 1 byte/s and `headers_only` sending none,
    beside `clients` keep-alive clients for `seconds`: the clients' statuses, and what each slow
    connection received and when (seconds from its start) the server closed it."""
    server = RunningServer("--model-repository", str(MODELS), "--workers", "2")
    head, body = upload(server.port, image)
    conns, started = [], time.monotonic()
    try:
        for _ in range(slow + headers_only):
            conns.append(socket.create_connection(("127.0.0.1", server.port)))
            conns[-1].sendall(head)
        stop = threading.Event()

        def trickle():
            for k in range(len(body)):
                if stop.wait(1.0):
                    return
                for s in conns[:slow]:
                    try:
                        s.send(body[k : k + 1])
                    except OSError:
                        pass

        with ThreadPoolExecutor(2) as pool:
            pool.submit(trickle)
            watched = pool.submit(watch_until_closed, conns, close_within)
            statuses = keep_alive_clients(server.url, image, clients, seconds)
            outcomes = watched.result()
            stop.set()
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        for s in conns:
            s.close()
        server.stop()
    return {
        "statuses": statuses,
        "ok_share": statuses.count(200) / max(1, len(statuses)),
        "responses": [r for r, _ in outcomes],
        "closed_after": [None if t is None else t - started for _, t in outcomes],
        "metrics": metrics,
    }


def stopped_worker(image: bytes, requests: int = 20) -> dict:
    """SIGSTOP one of two workers: seconds until the health port's /readyz says 503, until the
    worker is killed, until the server is ready again with a replacement; then `requests` requests
    on new connections (status, seconds each)."""
    server = RunningServer("--model-repository", str(MODELS), "--workers", "2")
    victim = workers_of(server)[0]
    try:
        victim.suspend()
        stopped = time.monotonic()
        unready = wait_for(
            lambda: (lambda r: r if r.status_code == 503 else None)(health(server, "/readyz")),
            20,
            "readyz 503 after the stop",
        )
        unready_after = time.monotonic() - stopped
        wait_for(lambda: not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE, 30, "the kill")
        killed_after = time.monotonic() - stopped
        wait_for(lambda: health(server, "/readyz").status_code == 200, 30, "a replacement, ready")
        replaced_after = time.monotonic() - stopped
        workers = [w.pid for w in workers_of(server)]
        answers = []
        for _ in range(requests):
            t0 = time.monotonic()
            try:
                status = httpx.post(server.url + "/classify", files={"file": ("x.png", image)}, timeout=5).status_code
            except httpx.TransportError:
                status = None
            answers.append((status, time.monotonic() - t0))
        log = server.log.read_text()
    finally:
        if victim.is_running():
            victim.resume()
        server.stop()
    return {
        "unready_after": unready_after,
        "problems": unready.json()["problems"],
        "killed_after": killed_after,
        "replaced_after": replaced_after,
        "victim": victim.pid,
        "workers": workers,
        "answers": answers,
        "log": log,
    }


def replacement_share(image: bytes, clients: int = 12, after: float = 15, window: float = 10) -> dict:
    """`clients` keep-alive clients on two workers, one SIGKILLed: each worker's CPU seconds over
    `window` seconds from `after` seconds after the kill (the replacement's share of the work)."""
    server = RunningServer("--model-repository", str(MODELS), "--workers", "2")
    try:
        load = threading.Thread(target=keep_alive_clients, args=(server.url, image, clients, after + window + 2))
        load.start()
        time.sleep(2)
        survivor, victim = workers_of(server)
        victim.kill()
        time.sleep(after)
        (replacement,) = [w for w in workers_of(server) if w.pid not in (survivor.pid, victim.pid)]
        before = {w: sum(w.cpu_times()[:2]) for w in (survivor, replacement)}
        time.sleep(window)
        busy = {w: sum(w.cpu_times()[:2]) - b for w, b in before.items()}
        load.join()
    finally:
        server.stop()
    return {
        "survivor": busy[survivor],
        "replacement": busy[replacement],
        "share": busy[replacement] / (busy[survivor] + busy[replacement]),
    }
