"""Serving benchmark: what early exit buys in requests/s, through HTTP and without it.

On the same real CIFAR-10 test images (PNG-encoded), in one run:
  (a) POST /classify at the model's default threshold (early exit),
  (b) POST /classify with threshold 1.0 (every image runs every stage),
  (c) the bare ONNX Runtime stages in-process, batches of 16, one thread, at the default threshold,
  (d) the same at threshold 1.0.
(a) and (b) go through a real uvicorn process on loopback, alternating round by round so machine
noise hits both; the clients are load_test.py's (asyncio, raw keep-alive sockets, prebuilt requests),
so they take little of the CPU the server shares with them. (a)/(b) is what a deployment sees;
(c)/(d) is the inference alone, the most (a)/(b) can reach if HTTP and decoding cost nothing.
Goals: (a)/(b) >= 1.25x for a model whose exits are trained; >= 1.15x for models/default.

    python benchmarks/serve_throughput.py [--model-repository models] [--model default]
                                          [--images 512] [--clients 16] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.load_test import bare_ort, drive, ms, multipart_request  # noqa: E402
from modelrepo.manifest import load_manifest  # noqa: E402
from server.service import format_threshold  # noqa: E402
from tests.server.conftest import RunningServer, png  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402


def http_rounds(server, model: str, payloads: list[bytes], clients: int, seconds: float, rounds: int) -> dict:
    """Requests/s of each round and the latencies of every 200, for (a) and (b) alternating."""
    requests = {
        key: [multipart_request("/classify", server.port, d, {"model": model, **fields}) for d in payloads]
        for key, fields in (("a", {}), ("b", {"threshold": "1"}))
    }
    asyncio.run(drive(server.port, requests["a"], clients, 1.0))  # warm-up
    runs = {key: ([], []) for key in requests}
    for _ in range(rounds):
        for key, reqs in requests.items():
            statuses, latencies, wall, _ = asyncio.run(drive(server.port, reqs, clients, seconds))
            if set(statuses) != {200}:
                raise SystemExit(f"round ({key}): statuses {sorted(set(statuses))}, expected only 200")
            runs[key][0].append(len(statuses) / wall)
            runs[key][1].extend(t for _, t in latencies)
    return runs


def line(name: str, rate: float, latencies=()) -> str:
    percentiles = (
        f"   p50 {ms(latencies, 50)}  p95 {ms(latencies, 95)}  p99 {ms(latencies, 99)} ms" if latencies else ""
    )
    return f"  {name:<40} {rate:8.1f}{percentiles}"


def model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The served model's flags, shared by the benchmarks that start a server."""
    parser.add_argument("--model-repository", type=Path, default=REPO / "models")
    parser.add_argument("--model", default="default")
    return parser


def main() -> None:
    parser = model_arguments(
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5, help="length of each HTTP round and bare-ORT run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()

    _, test = load_cifar10(args.data_dir)
    images = test.images[: args.images]
    model_dir = args.model_repository / args.model
    manifest = load_manifest(model_dir)
    default = manifest.thresholds.inference
    shown = format_threshold(default)

    server = RunningServer("--model-repository", str(args.model_repository), "--default-model", args.model)
    try:
        runs = http_rounds(server, args.model, [png(im) for im in images], args.clients, args.seconds, args.rounds)
    finally:
        server.stop()
    rate_c, exits_c = bare_ort(model_dir, images, args.seconds, default)
    rate_d, _ = bare_ort(model_dir, images, args.seconds, 1.0)
    rate_a, rate_b = (statistics.median(runs[key][0]) for key in ("a", "b"))

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {len(images)} CIFAR-10 test images; model "
        f"{args.model} ({manifest.variant}), default threshold {shown}; HTTP: {args.clients} connections, "
        f"{args.rounds} alternating rounds of {args.seconds:g} s (median round)"
    )
    print(f"  {'':<40} {'rate':>8}")
    print(line(f"(a) HTTP req/s, threshold {shown}", rate_a, runs["a"][1]))
    print(line("(b) HTTP req/s, threshold 1.0", rate_b, runs["b"][1]))
    print(line(f"(c) bare ORT img/s, threshold {shown}", rate_c))
    print(line("(d) bare ORT img/s, threshold 1.0", rate_d))
    cumulative = np.array([s.cumulative_macs for s in manifest.stages], dtype=float)
    share = np.bincount(exits_c, minlength=manifest.num_exits + 1)[1:] / len(exits_c)
    print(
        f"  exits at {shown} (these images, in-process): "
        + " / ".join(f"{100 * d:.1f}%" for d in share)
        + f"; mean MACs share {np.dot(share, cumulative) / cumulative[-1]:.3f}"
    )
    print(
        f"ratios: (a)/(b) {rate_a / rate_b:.2f}x (goals: >= 1.25x trained exits, >= 1.15x models/default); "
        f"(c)/(d) {rate_c / rate_d:.2f}x (inference alone)"
    )


if __name__ == "__main__":
    main()
