"""Faults a server meets in production, measured on this machine: the numbers behind the fault
tests' goals (tests/server/test_faults.py asserts them on the same scenarios, tests/server/faults.py).

  slow uploads      100 connections sending a real upload's body at 1 byte/s and 10 sending
                    headers only, beside 8 keep-alive clients for 15 s: the clients' 200 share,
                    when the slow connections were closed, and with what
  stopped worker    SIGSTOP of one of two workers: seconds to /readyz 503 on the health port, to
                    the kill, to a ready replacement; 20 requests on new connections after it
  replacement       12 keep-alive clients, one of two workers SIGKILLed: the replacement's share of
                    the workers' CPU over the 10 s from 15 s after the kill

    python benchmarks/faults.py [--runs slow,stopped,replacement]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.server import faults  # noqa: E402
from tests.server.conftest import png  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="slow,stopped,replacement")
    runs = set(p.parse_args().runs.split(","))
    image = png(load_cifar10(default_data_dir())[1].images[0])
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; server: 2 workers, default settings")
    if "slow" in runs:
        r = faults.slow_uploads(image)
        closed = [t for t in r["closed_after"] if t is not None]
        first_lines = Counter(resp.split(b"\r\n", 1)[0].decode() for resp in r["responses"])
        when = f", after {min(closed):.1f}-{max(closed):.1f} s" if closed else " (within 40 s)"
        print(
            f"slow uploads: normal clients {100 * r['ok_share']:.1f}% 200 of {len(r['statuses'])} requests "
            f"({dict(Counter(r['statuses']))}); slow connections closed {len(closed)} of {len(r['closed_after'])}"
            f"{when}, answered {dict(first_lines)}"
        )
    if "stopped" in runs:
        r = faults.stopped_worker(image)
        worst = max(seconds for _, seconds in r["answers"])
        print(
            f"stopped worker: /readyz 503 after {r['unready_after']:.1f} s, killed after {r['killed_after']:.1f} s, "
            f"ready with a replacement after {r['replaced_after']:.1f} s; 20 new connections: "
            f"{dict(Counter(s for s, _ in r['answers']))}, slowest {1000 * worst:.0f} ms"
        )
    if "replacement" in runs:
        r = faults.replacement_share(image)
        print(
            f"replacement: {100 * r['share']:.1f}% of the workers' CPU over 10 s from 15 s after the kill "
            f"(replacement {r['replacement']:.2f} s, survivor {r['survivor']:.2f} s)"
        )


if __name__ == "__main__":
    main()
