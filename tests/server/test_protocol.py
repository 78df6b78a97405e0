"""protocol.py on a real uvicorn over loopback: a busy server's 503s answered by the HTTP protocol
itself, with a real Admission made busy (the app behind never sees a refused request, the refused
body is skipped, the connection stays usable, pipelined answers keep their order, what the
protocol hands on reaches the ASGI path), and connections that age out, except while draining."""

import contextlib
import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest
import uvicorn

from server import metrics as m
from server.admission import Admission
from server.config import Settings
from server.middleware import error_response
from server.protocol import server_protocol

from .conftest import read_response


async def app(scope, receive, send):
    """Answers every request with its path, after reading the whole body (as the real routes do)."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    app.seen.append((scope["method"], scope["path"], len(body)))
    payload = json.dumps({"path": scope["path"], "body": len(body)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def served():
    """(port, state): uvicorn with the server's protocol; state.admission refuses until emptied."""
    admission = Admission(max_wait_s=0.05, batch_size=64)
    admission.observe_batch(64, 1.0)
    admission.reserve(64)  # one batch of a second admitted: expected wait 1 s > 50 ms
    with serving(
        SimpleNamespace(settings=Settings(), admission=admission, draining=False, closing=False)
    ) as port_state:
        yield port_state


@contextlib.contextmanager
def serving(state):
    app.seen = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=server_protocol(state), log_level="warning", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], state
    finally:
        server.should_exit = True
        thread.join(10)


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


def refusals_counted(path: str = "/classify") -> float:
    return m.REGISTRY.get_sample_value("elf_http_requests_total", {"endpoint": path, "status": "503"}) or 0.0


def test_a_busy_server_refuses_in_the_protocol_and_the_connection_goes_on(served):
    port, state = served
    before = refusals_counted()
    body = bytes(range(256)) * 40  # 10 KB the parser must skip
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        request = post("/classify?model=default", body)
        s.sendall(request[: -len(body) + 100])  # headers and the body's first 100 bytes
        status, headers, payload = read_response(f)  # answered before the rest of the body is sent
        s.sendall(request[-len(body) + 100 :])
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert headers["content-type"] == "application/json" and "server" in headers and "date" in headers
        error = json.loads(payload)
        assert error["status"] == 503 and error["error"].startswith("server busy: admitted work would take")
        assert payload == error_response(503, error["error"]).body  # what the ASGI path would send

        s.sendall(post("/classify/batch", body[:5000]) + post("/classify", body))  # pipelined
        assert [read_response(f)[0] for _ in range(2)] == [503, 503]
        s.sendall(post("/v2/models/default/infer", body[:100]))  # the inference protocol's too
        assert read_response(f)[0] == 503
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # the same connection, after skipped bodies
        status, _, payload = read_response(f)
        assert status == 200 and json.loads(payload) == {"path": "/healthz", "body": 0}
    assert app.seen == [("GET", "/healthz", 0)]  # no refused request reached the app
    assert refusals_counted() - before == 2 and refusals_counted("/classify/batch") >= 1
    assert refusals_counted("/v2/models/{model}/infer") >= 1


def test_a_refused_body_split_over_many_writes_is_skipped_to_its_end(served):
    port, state = served
    body = b"x" * 30000
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        request = post("/classify", body)
        for i in range(0, len(request), 4096):
            s.sendall(request[i : i + 4096])
            time.sleep(0.001)
        assert read_response(f)[0] == 503
        s.sendall(post("/other", b"abc"))
        status, _, payload = read_response(f)
        assert status == 200 and json.loads(payload) == {"path": "/other", "body": 3}


def test_what_the_protocol_hands_on_reaches_the_app(served):
    """Admitted work, an Expect: 100-continue upload and a closing server go to the ASGI path (whose
    middleware decides there)."""
    port, state = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert f.readline().startswith(b"HTTP/1.1 100")  # uvicorn asks for the body once the app reads it
        f.readline()
        s.sendall(b"abc")
        assert read_response(f)[0] == 200
        state.closing = True
        s.sendall(post("/classify", b"12345"))
        assert read_response(f)[0] == 200
        state.closing = False
        state.admission.release(64)  # nothing admitted: not busy
        s.sendall(post("/classify/batch", b"123"))
        assert read_response(f)[0] == 200
    assert app.seen == [("POST", "/classify", 3), ("POST", "/classify", 5), ("POST", "/classify/batch", 3)]


def test_a_connection_past_its_age_is_answered_with_close_except_while_draining():
    state = SimpleNamespace(
        settings=Settings(connection_max_age_seconds=0.3), admission=Admission(0.05, 64), draining=False, closing=False
    )
    with serving(state) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
            s.sendall(post("/classify", b"abc"))
            assert "connection" not in read_response(f)[1]  # young: kept alive
            time.sleep(0.4)
            s.sendall(post("/classify", b"abc"))
            status, headers, _ = read_response(f)
            assert status == 200 and headers["connection"] == "close" and f.read() == b""  # then closed
        state.draining = True
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s, s.makefile("rb") as f:
            time.sleep(0.4)
            for _ in range(2):
                s.sendall(post("/classify", b"abc"))
                assert "connection" not in read_response(f)[1]
