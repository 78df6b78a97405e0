"""deploy/prometheus: the alert rules are valid and fire as intended (promtool's own unit tests),
and they read only metrics the server exports."""

import re
import shutil
import subprocess

import pytest

from ..conftest import REPO
from .test_deploy import exported_series

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (.ci/run installs prometheus)")
@pytest.mark.parametrize("args", [("check", "config", "prometheus.yml"), ("test", "rules", "alerts.test.yml")])
def test_promtool(args):
    result = subprocess.run([PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_rules_read_only_exported_metrics():
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    used = set(re.findall(r"\belf_[a-z_]+", text))
    assert {"elf_exit_agreement_total", "elf_exit_agreement_alert_level", "elf_ready"} <= used
    assert used <= exported_series(), used - exported_series()
