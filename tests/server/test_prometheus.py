"""A real Prometheus scrapes a real server and sees the exit counts of a known mix of requests."""

import shutil
import subprocess
import time

import httpx
import pytest

from .conftest import MODELS, RunningServer, exit_mix, free_port, png

PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus binary not installed (.ci/run installs it)")
def test_prometheus_scrapes_exit_counts(tmp_path, cifar):
    server, replica = RunningServer("--model-repository", str(MODELS)), RunningServer("--model-repository", str(MODELS))
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: elf\n    static_configs: [{{targets: ['127.0.0.1:{server.port}', "
        f"'127.0.0.1:{replica.port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=server.url) as c:
            for i in range(4):
                c.post("/classify", files={"file": ("x.png", png(cifar[1].images[i]))}, data={"threshold": "0"})
            for i in range(2):
                c.post("/classify", files={"file": ("x.png", png(cifar[1].images[i]))}, data={"threshold": "1"})
        want = exit_mix(4, 2)
        got = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/query",
                    params={"query": f'elf_exits_total{{model="default",instance="127.0.0.1:{server.port}"}}'},
                    timeout=2,
                )
                got = {s["metric"]["exit"]: float(s["value"][1]) for s in r.json()["data"]["result"]}
            except (httpx.TransportError, KeyError, ValueError):
                pass
            if got == want:
                break
            time.sleep(0.5)
        assert got == want
        up, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:  # both targets scraped at least once
            result = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}).json()
            up = [r["value"][1] for r in result["data"]["result"]]
            if up == ["1", "1"]:
                break
            time.sleep(0.5)
        assert up == ["1", "1"]
        # Every dashboard query runs against two replicas without an error (e.g. many-to-many joins).
        for expr in dashboard_queries():
            q = expr.replace("$model", ".*").replace("$__rate_interval", "1m")
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": q}, timeout=5).json()
            assert r["status"] == "success", (expr, r)
        providers = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/query",
            params={"query": next(e for e in dashboard_queries() if "elf_execution_provider" in e)},
        ).json()["data"]["result"]
        assert len(providers) == 2
    finally:
        prom.terminate()
        prom.wait(10)
        server.stop()
        replica.stop()


def dashboard_queries() -> list[str]:
    import json

    from .test_deploy import DASHBOARD

    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
