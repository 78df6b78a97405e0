"""A design question, measured: one server process against N independent replicas.

Starts 1 server (ONNX Runtime threads: its default) and N servers (one ONNX Runtime thread each),
rounds alternating, and drives the same 16 keep-alive connections of real PNG uploads at them
(split evenly over the replicas) with load_test.py's asyncio client: aggregate req/s at threshold
1.0 and at the default thresholds. Replicas each hold their own models, queue and admission; this
says what taking the GIL and the shared event loop out of the picture is worth on this machine.

    python benchmarks/server_replicas.py [--replicas 2] [--seconds 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load_test import drive, multipart_request  # noqa: E402

from tests.server.conftest import MODELS, RunningServer, png  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402

CONNECTIONS = 16


def aggregate_rps(servers, payloads, fields, seconds) -> float:
    async def all_servers():
        per = CONNECTIONS // len(servers)
        return await asyncio.gather(
            *(
                drive(s.port, [multipart_request("/classify", s.port, d, fields) for d in payloads], per, seconds)
                for s in servers
            )
        )

    results = asyncio.run(all_servers())
    return sum(sum(status == 200 for status in r[0]) for r in results) / max(r[2] for r in results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--seconds", type=float, default=6)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    _, test = load_cifar10(default_data_dir())
    payloads = [png(im) for im in test.images[:256]]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {CONNECTIONS} connections, {args.seconds:g} s a run")
    for _ in range(args.rounds):
        for n, threads in ((1, "0"), (args.replicas, "1")):
            servers = [
                RunningServer("--model-repository", str(MODELS), env={"ELF_INTRA_OP_THREADS": threads})
                for _ in range(n)
            ]
            try:
                thr1 = aggregate_rps(servers, payloads, {"threshold": "1"}, args.seconds)
                default = aggregate_rps(servers, payloads, {}, args.seconds)
            finally:
                for s in servers:
                    s.stop()
            print(
                f"  {n} server process(es), ORT threads {'default' if threads == '0' else threads}: threshold 1.0 {thr1:7.1f} req/s, "
                f"default {default:7.1f} req/s"
            )


if __name__ == "__main__":
    main()
