"""Load test of the inference server: one run, side by side, on this machine.

  decode-only   a FastAPI + uvicorn endpoint that only parses the multipart upload and decodes
                the PNG (the HTTP + decode ceiling; same settings as the server)
  thr 1.0       POST /classify, threshold 1.0: every image runs every stage
  default       POST /classify at the model's calibrated thresholds (early exit)
  bare ORT      the staged model in-process, batch 16, threshold 1.0, no HTTP
  saturation    --saturation-clients (default 4x --clients) at the default, with /healthz and
                /classify probed alongside (from a process of their own): 200/503 split, 503
                latency, /healthz latency; three
                times: asyncio clients that resend at once after a 503 (a retry storm), asyncio
                clients that wait the Retry-After, and wrk (resending at once)
  large upload  --large-uploads concurrent 4000x4000 PNGs: peak and settled RSS against idle

Clients are asyncio coroutines speaking HTTP/1.1 keep-alive over raw sockets with prebuilt
requests (a few microseconds each), so the client costs little of the shared CPU. The throughput
runs are repeated with wrk (2 threads, the same connections and uploads, a Lua script cycling
through prebuilt multipart bodies), as an operator would load-test it; without wrk on the PATH
(`apt-get install wrk`) those are skipped with a message. RSS is the server's (supervisor and
workers together), sampled every 20 ms.

    python benchmarks/load_test.py [--clients 16] [--seconds 10] [--saturation-clients 64]
                                   [--saturation-seconds 10] [--large-uploads 64]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.engine import StagedModel  # noqa: E402
from tests.server.conftest import MODELS, RunningServer, free_port, png  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402

DECODE_ONLY_APP = """
from fastapi import FastAPI, File, UploadFile
from server.config import Settings
from server.images import decode_image
app = FastAPI()
s = Settings()
@app.post("/classify")
def classify(file: UploadFile = File(...)):
    image = decode_image(file.file.read(s.max_upload_bytes + 1), s.max_upload_bytes, s.max_image_pixels)
    return {"mean": float(image.mean())}
"""


def multipart_body(data: bytes, fields: dict[str, str], boundary: str) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def multipart_request(path: str, port: int, data: bytes, fields: dict[str, str]) -> bytes:
    boundary = uuid.uuid4().hex
    body = multipart_body(data, fields, boundary)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    return head + body


# wrk's request(): the next prebuilt multipart body, read from the files named after `--`.
WRK_SCRIPT = """
local requests, n = {}, 0
function init(args)
  for i = 1, #args, 2 do
    local headers = {}
    for line in io.lines(args[i]) do
      local name, value = line:match("^([^:]+): (.*)$")
      headers[name] = value
    end
    local f = assert(io.open(args[i + 1], "rb"))
    requests[#requests + 1] = {headers = headers, body = f:read("*a")}
    f:close()
  end
end
function request()
  n = n % #requests + 1
  return wrk.format("POST", nil, requests[n].headers, requests[n].body)
end
"""


@contextmanager
def wrk_requests(url: str, requests: list[tuple[dict[str, str], bytes]], clients: int, seconds: float):
    """wrk (2 threads) posting the requests (headers, body) to `url` in turn for `seconds`,
    started; None without wrk."""
    if shutil.which("wrk") is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, (headers, body) in enumerate(requests):
            files += [Path(tmp) / f"{i}.headers", Path(tmp) / f"{i}.body"]
            files[-2].write_text("".join(f"{k}: {v}\n" for k, v in headers.items()))
            files[-1].write_bytes(body)
        (Path(tmp) / "cycle.lua").write_text(WRK_SCRIPT)
        with subprocess.Popen(
            [
                "wrk",
                "-t2",
                f"-c{clients}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                str(Path(tmp) / "cycle.lua"),
                url,
                "--",
                *map(str, files),
            ],
            stdout=subprocess.PIPE,
            text=True,
        ) as proc:
            yield proc


def multipart_requests(payloads: list[bytes], fields: dict[str, str]) -> list[tuple[dict[str, str], bytes]]:
    boundary = uuid.uuid4().hex
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    return [(headers, multipart_body(data, fields, boundary)) for data in payloads]


def wrk_process(port: int, payloads: list[bytes], fields: dict[str, str], clients: int, seconds: float):
    """wrk posting the uploads to /classify for `seconds`, started; None without wrk."""
    return wrk_requests(f"http://127.0.0.1:{port}/classify", multipart_requests(payloads, fields), clients, seconds)


def wrk_counts(out: str) -> tuple[float, int, int, dict]:
    """(req/s, requests, non-2xx, {"50"/"99": latency}) from wrk's output."""
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (
        float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        int(re.search(r"(\d+) requests in", out)[1]),
        int(bad[1]) if bad else 0,
        dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)),
    )


def wrk_run(
    name: str, port: int, payloads: list[bytes], fields: dict[str, str], clients: int, seconds: float
) -> float | None:
    """wrk against POST /classify with the same uploads; req/s of 2xx answers (None without wrk)."""
    with wrk_process(port, payloads, fields, clients, seconds) as proc:
        if proc is None:
            print(f"{name:<22} skipped: wrk is not installed (apt-get install wrk)")
            return None
        total, requests, errors, pct = wrk_counts(proc.communicate()[0])
    rps = total * (requests - errors) / max(requests, 1)
    print(f"{name:<22} {rps:8.1f} {pct.get('50', '-'):>8} {'':>8} {pct.get('99', '-'):>8} {'':>7}   non-2xx:{errors}")
    return rps


class Connection:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def send(self, request: bytes) -> tuple[int, dict]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(
    port: int,
    requests: list[bytes],
    clients: int,
    seconds: float,
    probes: dict | None = None,
    once: bool = False,
    honor_retry_after: bool = False,
):
    """`clients` connections sending round-robin from `requests` for `seconds` (or one request each),
    each resending at once or (honor_retry_after) after the Retry-After of a 503, beside one
    connection per probe (`{name: (port, request)}`, every 20 ms); (statuses, latencies, wall,
    {probe name: [(status, latency)]})."""
    statuses, latencies = [], []
    probed = {name: [] for name in probes or {}}
    stop = time.monotonic() + seconds

    async def client(i):
        conn = Connection(port)
        n = i
        while time.monotonic() < stop or (once and n == i):
            t0 = time.perf_counter()
            status, headers = await conn.send(requests[n % len(requests)])
            latencies.append((status, time.perf_counter() - t0))
            statuses.append(status)
            n += clients
            if honor_retry_after and status == 503:
                await asyncio.sleep(min(float(headers.get("retry-after", 1)), stop - time.monotonic()))
        conn.close()

    async def prober(name, probe_port, request):
        conn = Connection(probe_port)
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _ = await conn.send(request)
            probed[name].append((status, time.perf_counter() - t0))
            await asyncio.sleep(0.02)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(
        *(client(i) for i in range(clients)), *(prober(name, *probe) for name, probe in (probes or {}).items())
    )
    return statuses, latencies, time.perf_counter() - t0, probed


class RssWatch:
    def __init__(self, pid: int):
        self.proc, self.peak, self.running = psutil.Process(pid), 0, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def now(self) -> int:
        """RSS of the server: the supervisor and its worker processes."""
        total = 0
        for proc in (self.proc, *self.proc.children(recursive=True)):
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self):
        while self.running:
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def reset(self):
        self.peak = self.now()

    def stop(self):
        self.running = False


def ms(values, q) -> str:
    return f"{1000 * np.percentile(values, q):8.1f}" if len(values) else "       -"


def report(name, statuses, latencies, wall, watch=None) -> float:
    ok = [t for s, t in latencies if s == 200]
    rps = len(ok) / wall
    counts = " ".join(f"{k}:{v}" for k, v in sorted(Counter(statuses).items()))
    rss = f"{watch.peak / 2**20:7.0f}" if watch else "      -"
    print(f"{name:<22} {rps:8.1f} {ms(ok, 50)} {ms(ok, 95)} {ms(ok, 99)} {rss}   {counts}")
    return rps


def bare_ort(model_dir: Path, images: np.ndarray, seconds: float, threshold=1.0) -> tuple[float, np.ndarray]:
    """The staged model in-process on one thread, batches of 16, no HTTP, at `threshold` (one
    number, or one per early exit): (images/s, each image's exit, 1-based)."""
    model = StagedModel(model_dir, "cpu", intra_op_threads=1)
    x = model.preprocess(images)
    exits = np.zeros(len(x) - len(x) % 16, np.int64)
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for i in range(0, len(exits), 16):
            exits[i : i + 16] = model.run(x[i : i + 16], threshold).exit
            done += 16
    return done / (time.perf_counter() - t0), exits


def large_png(side: int) -> bytes:
    """A smooth 4000x4000 picture: a few tens of kB as PNG, 64 MB once decoded."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    image = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side))], axis=-1
    ).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-repository", type=Path, default=MODELS)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--saturation-clients", type=int, default=None, help="default: 4 x --clients")
    p.add_argument("--saturation-seconds", type=float, default=10)
    p.add_argument("--large-uploads", type=int, default=64)
    p.add_argument("--large-side", type=int, default=4000)
    p.add_argument(
        "--runs",
        default="throughput,saturation,large",
        help="comma-separated subset of: throughput (decode-only, thr 1.0, default, bare ORT), saturation, large",
    )
    p.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra ELF_* settings for the server under test",
    )
    args = p.parse_args()
    saturation = args.saturation_clients or 4 * args.clients
    env = dict(kv.split("=", 1) for kv in args.server_env)
    runs = set(args.runs.split(","))

    _, test = load_cifar10(default_data_dir())
    images = test.images[:256]
    payloads = [png(im) for im in images]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}); "
        f"{args.clients} connections, {args.seconds:g} s per run; server settings {env or 'defaults'}"
    )
    print(f"{'run':<22} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'RSS MB':>7}   statuses")

    results = {}
    if "throughput" in runs:
        results["decode-only"], results["wrk decode-only"] = decode_only_run(payloads, args)
    server = RunningServer("--model-repository", str(args.model_repository), env=env)
    watch = RssWatch(server.proc.pid)
    try:
        port = server.port
        if "throughput" in runs:
            for name, fields in (("server thr 1.0", {"threshold": "1"}), ("server default", {})):
                reqs = [multipart_request("/classify", port, d, fields) for d in payloads]
                watch.reset()
                results[name] = report(name, *asyncio.run(drive(port, reqs, args.clients, args.seconds))[:3], watch)
                results[f"wrk {name}"] = wrk_run(f"wrk {name}", port, payloads, fields, args.clients, args.seconds)
            results["bare ORT"] = bare_ort(args.model_repository / "default", images, args.seconds / 2)[0]
            print(f"{'bare ORT (batch 16)':<22} {results['bare ORT']:8.1f}   (img/s, 1 thread, in-process)")
        if "saturation" in runs:
            saturation_runs(server, payloads, saturation, args.saturation_seconds, watch)
        if "large" in runs:
            large_run(port, args, watch)
    finally:
        watch.stop()
        server.stop()
    if "throughput" in runs:
        for harness in ("", "wrk "):
            if results[f"{harness}server thr 1.0"] is None:
                continue
            ceiling = min(results[f"{harness}decode-only"], results["bare ORT"])
            thr1, default = results[f"{harness}server thr 1.0"], results[f"{harness}server default"]
            print(
                f"{harness or 'asyncio '}client: thr 1.0 / min(decode-only, bare ORT) = {thr1:.1f} / {ceiling:.1f} "
                f"= {thr1 / ceiling:.2f} (goal >= 0.75); default / thr 1.0 = {default / thr1:.2f}"
            )


def decode_only_run(payloads, args) -> tuple[float, float | None]:
    port = free_port()
    decode_only = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DECODE_ONLY_APP + f"\nimport uvicorn\nuvicorn.run(app, port={port}, log_level='warning')",
        ],
        cwd=REPO,
    )
    try:
        for _ in range(100):
            try:
                asyncio.run(drive(port, [b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n"], 1, 0, once=True))
                break
            except OSError:
                time.sleep(0.1)
        reqs = [multipart_request("/classify", port, d, {}) for d in payloads]
        ours = report("decode-only", *asyncio.run(drive(port, reqs, args.clients, args.seconds))[:3])
        return ours, wrk_run("wrk decode-only", port, payloads, {}, args.clients, args.seconds)
    finally:
        decode_only.terminate()
        decode_only.wait()


def saturation_runs(server, payloads, clients, seconds, watch) -> None:
    """The storm from the asyncio clients (resending at once, then waiting the Retry-After) and from
    wrk (resending at once), each with probes beside it on connections of their own, every 20 ms,
    from a process of their own:
    /healthz on the health port (what probes should use) and on the serving port, and POST
    /classify (its 503s: how long a refusal takes while the storm goes on)."""
    reqs = [multipart_request("/classify", server.port, d, {}) for d in payloads]
    probes = {
        name: (p, f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode())
        for name, p in (("health port /healthz", server.health_port), ("serving port /healthz", server.port))
    }
    probes["/classify"] = (server.port, reqs[0])
    for honor in (False, True):
        watch.reset()
        with probing(server.port, seconds, probes) as probed:
            statuses, lat, wall, _ = asyncio.run(drive(server.port, reqs, clients, seconds, honor_retry_after=honor))
        report(f"x{clients} {'Retry-After' if honor else 'resend at once'}", statuses, lat, wall, watch)
        refused = [t for s, t in lat if s == 503]
        print(f"{'':<22} 503 p50 {ms(refused, 50)} p99 {ms(refused, 99)} ms (the storm's own)")
        print_probes(probed)
    with wrk_process(server.port, payloads, {}, clients, seconds) as proc:
        if proc is None:
            print(f"x{clients} wrk: skipped, wrk is not installed (apt-get install wrk)")
            return
        watch.reset()
        with probing(server.port, seconds, probes) as probed:
            total, requests, errors, pct = wrk_counts(proc.communicate()[0])
    print(
        f"{f'x{clients} wrk at once':<22} {total * (requests - errors) / requests:8.1f} "
        f"{pct.get('50', '-'):>8} {'':>8} {pct.get('99', '-'):>8} {watch.peak / 2**20:7.0f}   "
        f"2xx:{requests - errors} other:{errors} (wrk's latencies: every answer)"
    )
    print_probes(probed)


def probe_only(port: int, seconds: float, probes: dict) -> dict:
    return asyncio.run(drive(port, [], 0, seconds, probes))[3]


@contextmanager
def probing(port: int, seconds: float, probes: dict):
    """The probes for `seconds`, from a process of their own (as a kubelet's are): in the storm's
    process their latencies would include the 256 client coroutines' turn on its event loop. Yields
    the dict that holds {probe name: [(status, latency)]} once the block ends."""
    probed = {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        future = pool.submit(probe_only, port, seconds, probes)
        yield probed
        probed.update(future.result())


def print_probes(probed: dict) -> None:
    for name, results in probed.items():
        for status in sorted({s for s, _ in results}):
            latencies = [t for s, t in results if s == status]
            print(
                f"{'':<22} probe {name} {status}: p50 {ms(latencies, 50)} p99 {ms(latencies, 99)} ms "
                f"({len(latencies)} probes)"
            )


def large_run(port, args, watch) -> None:
    time.sleep(1)
    idle = watch.now()
    big = large_png(args.large_side)
    reqs = [multipart_request("/classify", port, big, {})]
    watch.reset()
    statuses, lat, wall, _ = asyncio.run(drive(port, reqs, args.large_uploads, 0, once=True))
    peak = watch.peak
    time.sleep(2)
    settled = watch.now()
    print(
        f"large upload x{args.large_uploads}: {args.large_side}x{args.large_side} PNG of {len(big) / 1024:.0f} kB, "
        f"statuses {dict(Counter(statuses))}, {wall:.1f} s; RSS idle {idle / 2**20:.0f} MB, peak "
        f"{peak / 2**20:.0f} MB, 2 s after {settled / 2**20:.0f} MB ({settled / idle:.2f}x idle)"
    )


if __name__ == "__main__":
    main()
