"""Serving benchmark: requests/s and latency percentiles of the early-exit server.

On the same real CIFAR-10 test images (PNG-encoded), in one run:
  (a) POST /classify at the model's default threshold (early exit),
  (b) POST /classify with threshold 1.0 (every image runs every stage),
  (c) the bare ONNX Runtime stages in-process, one image at a time, no HTTP (default threshold).
(a) and (b) go through a real uvicorn process on loopback, driven by --clients concurrent
clients, alternating round by round so machine noise hits both. Goals: (a) >= 1.25x (b) for a model
whose exits are trained (issue 3); >= 1.15x for models/default (issue 8).

    python benchmarks/serve_throughput.py [--model-repository models] [--model default]
                                          [--images 500] [--clients 8] [--rounds 3]
"""
from __future__ import annotations

import argparse
import io
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.engine import StagedModel  # noqa: E402
from server.service import format_threshold  # noqa: E402
from tests.server.conftest import RunningServer  # noqa: E402
from training.data import load_cifar10  # noqa: E402
from training.commands.common import DEFAULT_DATA_DIR  # noqa: E402


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def http_round(url: str, payloads: list[bytes], threshold: str | None, clients: int, model: str):
    def one(data):
        form = {"model": model, **({"threshold": threshold} if threshold is not None else {})}
        t0 = time.perf_counter()
        r = http.post("/classify", files={"file": ("x.png", data)}, data=form)
        r.raise_for_status()
        return time.perf_counter() - t0, r.json()["exit"]

    with httpx.Client(base_url=url, timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, payloads))
        wall = time.perf_counter() - t0
    return wall, [r[0] for r in results], [r[1] for r in results]


def summary(name, walls, latencies, n):
    lat = np.array(latencies) * 1000
    rps = n / statistics.median(walls)
    print(f"  {name:<34} {rps:8.1f} req/s   p50 {np.percentile(lat, 50):6.2f} ms   "
          f"p95 {np.percentile(lat, 95):6.2f} ms   p99 {np.percentile(lat, 99):6.2f} ms")
    return rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=REPO / "models")
    parser.add_argument("--model", default="default")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()

    _, test = load_cifar10(args.data_dir)
    images = test.images[:args.images]
    payloads = [png(im) for im in images]
    staged = StagedModel(args.model_repository / args.model, "cpu")
    manifest = staged.manifest
    default = manifest.thresholds.inference
    shown = format_threshold(default)
    per_exit = np.array([default if isinstance(default, list) else [default] * (manifest.num_exits - 1)],
                        np.float32)

    server = RunningServer("--model-repository", str(args.model_repository), "--default-model", args.model)
    try:
        http_round(server.url, payloads[:50], None, args.clients, args.model)  # warm-up
        runs = {"a": ([], [], []), "b": ([], [], [])}
        for _ in range(args.rounds):
            for key, thr in (("a", None), ("b", "1.0")):
                wall, lat, exits = http_round(server.url, payloads, thr, args.clients, args.model)
                runs[key][0].append(wall)
                runs[key][1].extend(lat)
                runs[key][2].extend(exits)
    finally:
        server.stop()

    x = staged.preprocess(images)
    walls, lat, exits = [], [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for i in range(len(x)):
            t = time.perf_counter()
            r = staged.run(x[i:i + 1], per_exit)
            lat.append(time.perf_counter() - t)
            exits.append(int(r.exit[0]))
        walls.append(time.perf_counter() - t0)

    print(f"machine: {platform.processor() or platform.machine()}, {args.images} CIFAR-10 test images, "
          f"{args.clients} HTTP clients, {args.rounds} rounds (median round); model {args.model} "
          f"({manifest.variant}), default threshold {shown}")
    rps_a = summary(f"(a) HTTP, threshold {shown}", *runs["a"][:2], len(payloads))
    rps_b = summary("(b) HTTP, threshold 1.0", *runs["b"][:2], len(payloads))
    rps_c = summary(f"(c) bare ORT stages, threshold {shown}", walls, lat, len(x))
    cumulative = np.array([s.cumulative_macs for s in manifest.stages], dtype=float)
    for key, ex in (("a", runs["a"][2]), ("b", runs["b"][2])):
        dist = np.bincount(ex, minlength=manifest.num_exits + 1)[1:] / len(ex)
        print(f"  exits ({key}): " + " / ".join(f"{100 * d:.1f}%" for d in dist)
              + f"   mean MACs/image {np.dot(dist, cumulative) / 1e6:.2f}M of {cumulative[-1] / 1e6:.2f}M full")
    print(f"ratios: (a)/(b) {rps_a / rps_b:.2f}x (goals: >= 1.25x trained exits, >= 1.15x models/default)   (c)/(a) {rps_c / rps_a:.2f}x (HTTP overhead)")


if __name__ == "__main__":
    main()
