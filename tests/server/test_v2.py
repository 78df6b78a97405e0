"""The Open Inference Protocol (server/inference_protocol.py, v2_http.py, v2_grpc.py) on a real
`python -m server` over loopback, driven by its own clients (`tritonclient`, HTTP and gRPC): 1,000
CIFAR-10 test images give the class and exit `/classify` gives, as PNG bytes and as pixel
tensors; JSON without the binary extension; the request's threshold; errors in the protocol's
form with `/classify`'s statuses (gRPC codes mapped); metrics per protocol; and the shipped
descriptor set is the .proto's."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from server.grpc_v2 import DESCRIPTORS, PROTO

from .conftest import DEFAULT_EXITS, MODELS, RunningServer, png, sigterm_under_load

IMAGES = 1000
BATCH = 50


@pytest.fixture(scope="module")
def served():
    server = RunningServer("--model-repository", str(MODELS), "--workers", "2")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def reference(served, cifar):
    """(images, their PNGs, [(class_id, exit)] from POST /classify)."""
    images = cifar[1].images[:IMAGES]
    pngs = [png(im) for im in images]
    with httpx.Client(base_url=served.url, timeout=30) as c:
        answers = [c.post("/classify", files={"file": ("x.png", data)}).json() for data in pngs]
    return images, pngs, [(a["class_id"], a["exit"]) for a in answers]


def pairs(result) -> list[tuple[int, int]]:
    return list(zip(result.as_numpy("class_id").tolist(), result.as_numpy("exit").tolist()))


@pytest.mark.parametrize("client_module", [triton_http, triton_grpc], ids=["http", "grpc"])
@pytest.mark.parametrize("form", ["pixels", "image"])
def test_tritonclient_gets_what_classify_answers(served, reference, client_module, form):
    images, pngs, expected = reference
    url = f"127.0.0.1:{served.port}" if client_module is triton_http else served.grpc_url
    client = client_module.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("default")
    got = []
    for start in range(0, IMAGES, BATCH):
        if form == "pixels":
            tensor = client_module.InferInput("pixels", [BATCH, 32, 32, 3], "UINT8")
            tensor.set_data_from_numpy(images[start : start + BATCH])
        else:
            tensor = client_module.InferInput("image", [BATCH], "BYTES")
            tensor.set_data_from_numpy(np.array(pngs[start : start + BATCH], dtype=object))
        got += pairs(client.infer("default", [tensor]))
    assert got == expected
    assert {e for _, e in got} == set(range(1, DEFAULT_EXITS + 1))  # the early exits are exercised


def test_one_grpc_connection_on_two_inference_threads(reference):
    """All calls of one gRPC channel reach one worker; with two inference threads it runs two
    batches at once (tests/server/test_batcher.py shows they overlap), and every answer is still
    the one `/classify` gives."""
    images, _, expected = reference
    server = RunningServer(
        "--model-repository",
        str(MODELS),
        "--workers",
        "1",
        # admission off the way: 16 calls of 10 images at once are more than 100 ms of work here
        env={"ELF_INFERENCE_THREADS": "2", "ELF_BATCH_SIZE": "8", "ELF_MAX_WAIT_MS": "5000"},
    )
    try:
        client = triton_grpc.InferenceServerClient(server.grpc_url)
        chunks = range(0, IMAGES, 10)

        def infer(start):
            tensor = triton_grpc.InferInput("pixels", [10, 32, 32, 3], "UINT8")
            tensor.set_data_from_numpy(images[start : start + 10])
            return pairs(client.infer("default", [tensor]))

        with ThreadPoolExecutor(16) as pool:
            got = [pair for answer in pool.map(infer, chunks) for pair in answer]
    finally:
        server.stop()
    assert got == expected


def test_metadata_and_the_model_configuration(served):
    http = triton_http.InferenceServerClient(f"127.0.0.1:{served.port}")
    grpc = triton_grpc.InferenceServerClient(served.grpc_url)
    meta = http.get_model_metadata("default")
    assert meta["name"] == "default" and len(meta["versions"]) == 1
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("image", "BYTES", [-1]),
        ("pixels", "UINT8", [-1, 32, 32, 3]),
    ]
    assert [t["name"] for t in meta["outputs"]] == ["class_id", "confidence", "exit"]
    grpc_meta = grpc.get_model_metadata("default", as_json=True)
    assert grpc_meta["versions"] == meta["versions"] and len(grpc_meta["inputs"]) == 2
    assert http.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert grpc.get_server_metadata().name == "elf-reslt"
    config = grpc.get_model_config("default", as_json=True)["config"]
    assert config.get("max_batch_size", 0) == 0 and config["input"][1]["data_type"] == "TYPE_UINT8"  # proto3: 0 omitted
    assert http.get_model_config("default")["input"][0]["data_type"] == "TYPE_STRING"
    version = meta["versions"][0]
    assert http.is_model_ready("default", version) and grpc.is_model_ready("default", version)
    assert not http.is_model_ready("default", "0123456789ab")


def test_json_without_the_binary_extension(served, reference):
    images, _, expected = reference
    body = {
        "id": "r1",
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [4, 32, 32, 3], "data": images[:4].tolist()}],
        "outputs": [{"name": "exit"}, {"name": "class_id"}],
    }
    r = httpx.post(f"{served.url}/v2/models/default/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    answer = r.json()
    assert answer["id"] == "r1" and [o["name"] for o in answer["outputs"]] == ["exit", "class_id"]
    exits, classes = (o["data"] for o in answer["outputs"])
    assert list(zip(classes, exits)) == expected[:4]


@pytest.mark.parametrize("threshold, exits", [(0.0, {1}), (1.0, {DEFAULT_EXITS})])
def test_the_threshold_parameter(served, reference, threshold, exits):
    images = reference[0][:32]
    for module, url in ((triton_http, f"127.0.0.1:{served.port}"), (triton_grpc, served.grpc_url)):
        tensor = module.InferInput("pixels", list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        result = module.InferenceServerClient(url).infer("default", [tensor], parameters={"threshold": threshold})
        assert set(result.as_numpy("exit").tolist()) == exits


def test_errors_in_the_protocols_form(served, reference):
    png_bytes = reference[1][0]
    cases = [  # (model, input name, datatype, data, HTTP status, gRPC code, words)
        ("nope", "image", "BYTES", np.array([png_bytes], dtype=object), 404, "NOT_FOUND", "unknown model 'nope'"),
        (
            "default",
            "foo",
            "BYTES",
            np.array([png_bytes], dtype=object),
            400,
            "INVALID_ARGUMENT",
            "unknown input 'foo'",
        ),
        ("default", "image", "BYTES", np.array([b"not an image"], dtype=object), 415, "INVALID_ARGUMENT", "element 0"),
        (
            "default",
            "pixels",
            "UINT8",
            np.zeros((1, 16, 16, 3), np.uint8),
            400,
            "INVALID_ARGUMENT",
            "UINT8 [N, 32, 32, 3]",
        ),
    ]
    for model, name, datatype, data, status, code, words in cases:
        tensor = triton_http.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        raw = httpx.post(
            f"{served.url}/v2/models/{model}/infer",
            json={
                "inputs": [
                    {
                        "name": name,
                        "datatype": datatype,
                        "shape": list(data.shape),
                        "data": [d.decode("latin-1") for d in data.tolist()] if datatype == "BYTES" else data.tolist(),
                    }
                ]
            },
        )
        assert raw.status_code == status and words in raw.json()["error"], raw.text
        gtensor = triton_grpc.InferInput(name, list(data.shape), datatype)
        gtensor.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as info:
            triton_grpc.InferenceServerClient(served.grpc_url).infer(model, [gtensor])
        assert info.value.status() == f"StatusCode.{code}" and words in info.value.message()
    bad = httpx.post(f"{served.url}/v2/models/default/infer", json={"inputs": [{"name": "image"}]})
    assert bad.status_code == 400 and "'name', a 'datatype' and a 'shape'" in bad.json()["error"]
    threshold = httpx.post(
        f"{served.url}/v2/models/default/infer",
        json={
            "parameters": {"threshold": 2},
            "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}],
        },
    )
    assert threshold.status_code == 400 and "'threshold' must be a number in [0, 1]" in threshold.json()["error"]


def test_metrics_per_protocol(served, reference):
    tensor = triton_grpc.InferInput("pixels", [1, 32, 32, 3], "UINT8")
    tensor.set_data_from_numpy(reference[0][:1])
    triton_grpc.InferenceServerClient(served.grpc_url).infer("default", [tensor])
    http_tensor = triton_http.InferInput("pixels", [1, 32, 32, 3], "UINT8")
    http_tensor.set_data_from_numpy(reference[0][:1])
    triton_http.InferenceServerClient(f"127.0.0.1:{served.port}").infer("default", [http_tensor])
    text = httpx.get(served.url + "/metrics").text
    http_ok = next(
        x
        for x in text.splitlines()
        if x.startswith('elf_http_requests_total{endpoint="/v2/models/{model}/infer",status="200"}')
    )
    grpc_ok = next(
        x for x in text.splitlines() if x.startswith('elf_grpc_requests_total{code="OK",method="ModelInfer"}')
    )
    assert float(http_ok.split()[-1]) >= 1 and float(grpc_ok.split()[-1]) >= 1
    assert 'elf_grpc_request_duration_seconds_count{method="ModelInfer"}' in text


def test_the_shipped_descriptor_set_is_the_protos(tmp_path):
    out = tmp_path / "inference.binpb"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}", PROTO.name],
        check=True,
    )
    assert out.read_bytes() == DESCRIPTORS.read_bytes(), (
        "server/grpc_v2/inference.binpb is stale: run "
        "python -m grpc_tools.protoc -Iserver/grpc_v2 "
        "--descriptor_set_out=server/grpc_v2/inference.binpb inference.proto"
    )


def test_grpc_calls_finish_through_the_drain(cifar, tmp_path):
    """SIGTERM under gRPC load: ServerReady turns false while calls are still answered, then the
    gRPC server stops taking calls with the HTTP listeners (UNAVAILABLE: never started, safe to
    retry), every call the server started is answered, and the server exits 0. A call that reaches
    gRPC's core in the instant it stops is cancelled there (CANCELLED) before the server sees it:
    the server's own count of answered calls equals the clients' count of answers."""
    import threading
    import time

    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    metrics_dir = tmp_path / "metrics"
    server = RunningServer(
        "--model-repository",
        str(MODELS),
        "--drain-seconds",
        "1.5",
        "--max-wait-ms",
        "5000",
        env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
    )
    images = cifar[1].images[:16]
    outcomes = {"ok": 0, "refused": 0, "cancelled": 0, "lost": []}
    ready, lock, done = [], threading.Lock(), threading.Event()

    def client():
        grpc = triton_grpc.InferenceServerClient(server.grpc_url)
        tensor = triton_grpc.InferInput("pixels", [4, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(images[:4])
        while not done.is_set():
            try:
                grpc.infer("default", [tensor], client_timeout=20)
                key = "ok"
            except InferenceServerException as exc:
                key = {"StatusCode.UNAVAILABLE": "refused", "StatusCode.CANCELLED": "cancelled"}.get(exc.status())
                if key is None:
                    with lock:
                        outcomes["lost"].append(exc.message())
                    continue
                time.sleep(0.05)
            with lock:
                outcomes[key] += 1

    def watch():
        grpc = triton_grpc.InferenceServerClient(server.grpc_url)
        while not done.is_set():
            try:
                ready.append(grpc.is_server_ready())
            except InferenceServerException:
                ready.append(None)
            time.sleep(0.1)

    threads = [threading.Thread(target=client) for _ in range(8)] + [threading.Thread(target=watch)]
    status, before = sigterm_under_load(server, threads, done, at_signal=lambda: outcomes["ok"])
    assert status == 0, server.log.read_text()[-2000:]
    assert outcomes["lost"] == [] and before > 0 and outcomes["ok"] > before, outcomes
    assert outcomes["refused"] > 0  # after the listeners closed
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(metrics_dir))
    answered = {
        s.labels["code"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "elf_grpc_requests_total" and s.labels["method"] == "ModelInfer"
    }
    assert answered == {"OK": outcomes["ok"]}, (answered, outcomes)  # nothing the server started was lost
    seen = [r for r in ready if r is not None]
    assert seen[0] is True and False in seen  # ready, then not while still answering
