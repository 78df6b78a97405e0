"""deploy/: the Grafana dashboard queries metrics the server really exports."""

import json
import re

from server import metrics

from ..conftest import REPO

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "elf-reslt.json"


def exported_series() -> set[str]:
    names = set()
    for metric in metrics.REGISTRY.collect():
        names.add(metric.name)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names |= {metric.name + s for s in ("_bucket", "_sum", "_count")}
    return names


def test_dashboard_queries_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][0]["query"])
    used = {name for e in exprs for name in re.findall(r"\belf_[a-z_]+", e)}
    assert used and used <= exported_series(), used - exported_series()
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_prometheus_scrapes_the_server_port():
    text = (REPO / "deploy" / "prometheus" / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text and "server:8000" in text
