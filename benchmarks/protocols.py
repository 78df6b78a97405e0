"""One server, every way in: `python -m server` (2 workers) on the same 256 CIFAR-10 test images,
as PNG over multipart (`POST /classify`, wrk) and over the Open Inference Protocol (`BYTES` and
`UINT8` pixel tensors, HTTP and gRPC, perf_analyzer), at the default thresholds and at full depth,
side by side in one run: req/s, p50 / p99 latency, the server's CPU-seconds per second and per
request, peak RSS.

Full depth runs a copy of the model whose manifest's thresholds are 1.0 (perf_analyzer sends no
request parameters to the inference protocol's `threshold`), so every client sees the same model.

perf_analyzer: the one in PyPI's `tritonclient==2.51.0` wheel runs on this project's machines (the
`perf-analyzer` 2.58+ wheels need glibc 2.38) with Debian's `libb64-0d` and PyPI's
`nvidia-cuda-runtime-cu12` (for `libcudart.so.12`; no GPU is used). In a venv of its own (its
tritonclient pins numpy<2 and protobuf<5):

    python3 -m venv /opt/pa && /opt/pa/bin/pip install tritonclient[all]==2.51.0 nvidia-cuda-runtime-cu12
    apt-get install libb64-0d wrk
    python benchmarks/protocols.py --perf-analyzer /opt/pa/bin/perf_analyzer [--clients 16] [--seconds 10]

Without wrk or perf_analyzer the runs that need them are skipped with a message.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load_test import RssWatch, wrk_counts, wrk_process  # noqa: E402

from tests.server.conftest import MODELS, RunningServer, png  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402


def full_depth_repository(folder: Path) -> Path:
    """A copy of models/ whose default model answers every image at its final exit."""
    shutil.copytree(MODELS, folder / "models")
    manifest = folder / "models" / "default" / "manifest.json"
    data = json.loads(manifest.read_text())
    inference = data["thresholds"]["inference"]
    data["thresholds"]["inference"] = [1.0] * len(inference) if isinstance(inference, list) else 1.0
    manifest.write_text(json.dumps(data, indent=2))
    return folder / "models"


def perf_analyzer_data(images, folder: Path, pixels_shape=(1, 32, 32, 3)) -> dict[str, Path]:
    """perf_analyzer's --input-data files: pixel tensors, and PNGs as serialized BYTES (b64 is sent raw).
    pixels_shape: a request's tensor shape as the model declares it (less the batch axis where the
    server batches on its own, as Triton does)."""
    tag = "x".join(map(str, pixels_shape))
    files = {"pixels": folder / f"pixels-{tag}.json", "image": folder / "png.json"}
    files["pixels"].write_text(
        json.dumps(
            {"data": [{"pixels": {"content": im.reshape(-1).tolist(), "shape": list(pixels_shape)}} for im in images]}
        )
    )
    files["image"].write_text(
        json.dumps(
            {
                "data": [
                    {"image": {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode(), "shape": [1]}}
                    for data in map(png, images)
                ]
            }
        )
    )
    return files


class CpuMeter:
    """CPU-seconds the server (supervisor and workers) spends between start() and stop()."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)

    def _total(self) -> float:
        total = 0.0
        for p in (self.proc, *self.proc.children(recursive=True)):
            try:
                total += sum(p.cpu_times()[:2])
            except psutil.NoSuchProcess:
                pass
        return total

    def start(self):
        self.t0, self.c0 = time.monotonic(), self._total()

    def stop(self) -> float:
        """Cores used on average (CPU-seconds per second)."""
        return (self._total() - self.c0) / (time.monotonic() - self.t0)


def run_wrk(server, payloads, clients, seconds) -> dict | None:
    with wrk_process(server.port, payloads, {}, clients, seconds) as proc:
        if proc is None:
            return None
        rps, requests, errors, pct = wrk_counts(proc.communicate()[0])
    return {
        "rps": rps * (requests - errors) / max(requests, 1),
        "p50": pct.get("50"),
        "p99": pct.get("99"),
        "errors": errors,
    }


def run_perf_analyzer(binary, server, protocol, data, clients, seconds, channel_share: int | None = None) -> dict:
    """channel_share: gRPC clients per channel (connection); tritonclient shares one among up to 6
    unless told otherwise, so 16 clients make 3 connections."""
    url = f"127.0.0.1:{server.port if protocol == 'http' else server.grpc_port}"
    cuda = Path(binary).resolve().parents[1] / "lib"
    libs = [str(p.parent) for p in cuda.glob("python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12")]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join([*libs, os.environ.get("LD_LIBRARY_PATH", "")])}
    if channel_share is not None:
        env["TRITON_CLIENT_GRPC_CHANNEL_MAX_SHARE_COUNT"] = str(channel_share)
    out = subprocess.run(
        [
            binary,
            "-m",
            "default",
            "-u",
            url,
            "-i",
            protocol,
            "--concurrency-range",
            str(clients),
            "--input-data",
            str(data),
            "--measurement-interval",
            str(int(seconds * 1000 / 3)),
            "--percentile",
            "99",
            "--stability-percentage",
            "50",
            "--max-trials",
            "10",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30 * seconds,
    )
    if out.returncode != 0:
        return {"error": (out.stdout + out.stderr).strip().splitlines()[-1]}
    rps = float(re.search(r"Throughput: ([\d.]+) infer/sec", out.stdout)[1])
    p50 = re.search(r"p50 latency: (\d+) usec", out.stdout)
    p99 = re.search(r"p99 latency: (\d+) usec", out.stdout)
    return {
        "rps": rps,
        "p50": f"{int(p50[1]) / 1000:.2f}ms" if p50 else "-",
        "p99": f"{int(p99[1]) / 1000:.2f}ms" if p99 else "-",
        "errors": 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer"))
    args = p.parse_args()
    images = load_cifar10(default_data_dir())[1].images[:256]
    payloads = [png(im) for im in images]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}); server: 2 "
        f"workers, default settings; {args.clients} connections, {args.seconds:g} s a run"
    )
    print(
        f"{'thresholds':<10} {'client':<14} {'input':<18} {'req/s':>8} {'p50':>9} {'p99':>9} {'cores':>6} "
        f"{'CPU ms/req':>10} {'RSS MB':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = perf_analyzer_data(images, Path(tmp))
        for depth, repository in (("default", MODELS), ("full", full_depth_repository(Path(tmp)))):
            server = RunningServer("--model-repository", str(repository), "--workers", "2")
            watch, meter = RssWatch(server.proc.pid), CpuMeter(server.proc.pid)
            try:
                runs = [
                    (
                        "wrk",
                        "multipart PNG",
                        lambda server=server: run_wrk(server, payloads, args.clients, args.seconds),
                    )
                ]
                for protocol in ("http", "grpc"):
                    for name, label in (("image", "v2 BYTES PNG"), ("pixels", "v2 UINT8 pixels")):
                        runs.append(
                            (
                                f"perf_analyzer {protocol}",
                                label,
                                lambda protocol=protocol, name=name, server=server: (
                                    run_perf_analyzer(
                                        args.perf_analyzer, server, protocol, data[name], args.clients, args.seconds
                                    )
                                    if args.perf_analyzer
                                    else None
                                ),
                            )
                        )
                for client, label, run in runs:
                    watch.reset()
                    meter.start()
                    result = run()
                    cores = meter.stop()
                    if result is None:
                        print(f"{depth:<10} {client:<14} {label:<18} skipped: {client.split()[0]} not installed")
                    elif "error" in result:
                        print(f"{depth:<10} {client:<14} {label:<18} failed: {result['error']}")
                    else:
                        print(
                            f"{depth:<10} {client:<14} {label:<18} {result['rps']:8.1f} {result['p50']:>9} "
                            f"{result['p99']:>9} {cores:6.2f} {1000 * cores / result['rps']:10.2f} "
                            f"{watch.peak / 2**20:7.0f}" + (f"  non-2xx {result['errors']}" if result["errors"] else "")
                        )
            finally:
                watch.stop()
                server.stop()


if __name__ == "__main__":
    main()
