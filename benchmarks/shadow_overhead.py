"""Shadow-run overhead under saturation: what online exit agreement costs answered requests.

Two real uvicorn processes on loopback serve the same model, one with --shadow-rate 0 and one
with the rate under test (default 0.01); --clients concurrent clients saturate them in
alternating rounds, so machine noise hits both alike. Printed per server: req/s, latency
percentiles, shadow runs completed and dropped. Goal: req/s at rate 0.01 >= 0.97x
rate 0, same run.

    python benchmarks/shadow_overhead.py [--rate 0.01] [--images 400] [--clients 32] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import statistics
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import line, model_arguments, png

from benchmarks.load_test import drive, multipart_request
from tests.server.conftest import RunningServer
from training.commands.common import DEFAULT_DATA_DIR
from training.data import load_cifar10


def shadow_counts(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics").text
    done = sum(float(v) for v in re.findall(r"elf_exit_agreement_total\{[^}]*\} (\S+)", text))
    dropped = sum(float(v) for v in re.findall(r"elf_shadow_dropped_total\{[^}]*\} (\S+)", text))
    return done, dropped


def main() -> None:
    parser = model_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--rate", type=float, default=0.01)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()

    _, test = load_cifar10(args.data_dir)
    payloads = [png(im) for im in test.images[: args.images]]
    rates = {"shadow rate 0": 0.0, f"shadow rate {args.rate:g}": args.rate}
    servers = {
        name: RunningServer(
            "--model-repository", str(args.model_repository), "--default-model", args.model, "--shadow-rate", str(rate)
        )
        for name, rate in rates.items()
    }
    requests = {
        name: [multipart_request("/classify", server.port, d, {"model": args.model}) for d in payloads]
        for name, server in servers.items()
    }
    results = {name: ([], []) for name in servers}  # req/s of each round, latencies of every answer
    try:
        for name, server in servers.items():
            asyncio.run(drive(server.port, requests[name], args.clients, 1.0))  # warm-up
        for _ in range(args.rounds):
            for name, server in servers.items():
                statuses, latencies, wall, _ = asyncio.run(
                    drive(server.port, requests[name], args.clients, args.seconds)
                )
                if set(statuses) != {200}:
                    raise SystemExit(f"{name}: statuses {sorted(set(statuses))}, expected only 200")
                results[name][0].append(len(statuses) / wall)
                results[name][1].extend(t for _, t in latencies)
        counts = {name: shadow_counts(server.url) for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    print(
        f"machine: {platform.processor() or platform.machine()}, {args.images} CIFAR-10 test images, "
        f"{args.rounds} rounds of {args.seconds:g} s, {args.clients} clients (saturating), model {args.model} "
        f"at its default threshold; req/s (median of the rounds) and latency"
    )
    rps = {}
    for name, (rates_seen, latencies) in results.items():
        rps[name] = statistics.median(rates_seen)
        print(line(name, rps[name], latencies))
        done, dropped = counts[name]
        print(f"    shadow runs completed {done:.0f}, dropped {dropped:.0f}")
    base, shadowed = rps.values()
    print(f"ratio: {shadowed / base:.3f}x req/s with shadow runs (goal >= 0.97x)")


if __name__ == "__main__":
    main()
