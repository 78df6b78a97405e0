"""The inference routes' fast path: which /classify forms it answers itself, that the others reach
FastAPI's route and get the same answers, and its own limits (a real server on loopback)."""

import socket
import time

import httpx
import pytest

from server.fast_path import plain_form

from .conftest import RunningServer, png

BOUNDARY = b"b0undary"
MULTIPART = b"multipart/form-data; boundary=" + BOUNDARY


def form(*parts: tuple[bytes, bytes]) -> bytes:
    """A multipart body of (Content-Disposition parameters, data) parts."""
    body = b"".join(
        b"--%s\r\nContent-Disposition: form-data; %s\r\n\r\n%s\r\n" % (BOUNDARY, params, data) for params, data in parts
    )
    return body + b"--%s--\r\n" % BOUNDARY


FILE = (b'name="file"; filename="x.png"', b"\x89PNG...")


def test_a_plain_upload_is_read_by_the_fast_path():
    assert plain_form(MULTIPART, form(FILE)) == {"file": b"\x89PNG..."}
    body = form((b'name="threshold"', b"0.25"), FILE, (b'name="model"', b"default"))
    assert plain_form(MULTIPART, body) == {"file": b"\x89PNG...", "threshold": "0.25", "model": "default"}
    assert plain_form(b'multipart/form-data; boundary="b0undary"', form(FILE, (b'name="threshold"', b"1")))


@pytest.mark.parametrize(
    "content_type,body",
    [
        (None, form(FILE)),
        (b"application/x-www-form-urlencoded", b"file=abc"),
        (b"multipart/form-data", form(FILE)),  # no boundary
        (b"multipart/form-data; boundary=other", form(FILE)),
        (MULTIPART, form((b'name="picture"; filename="x.png"', b"x"))),  # no file part
        (MULTIPART, form((b'name="file"', b"x"))),  # a field, not a file
        (MULTIPART, form(FILE, FILE)),
        (MULTIPART, form(FILE, (b'name="note"', b"hi"))),
        (MULTIPART, form(FILE, (b'name="model"; filename="m"', b"default"))),
        (MULTIPART, form(FILE, (b'name="model"', b""))),
        (MULTIPART, form(FILE, (b'name="model"', b"\xff"))),
        *[(MULTIPART, form(FILE, (b'name="threshold"', t))) for t in (b"", b"1e-1", b"nan", b"-0.1", b"1.01", b" 0.5")],
        (MULTIPART, form(FILE)[:-10]),  # cut short
    ],
    ids=lambda v: "" if v is None else repr(v)[:40],
)
def test_every_other_form_is_left_to_fastapi(content_type, body):
    assert plain_form(content_type, body) is None


def multipart(image: bytes, *fields: tuple[bytes, bytes]) -> dict:
    return {"content": form((FILE[0], image), *fields), "headers": {"content-type": MULTIPART.decode()}}


def test_forms_fastapi_answers_get_the_fast_paths_answers(client, cifar):
    """Same class, exit and fields whichever path answers: an unknown extra field and an empty model
    (FastAPI: the default) go to FastAPI's route, as does a threshold in exponent form."""
    image = png(cifar[1].images[5])
    fast = client.post("/classify", **multipart(image)).json()
    for extra in ((b'name="note"', b"hi"), (b'name="model"', b"")):
        slow = client.post("/classify", **multipart(image, extra))
        assert slow.status_code == 200, slow.text
        assert {k: v for k, v in slow.json().items() if k != "latency_ms"} == {
            k: v for k, v in fast.items() if k != "latency_ms"
        }
        assert slow.json().keys() == fast.keys()
    for plain, written_otherwise in ((b"0", b"0e0"), (b"1", b"1e0")):
        a = client.post("/classify", **multipart(image, (b'name="threshold"', plain))).json()
        b = client.post("/classify", **multipart(image, (b'name="threshold"', written_otherwise))).json()
        assert (a["class_id"], a["exit"]) == (b["class_id"], b["exit"])
        assert a["exit"] == (1 if plain == b"0" else a["exits_total"])


def test_an_upload_larger_than_memory_holds_is_streamed_by_fastapi_and_classified(client):
    import numpy as np

    noise = png(np.random.default_rng(1).integers(0, 255, (800, 800, 3), dtype=np.uint8))
    assert len(noise) > 1024 * 1024
    r = client.post("/classify", files={"file": ("big.png", noise)})
    assert r.status_code == 200, r.text
    assert 0 <= r.json()["class_id"] < 10 and r.json()["exit"] >= 1


def test_infer_routes_answer_other_methods_405_and_are_documented(client):
    r = client.get("/v2/models/default/infer")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed", "status": 405}
    assert r.headers["allow"] == "POST"
    paths = client.get("/openapi.json").json()["paths"]
    assert "post" in paths["/v2/models/{model}/infer"]
    assert "post" in paths["/v2/models/{model}/versions/{model_version}/infer"]


def test_a_chunked_infer_body_past_the_limit_is_413_and_the_connection_closed(cifar):
    """A chunked body declares no length for the headers' check: the fast path counts as it reads
    (a chunked /classify goes to FastAPI, which spools it)."""
    server = RunningServer("--workers", "1", env={"ELF_MAX_UPLOAD_BYTES": "4096", "ELF_MAX_BATCH_FILES": "1"})
    try:
        limit = 4096 + 1024 * 1024
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(
                b"POST /v2/models/default/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                b"\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            # Just past the limit, then nothing: bytes the server has not read when it closes would
            # make its kernel reset the connection, and the answer could be lost. Small chunks, paced,
            # each read whole (one segment; the server is not pausing its reads).
            chunk, answer = b"x" * 16384, b""
            for _ in range(limit // len(chunk) + 1):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                time.sleep(0.002)
            while data := s.recv(65536):
                answer += data
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:300]
        assert b"connection: close" in head.lower()
        assert b"request body too large" in body
        ok = httpx.post(server.url + "/classify", files={"file": ("x.png", png(cifar[1].images[0]))}, timeout=30)
        assert ok.status_code == 200, ok.text
    finally:
        server.stop()
