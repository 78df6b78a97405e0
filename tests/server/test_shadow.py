"""Online exit agreement: shadow runs through a real uvicorn process, checked image for image
against the same ONNX stages run offline."""

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from server.engine import StagedModel

from .conftest import MODELS, RunningServer
from .test_http import mixing_threshold, png

AGREEMENT = re.compile(r'elf_exit_agreement_total\{agree="(true|false)",exit="(\d)",model="default"\} (\S+)')


def agreement(text: str) -> dict[tuple[str, str], float]:
    return {(m[2], m[1]): float(m[3]) for m in AGREEMENT.finditer(text)}


def dropped(text: str) -> float:
    return float(re.search(r'elf_shadow_dropped_total\{model="default"\} (\S+)', text)[1])


def offline_agreement(images: np.ndarray, threshold: float) -> dict[tuple[str, str], float]:
    model = StagedModel(MODELS / "default", "cpu")
    x = model.preprocess(images)
    served = model.run(x, threshold)
    final = model.run(x, 1.0).class_id  # threshold 1: every image to the end
    counts = {(str(k), a): 0.0 for k in range(1, model.manifest.num_exits) for a in ("true", "false")}
    for e, c, f in zip(served.exit, served.class_id, final):
        if e < model.manifest.num_exits:
            counts[(str(e), "true" if c == f else "false")] += 1
    return counts


@pytest.mark.slow
def test_agreement_counters_equal_the_offline_computation(cifar):
    images = cifar[1].images[:2000]
    threshold = mixing_threshold(images)  # about half leave at exit 1
    expected = offline_agreement(images, threshold)
    assert sum(expected.values()) > 800 and expected[("1", "false")] > 0  # a real mix, not all-agree
    server = RunningServer("--model-repository", str(MODELS), "--shadow-rate", "1")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for chunk in np.array_split(np.arange(len(images)), 40):  # one request at a time: never busy
                files = [("files", (f"{i}.png", png(images[i]))) for i in chunk]
                r = c.post("/classify/batch", files=files, data={"threshold": str(threshold)})
                assert r.status_code == 200
            deadline = time.monotonic() + 60
            while True:  # shadow runs happen in idle time, after the answers
                text = c.get("/metrics").text
                if sum(agreement(text).values()) >= sum(expected.values()) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        assert dropped(text) == 0
        assert agreement(text) == expected
        # The alert level per exit: the manifest's offline agreement at that exit minus 0.05.
        offline = StagedModel(MODELS / "default", "cpu").manifest.metrics.agreement
        for k, a in enumerate(offline, start=1):
            level = re.search(rf'elf_exit_agreement_alert_level{{exit="{k}",model="default"}} (\S+)', text)[1]
            assert float(level) == pytest.approx(a - 0.05)
    finally:
        server.stop()


@pytest.mark.slow
def test_saturated_server_drops_shadow_runs_and_answers_everyone(cifar):
    payloads = [png(im) for im in cifar[1].images[:64]]
    # admission left wide open: every request must be answered for the accounting below
    server = RunningServer("--model-repository", str(MODELS), "--shadow-rate", "1", "--max-wait-ms", "60000")
    try:

        def post(i):
            with httpx.Client(base_url=server.url, timeout=60) as c:
                return c.post(
                    "/classify", files={"file": ("x.png", payloads[i % 64])}, data={"threshold": "0"}
                ).status_code

        with ThreadPoolExecutor(32) as pool:
            codes = list(pool.map(post, range(1500)))
        assert set(codes) == {200}
        # Every image left at exit 1 and was chosen: each ends up shadowed or dropped, none lost.
        deadline = time.monotonic() + 60
        while True:
            text = httpx.get(server.url + "/metrics").text
            accounted = sum(agreement(text).values()) + dropped(text)
            if accounted >= 1500 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert accounted == 1500 and dropped(text) > 0
    finally:
        server.stop()
