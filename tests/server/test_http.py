"""The server as operators run it: a real uvicorn process on loopback."""

import io
import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from modelrepo.manifest import FORMAT_VERSION
from training.cli import main as training_main

from ..conftest import REPO, cli_args
from .conftest import DEFAULT_CHECKPOINT, DEFAULT_EXITS, MODELS, RunningServer, exit_mix, png

# The checkpoint models/default was exported from (its manifest's provenance.fit.parent_sha256 names
# the training run it was fitted from).


def exits_counter(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r'elf_exits_total\{exit="(\d)",model="default"\} (\S+)', text)}


def test_first_answer_within_seconds(server, client):
    assert server.first_answer_s < 10
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["providers"]["default"] == "CPUExecutionProvider"


def test_classify_answers_every_field(client, cifar):
    r = client.post("/classify", files={"file": ("x.png", png(cifar[1].images[0]), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"class_id", "class_name", "confidence", "exit", "exits_total", "latency_ms", "model"}
    assert body["model"] == "default" and body["exits_total"] == DEFAULT_EXITS and 1 <= body["exit"] <= DEFAULT_EXITS
    assert 0 <= body["confidence"] <= 1 and body["latency_ms"] > 0


def test_models_and_openapi(client):
    models = client.get("/models").json()
    assert models["default"] == "default"
    assert models["models"]["default"]["manifest"]["format_version"] == FORMAT_VERSION
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/classify", "/classify/batch", "/models", "/readyz"} <= set(paths)


def test_threshold_zero_and_one_bound_the_exit(client, cifar):
    data = png(cifar[1].images[1])
    assert client.post("/classify", files={"file": ("x.png", data)}, data={"threshold": "0"}).json()["exit"] == 1
    assert (
        client.post("/classify", files={"file": ("x.png", data)}, data={"threshold": "1"}).json()["exit"]
        == DEFAULT_EXITS
    )


BAD_INPUTS = [
    ({"files": {"file": ("x.txt", b"just text")}}, 415, "not an image"),
    ({"files": {"file": ("x.png", b"")}}, 400, "empty file"),
    ({"files": {"picture": ("x.png", b"\x89PNG")}}, 422, "field 'file'"),
    ({"data": {"threshold": "0.5"}}, 422, "field 'file'"),
    ({"files": {"file": ("x.png", "TRUNCATED_PNG")}}, 400, "corrupt or truncated"),
    ({"files": {"file": ("x.jpg", "TRUNCATED_JPEG")}}, 400, "corrupt or truncated"),
    ({"files": {"file": ("x.png", "BOMB")}}, 413, "decompression bomb"),
    ({"files": {"file": ("x.png", b"\x00" * (8 * 1024 * 1024 + 1))}}, 413, "file too large"),
    ({"files": {"file": ("x.png", "GOOD")}, "data": {"model": "nope"}}, 404, "unknown model 'nope'"),
    (
        {"files": {"file": ("x.png", "GOOD")}, "data": {"threshold": "1.5"}},
        422,
        "field 'threshold': Input should be less than or equal to 1",
    ),
    (
        {"files": {"file": ("x.png", "GOOD")}, "data": {"threshold": "-0.1"}},
        422,
        "field 'threshold': Input should be greater than or equal to 0",
    ),
    (
        {"files": {"file": ("x.png", "GOOD")}, "data": {"threshold": "abc"}},
        422,
        "field 'threshold': Input should be a valid number",
    ),
    ({"files": {"file": ("x.png", "GOOD")}, "data": {"threshold": "nan"}}, 422, "field 'threshold'"),
]


def materialise(kwargs, cifar):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    samples = {"GOOD": png(cifar[1].images[2]), "TRUNCATED_PNG": png(noise)[:500]}
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG")
    samples["TRUNCATED_JPEG"] = buf.getvalue()[:600]
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, "PNG")
    samples["BOMB"] = buf.getvalue()
    files = {
        k: (name, samples.get(data, data) if isinstance(data, str) else data)
        for k, (name, data) in kwargs.get("files", {}).items()
    }
    return {"files": files or None, "data": kwargs.get("data")}


@pytest.mark.parametrize("kwargs,status,message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input_is_a_clear_4xx(client, cifar, kwargs, status, message):
    r = client.post("/classify", **materialise(kwargs, cifar))
    assert r.status_code == status, r.text
    assert message in r.json()["error"] and r.json()["status"] == status
    # the server stays up and correct
    ok = client.post("/classify", files={"file": ("x.png", png(cifar[1].images[3]))})
    assert ok.status_code == 200


def test_random_bytes_through_http_never_500(client):
    rng = np.random.default_rng(42)
    for n in range(60):
        data = rng.integers(0, 256, int(rng.integers(0, 3000)), dtype=np.uint8).tobytes()
        if n % 3 == 0:  # a valid PNG header followed by garbage
            data = b"\x89PNG\r\n\x1a\n" + data
        r = client.post("/classify", files={"file": ("r.bin", data)})
        assert r.status_code in (200, 400, 413, 415), (r.status_code, r.text)
    assert client.get("/healthz").status_code == 200


def test_batch_endpoint_mixes_results_and_errors(client, cifar):
    files = [("files", ("a.png", png(cifar[1].images[i]))) for i in range(3)] + [("files", ("bad.png", b"zz"))]
    body = client.post("/classify/batch", files=files).json()
    assert [item["status"] for item in body["results"]] == [200, 200, 200, 415]
    assert body["results"][3]["error"].startswith("not an image")
    single = client.post("/classify", files={"file": ("a.png", png(cifar[1].images[1]))}).json()
    assert body["results"][1]["result"]["class_id"] == single["class_id"]
    # nothing to classify: the request fails as /classify would, naming the first bad file
    r = client.post("/classify/batch", files=[("files", ("bad.png", b"zz")), ("files", ("empty.png", b""))])
    assert r.status_code == 415 and "2 failed, the first (bad.png): not an image" in r.json()["error"]
    r = client.post("/classify/batch", files=[("files", ("a.png", png(cifar[1].images[0])))] * 65)
    assert r.status_code == 422 and "too many files: 65 > limit of 64" in r.json()["error"]


def test_metrics_show_exactly_the_mix(cifar):
    server = RunningServer("--model-repository", str(MODELS))
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(5):
                c.post("/classify", files={"file": ("x.png", png(cifar[1].images[i]))}, data={"threshold": "0"})
            for i in range(3):
                c.post("/classify", files={"file": ("x.png", png(cifar[1].images[i]))}, data={"threshold": "1"})
            c.post("/classify", files={"file": ("x.png", b"nope")})
            text = c.get("/metrics").text
    finally:
        server.stop()
    assert exits_counter(text) == exit_mix(5, 3)
    assert 'elf_http_requests_total{endpoint="/classify",status="200"} 8.0' in text
    assert 'elf_http_requests_total{endpoint="/classify",status="415"} 1.0' in text
    assert 'elf_execution_provider{model="default",provider="CPUExecutionProvider"} 1.0' in text
    assert 'elf_exit_depth_count{model="default"} 8.0' in text
    assert f'elf_exit_depth_sum{{model="default"}} {5 + 3 * DEFAULT_EXITS:.1f}' in text
    assert "elf_stage_duration_seconds_bucket" in text and "elf_queue_depth" in text


def mixing_threshold(images) -> float:
    """A threshold at which about half the images leave at exit 1, at least 1e-4 away from every
    image's exit-1 confidence (so float noise between PyTorch and ONNX Runtime cannot flip one)."""
    from server.engine import StagedModel

    model = StagedModel(MODELS / "default", "cpu")
    conf = np.sort(model.run(model.preprocess(images), 0.0).confidence)
    gaps = np.diff(conf)
    middle = len(conf) // 2
    i = middle + int(np.argmax(gaps[middle:] > 2e-4))
    return float(round((conf[i] + conf[i + 1]) / 2, 6))


@pytest.mark.parametrize("which", ["manifest default", "mixing"])
def test_parity_with_training_evaluate(server, client, cifar, tmp_path, data_dir, which):
    """2,000 real test images through HTTP: same class and exit as `python -m training evaluate`."""
    n = 2000
    images = cifar[1].images[:n]
    manifest = client.get("/models").json()["models"]["default"]["manifest"]
    threshold = manifest["thresholds"]["inference"] if which == "manifest default" else mixing_threshold(images)
    shift = manifest["logit_adjustment"] or {"tau": 0.0}
    tau = ",".join(map(str, shift.get("stage_taus") or [shift["tau"]]))
    spelled = ",".join(map(str, threshold)) if isinstance(threshold, list) else str(threshold)
    assert (
        training_main(
            cli_args(
                "evaluate",
                checkpoint=DEFAULT_CHECKPOINT,
                data_dir=data_dir,
                threshold=spelled,
                tau=tau,
                json=tmp_path / "eval.json",
            )
        )
        == 0
    )
    expected = json.loads((tmp_path / "eval.json").read_text())
    if which == "manifest default":
        assert expected["overall"] == pytest.approx(manifest["metrics"]["overall"])
        assert expected["exit_distribution"] == pytest.approx(manifest["metrics"]["exit_distribution"])
    else:
        assert 0.3 < np.mean(np.array(expected["exits"][:n]) == 1) < 0.7

    def send(chunk):
        files = [("files", (f"{i}.png", png(images[i]))) for i in chunk]
        with httpx.Client(base_url=client.base_url, timeout=120) as c:
            data = {} if which == "manifest default" else {"threshold": str(threshold)}  # the server's own default
            while True:  # eight 50-image batches at once exceed the admission bound: retry as told
                r = c.post("/classify/batch", files=files, data=data)
                if r.status_code != 503:
                    return r.json()["results"]
                time.sleep(float(r.headers["retry-after"]) / 10)

    with ThreadPoolExecutor(8) as pool:
        results = [r["result"] for batch in pool.map(send, np.array_split(np.arange(n), 40)) for r in batch]
    got_class = [r["class_id"] for r in results]
    got_exit = [r["exit"] for r in results]
    assert got_class == expected["predictions"][:n]
    assert got_exit == expected["exits"][:n]
    labels = cifar[1].labels[:n]
    assert np.mean(np.array(got_class) == labels) == np.mean(np.array(expected["predictions"][:n]) == labels)
    assert np.bincount(got_exit, minlength=4).tolist() == np.bincount(expected["exits"][:n], minlength=4).tolist()


def test_32_concurrent_clients_for_20_seconds(server, cifar):
    images = cifar[1].images[:64]
    with httpx.Client(base_url=server.url, timeout=30) as c:
        truth = [c.post("/classify", files={"file": ("x.png", png(im))}).json()["class_id"] for im in images]
    errors, answers = [], [0]
    lock = threading.Lock()
    stop = time.monotonic() + 20

    def worker(seed):
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while time.monotonic() < stop:
                i = int(rng.integers(len(images)))
                r = c.post("/classify", files={"file": ("x.png", png(images[i]))})
                with lock:
                    if r.status_code == 503 and "retry-after" in r.headers:  # admission: busy machine
                        continue
                    if r.status_code != 200 or r.json()["class_id"] != truth[i]:
                        errors.append((r.status_code, r.text[:200]))
                    answers[0] += 1

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert answers[0] > 100


def start_and_fail(*args):
    return subprocess.run(
        [sys.executable, "-m", "server", "--port", "0", "--health-port", "0", "--grpc-port", "0", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_missing_model_directory_at_start(tmp_path):
    r = start_and_fail("--model-repository", tmp_path / "nowhere")
    assert r.returncode == 2 and r.stderr.count("nowhere: model repository not found") == 1  # one worker says it
    (tmp_path / "repo").mkdir()
    r = start_and_fail("--model-repository", tmp_path / "repo")
    assert r.returncode != 0 and "default: default model not found" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_model_directory_at_start(tmp_path):
    import shutil

    shutil.copytree(MODELS / "default", tmp_path / "default")
    (tmp_path / "default" / "stage_3.onnx").write_bytes(b"broken")
    r = start_and_fail("--model-repository", tmp_path)
    assert r.returncode != 0 and "stage_3.onnx: sha256 differs" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "default" / "manifest.json").write_text("{}")
    r = start_and_fail("--model-repository", tmp_path)
    assert r.returncode != 0 and "manifest.json: invalid manifest" in r.stderr


def test_a_manifest_asking_for_another_input_size_is_refused_at_start(tmp_path):
    import shutil

    shutil.copytree(MODELS / "default", tmp_path / "default")
    manifest = json.loads((tmp_path / "default" / "manifest.json").read_text())
    manifest["input"]["height"] = manifest["input"]["width"] = 64
    (tmp_path / "default" / "manifest.json").write_text(json.dumps(manifest))
    r = start_and_fail("--model-repository", tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "input 64x64 with 3 channels" in r.stderr and "feeds every model 32x32 RGB images" in r.stderr


def test_readyz_fails_when_gpu_required_but_absent():
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has a CUDA provider")
    server = RunningServer("--model-repository", str(MODELS), "--provider", "cuda")
    try:
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503
        assert "provider cuda required" in r.json()["problems"][0]
        log = server.log.read_text()
        assert "CUDA" not in log or "error" not in log.lower()
    finally:
        server.stop()


def test_overload_is_503_with_retry_after(cifar):
    server = RunningServer(
        "--model-repository",
        str(MODELS),
        env={"ELF_MAX_QUEUE": "2", "ELF_BATCH_WAIT_MS": "300", "ELF_BATCH_SIZE": "64"},
    )
    data = png(cifar[1].images[0])
    try:

        def send(_):
            with httpx.Client(base_url=server.url, timeout=30) as c:
                return c.post("/classify/batch", files=[("files", ("a.png", data)), ("files", ("b.png", data))])

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, range(16)))
        statuses = [r.status_code for r in responses]
        assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
        refused = next(r for r in responses if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "queue is full" in refused.json()["error"]
        assert httpx.get(server.url + "/classify", timeout=5).status_code == 405  # still up
    finally:
        server.stop()


def test_unknown_routes_and_wrong_methods_answer_in_the_error_form(client):
    for method, path, status in (("GET", "/nope", 404), ("GET", "/classify", 405), ("DELETE", "/models", 405)):
        r = client.request(method, path)
        assert r.status_code == status and r.json() == {"error": r.json()["error"], "status": status}
        assert r.json()["error"]
    assert "POST" in client.get("/classify").headers["allow"]
