"""The same model behind this server and its peers, side by side in one run: `python -m server`,
Triton (its Python backend behind the dynamic batcher), MLServer (a custom runtime with adaptive
batching) and LitServe (LitAPI batching), each with 2 workers / instances and one ONNX Runtime
thread each, on the same 256 CIFAR-10 test images as PNG (and as UINT8 pixel tensors where a server
speaks the Open Inference Protocol), at full depth and at the default thresholds, at each max batch.

Every peer runs `benchmarks/peer_servers/staged_onnx.py`: the model's stage graphs, Pillow's decode
and the exit rule, written as a peer's user would write them, with nothing from `server/`. Before
any timing, every request a load generator will send is sent once and its answer (class and exit)
checked equal to this server's `/classify` answer for that image; a server that disagrees is not timed.

Load: `wrk -t2` (multipart PNG to `/classify` for this server and LitServe; the inference
protocol's binary `BYTES` for this server and Triton; JSON with base64 `BYTES` for MLServer, which has
no binary extension) and `perf_analyzer` (HTTP and gRPC, PNG `BYTES` and UINT8 pixels; not
MLServer, which does not answer the model-configuration call perf_analyzer starts with).
Reported: req/s, p50 / p99, the server's CPU-seconds per second (all its processes) and per
request, peak RSS; then this server / Triton at each one's better max batch.

Peers live in venvs of their own (their pins clash with this project's), under --venvs:

    V=/opt/peers; python3 -m venv $V/triton $V/litserve $V/mlserver $V/pa
    $V/triton/bin/pip install nvidia-pytriton==0.7.0 onnxruntime==1.32.0 pillow   # Triton 2.51 inside
    $V/litserve/bin/pip install litserve==0.2.19 onnxruntime==1.32.0 pillow python-multipart
    $V/mlserver/bin/pip install mlserver==1.7.1 onnxruntime==1.32.0 pillow uvloop==0.21.0
    $V/pa/bin/pip install tritonclient[all]==2.51.0 nvidia-cuda-runtime-cu12; apt-get install libb64-0d wrk
    python benchmarks/peers.py --venvs $V [--max-batch 8 64] [--clients 16] [--seconds 10] [--rounds 1]
        [--load wrk http grpc] [--grpc-channel-share N]

(mlserver 1.7.1 fails to start its workers under uvloop 0.22+.) A peer whose venv is missing is
skipped with a message, as are runs whose load generator is not installed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from load_test import RssWatch, multipart_requests, wrk_counts, wrk_requests  # noqa: E402
from protocols import CpuMeter, full_depth_repository, perf_analyzer_data, run_perf_analyzer  # noqa: E402

from tests.server.conftest import MODELS, RunningServer, free_port, png  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402

PEER_SERVERS = REPO / "benchmarks" / "peer_servers"
OUTPUTS = ("class_id", "confidence", "exit")
INFER = "/v2/models/default/infer"


def v2_binary_request(data: bytes, shape: list[int]) -> tuple[dict[str, str], bytes]:
    """One PNG as the inference protocol's binary `BYTES` tensor (4-byte length, then the bytes),
    outputs asked for in JSON."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": shape,
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 + len(data)},
                }
            ],
            "outputs": [{"name": n, "parameters": {"binary_data": False}} for n in OUTPUTS],
        }
    ).encode()
    return (
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        header + struct.pack("<I", len(data)) + data,
    )


def v2_base64_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """One PNG as a JSON `BYTES` tensor, base64 (MLServer's content type)."""
    return {"Content-Type": "application/json"}, json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(data).decode()],
                }
            ]
        }
    ).encode()


def answer(body: bytes) -> tuple[int, int]:
    """(class, exit) from a /classify or an inference-protocol JSON answer."""
    data = json.loads(body)
    if "outputs" not in data:
        return data["class_id"], data["exit"]
    out = {o["name"]: o["data"] for o in data["outputs"]}
    return int(out["class_id"][0]), int(out["exit"][0])


def post(url: str, headers: dict[str, str], body: bytes) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=30) as reply:
        return reply.read()


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited ({proc.returncode}); its log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"not ready after {timeout:.0f} s; its log: {log}")


class Server:
    """A server started on a model repository: ports, process (for CPU and RSS), the wrk request
    forms it takes, and the perf_analyzer protocols and pixel shape (None: no perf_analyzer runs)."""

    name = ""
    pixels_shape: tuple[int, ...] | None = (1, 32, 32, 3)
    perf_protocols: tuple[str, ...] = ("http", "grpc")

    def __init__(self, venv: Path | None, workdir: Path):
        self.venv, self.workdir = venv, workdir
        self.port, self.grpc_port, self.proc = free_port(), free_port(), None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wrk_forms(self, pngs: list[bytes]) -> list[tuple[str, str, list]]:
        """(label, path, [(headers, body)] per image)."""
        raise NotImplementedError

    def start(self, model_dir: Path, max_batch: int) -> None:
        raise NotImplementedError

    def _popen(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.log = self.workdir / f"{self.name.split()[0].lower()}.log"
        self.proc = subprocess.Popen(
            args,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


class ThisServer(Server):
    name = "this server"

    def start(self, model_dir: Path, max_batch: int) -> None:
        self.running = RunningServer(
            "--model-repository", str(model_dir.parent), "--workers", "2", env={"ELF_BATCH_SIZE": str(max_batch)}
        )
        self.port, self.grpc_port, self.proc = self.running.port, self.running.grpc_port, self.running.proc

    def stop(self) -> None:
        self.running.stop()

    def wrk_forms(self, pngs):
        return [
            ("multipart PNG", "/classify", multipart_requests(pngs, {})),
            ("v2 binary PNG", INFER, [v2_binary_request(d, [1]) for d in pngs]),
        ]


class Triton(Server):
    """Triton 2.51 as nvidia-pytriton 0.7.0's wheel carries it, run as `tritonserver` on a model
    repository of our own (the Python backend's stub for the venv's Python copied in, as PyTriton
    does)."""

    name = "Triton 2.51"
    pixels_shape = (32, 32, 3)  # Triton adds the batch axis (max_batch_size > 0)

    def start(self, model_dir: Path, max_batch: int) -> None:
        python = str(self.venv / "bin" / "python")
        site, version, libdir = subprocess.run(
            [
                python,
                "-c",
                "import sys, sysconfig, pytriton; print(pytriton.__path__[0]); "
                "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); print(sysconfig.get_config_var('LIBDIR'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        dist = Path(site) / "tritonserver"
        server = self.workdir / "tritonserver"
        if not server.exists():
            shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
            shutil.copy(
                dist / "python_backend_stubs" / version / "triton_python_backend_stub", server / "backends" / "python"
            )
        repository = self.workdir / f"triton-models-{model_dir.parent.parent.name}-{max_batch}"
        (repository / "default" / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(PEER_SERVERS / "triton_model.py", repository / "default" / "1" / "model.py")
        (repository / "default" / "config.pbtxt").write_text(f"""backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "image" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "pixels" data_type: TYPE_UINT8 dims: [ 32, 32, 3 ] optional: true }}
]
output [
  {{ name: "class_id" data_type: TYPE_INT64 dims: [ 1 ] }},
  {{ name: "confidence" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "exit" data_type: TYPE_INT32 dims: [ 1 ] }}
]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
parameters {{ key: "MODEL_DIR" value: {{ string_value: "{model_dir}" }} }}
parameters {{ key: "PEER_SERVERS" value: {{ string_value: "{PEER_SERVERS}" }} }}
""")
        libs = f"{Path(site).parent / 'nvidia_pytriton.libs'}:{libdir}"
        self._popen(
            [
                str(server / "bin" / "tritonserver"),
                "--model-repository",
                str(repository),
                "--backend-directory",
                str(server / "backends"),
                "--http-port",
                str(self.port),
                "--grpc-port",
                str(self.grpc_port),
                "--allow-metrics",
                "false",
            ],
            env={"LD_LIBRARY_PATH": libs, "PATH": f"{self.venv / 'bin'}:{os.environ['PATH']}"},
        )
        wait_ready(self.url("/v2/models/default/ready"), self.proc, self.log)

    def wrk_forms(self, pngs):
        return [("v2 binary PNG", INFER, [v2_binary_request(d, [1, 1]) for d in pngs])]


class MLServer(Server):
    name = "MLServer 1.7.1"
    # perf_analyzer asks every server for the model's configuration (Triton's extension), which
    # MLServer does not answer over either protocol ("failed to get model config"); wrk only.
    pixels_shape = None
    perf_protocols = ()

    def start(self, model_dir: Path, max_batch: int) -> None:
        folder = self.workdir / f"mlserver-{model_dir.parent.parent.name}-{max_batch}"
        (folder / "default").mkdir(parents=True, exist_ok=True)
        (folder / "settings.json").write_text(
            json.dumps(
                {
                    "parallel_workers": 2,
                    "http_port": self.port,
                    "grpc_port": self.grpc_port,
                    "metrics_port": free_port(),
                    "host": "127.0.0.1",
                }
            )
        )
        (folder / "default" / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": "default",
                    "implementation": "mlserver_runtime.StagedRuntime",
                    "max_batch_size": max_batch,
                    "max_batch_time": 0.002,
                    "parameters": {"uri": str(model_dir)},
                }
            )
        )
        self._popen(
            [str(self.venv / "bin" / "mlserver"), "start", str(folder)],
            env={"PYTHONPATH": str(PEER_SERVERS), "OMP_NUM_THREADS": "1"},
        )
        wait_ready(self.url("/v2/models/default/ready"), self.proc, self.log)

    def wrk_forms(self, pngs):
        return [("v2 JSON base64 PNG", INFER, [v2_base64_request(d) for d in pngs])]


class LitServe(Server):
    name = "LitServe 0.2.19"
    pixels_shape = None
    perf_protocols = ()

    def start(self, model_dir: Path, max_batch: int) -> None:
        self._popen(
            [
                str(self.venv / "bin" / "python"),
                str(PEER_SERVERS / "litserve_app.py"),
                str(model_dir),
                str(self.port),
                str(max_batch),
                "2",
            ]
        )
        wait_ready(self.url("/health"), self.proc, self.log)

    def wrk_forms(self, pngs):
        return [("multipart PNG", "/classify", multipart_requests(pngs, {}))]


def check_answers(server: Server, forms, expected: list[tuple[int, int]]) -> str | None:
    """Every wrk request sent once: None when each answer's class and exit equal this server's."""
    for label, path, requests in forms:
        for i, (headers, body) in enumerate(requests):
            got = answer(post(server.url(path), headers, body))
            if got != expected[i]:
                return f"{label}: image {i} answered {got}, this server's /classify {expected[i]}"
    return None


def check_pixels(server: Server, images, expected) -> str | None:
    """The pixel tensors as perf_analyzer will send them, over gRPC with tritonclient."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    for i, image in enumerate(images):
        tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(image[None]))
        reply = client.infer("default", [tensor])
        got = (int(reply.as_numpy("class_id").reshape(-1)[0]), int(reply.as_numpy("exit").reshape(-1)[0]))
        if got != expected[i]:
            return f"pixels: image {i} answered {got}, this server's /classify {expected[i]}"
    client.close()
    return None


def run_wrk(url: str, requests, clients: int, seconds: float) -> dict | None:
    with wrk_requests(url, requests, clients, seconds) as proc:
        if proc is None:
            return None
        rps, total, errors, pct = wrk_counts(proc.communicate()[0])
    return {"rps": rps * (total - errors) / max(total, 1), "p50": pct.get("50"), "p99": pct.get("99"), "errors": errors}


def measure(server: Server, pngs, data_files, args) -> list[tuple[str, str, dict | None]]:
    """(client, input, result) of every run against a started server."""
    runs = [
        (
            "wrk",
            label,
            lambda path=path, requests=requests: run_wrk(server.url(path), requests, args.clients, args.seconds),
        )
        for label, path, requests in server.wrk_forms(pngs)
        if "wrk" in args.load
    ]
    if server.pixels_shape is not None:
        for protocol in (p for p in server.perf_protocols if p in args.load):
            for name, label in (("image", "v2 BYTES PNG"), ("pixels", "v2 UINT8 pixels")):
                runs.append(
                    (
                        f"perf_analyzer {protocol}",
                        label,
                        lambda protocol=protocol, name=name: (
                            run_perf_analyzer(
                                args.perf_analyzer,
                                server,
                                protocol,
                                data_files[server.pixels_shape][name],
                                args.clients,
                                args.seconds,
                                args.grpc_channel_share,
                            )
                            if args.perf_analyzer
                            else None
                        ),
                    )
                )
    watch, meter, results = RssWatch(server.pid), CpuMeter(server.pid), []
    try:
        for client, label, run in runs:
            watch.reset()
            meter.start()
            result = run()
            cores = meter.stop()
            if result is not None and "error" not in result:
                result.update(cores=cores, rss=watch.peak / 2**20)
            results.append((client, label, result))
    finally:
        watch.stop()
    return results


def row(depth: str, batch: int, server: str, client: str, label: str, result: dict | None) -> str:
    head = f"{depth:<8} {batch:>3} {server:<16} {client:<18} {label:<20}"
    if result is None:
        return f"{head} skipped: {client.split()[0]} not installed"
    if "error" in result:
        return f"{head} failed: {result['error']}"
    return (
        f"{head} {result['rps']:8.1f} {result['p50'] or '-':>9} {result['p99'] or '-':>9} {result['cores']:6.2f} "
        f"{1000 * result['cores'] / result['rps']:8.2f} {result['rss']:7.0f}"
        + (f"  non-2xx {result['errors']}" if result["errors"] else "")
    )


def summary(table: dict) -> None:
    """This server / Triton on the same kind of input, each at its better max batch."""
    pairs = [
        ("PNG upload", ("this server", "wrk", "multipart PNG"), ("Triton 2.51", "wrk", "v2 binary PNG")),
        ("PNG, v2 binary", ("this server", "wrk", "v2 binary PNG"), ("Triton 2.51", "wrk", "v2 binary PNG")),
    ]
    pairs += [
        (
            f"{label}, {protocol}",
            ("this server", f"perf_analyzer {protocol}", label),
            ("Triton 2.51", f"perf_analyzer {protocol}", label),
        )
        for protocol in ("http", "grpc")
        for label in ("v2 BYTES PNG", "v2 UINT8 pixels")
    ]
    print("\nthis server / Triton (req/s, each at its better max batch; medians over rounds):")
    print(f"{'input':<26} {'full depth':>10} {'default':>10}   default / full depth: this server, Triton")
    for title, ours, theirs in pairs:
        ratios, early = [], []
        for depth in ("full", "default"):
            best = [
                max((v for (d, _b, *k), v in table.items() if d == depth and tuple(k) == key), default=None)
                for key in (ours, theirs)
            ]
            ratios.append(f"{best[0] / best[1]:.2f}" if None not in best else "-")
            early.append(best)
        speedups = [f"{early[1][i] / early[0][i]:.2f}x" if early[0][i] and early[1][i] else "-" for i in (0, 1)]
        print(f"{title:<26} {ratios[0]:>10} {ratios[1]:>10}   {speedups[0]}, {speedups[1]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--venvs",
        type=Path,
        default=Path(os.environ.get("PEER_VENVS", "/opt/peers")),
        help="folder of the peers' venvs: triton, litserve, mlserver",
    )
    p.add_argument(
        "--servers",
        nargs="+",
        default=["this", "triton", "mlserver", "litserve"],
        choices=["this", "triton", "mlserver", "litserve"],
    )
    p.add_argument("--max-batch", type=int, nargs="+", default=[8, 64])
    p.add_argument(
        "--depths",
        nargs="+",
        default=["default", "full"],
        choices=["default", "full"],
        help="the manifest's thresholds, and a copy of the model at threshold 1 (every stage)",
    )
    p.add_argument(
        "--load",
        nargs="+",
        default=["wrk", "http", "grpc"],
        choices=["wrk", "http", "grpc"],
        help="the runs: wrk's, perf_analyzer's over HTTP, over gRPC",
    )
    p.add_argument("--clients", type=int, default=16)
    p.add_argument(
        "--grpc-channel-share",
        type=int,
        help="perf_analyzer's gRPC clients per connection (tritonclient's default: up to 6 share one)",
    )
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer"))
    args = p.parse_args()
    test = load_cifar10(default_data_dir())[1]
    images = test.images[:256]
    pngs = [png(im) for im in images]
    kinds = {
        "this": (ThisServer, None),
        "triton": (Triton, "triton"),
        "mlserver": (MLServer, "mlserver"),
        "litserve": (LitServe, "litserve"),
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}); "
        f"{args.clients} connections, {args.seconds:g} s a run, {args.rounds} round(s)"
        + (f"; gRPC: {args.grpc_channel_share} client(s) a connection" if args.grpc_channel_share else "")
    )
    print(
        f"{'depth':<8} {'max':>3} {'server':<16} {'client':<18} {'input':<20} {'req/s':>8} {'p50':>9} {'p99':>9} "
        f"{'cores':>6} {'ms CPU':>8} {'RSS MB':>7}"
    )
    table: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data_files = {shape: perf_analyzer_data(images, workdir, shape) for shape in ((1, 32, 32, 3), (32, 32, 3))}
        repositories = {
            depth: MODELS if depth == "default" else full_depth_repository(workdir / "full") for depth in args.depths
        }
        for _ in range(args.rounds):
            for depth, repository in repositories.items():
                expected = None
                for batch in args.max_batch:
                    for key in args.servers:
                        cls, venv_name = kinds[key]
                        venv = args.venvs / venv_name if venv_name else None
                        if venv is not None and not (venv / "bin" / "python").exists():
                            print(f"{depth:<8} {batch:>3} {cls.name:<16} skipped: no venv at {venv}")
                            continue
                        server = cls(venv, workdir)
                        try:
                            server.start(repository / "default", batch)
                        except Exception as exc:  # a peer that cannot start is reported, the others still run
                            print(f"{depth:<8} {batch:>3} {cls.name:<16} could not start: {exc}")
                            server.stop()
                            continue
                        try:
                            if key == "this":  # the reference: this server's /classify answers at this depth
                                expected = [
                                    answer(post(server.url("/classify"), headers, body))
                                    for headers, body in multipart_requests(pngs, {})
                                ]
                            elif expected is None:
                                print("the reference answers come from this server: keep 'this' first in --servers")
                                return
                            problem = check_answers(server, server.wrk_forms(pngs), expected)
                            if problem is None and server.pixels_shape is not None and "grpc" in server.perf_protocols:
                                problem = check_pixels(server, images, expected)
                            if problem is not None:
                                print(f"{depth:<8} {batch:>3} {cls.name:<16} answers differ, not timed: {problem}")
                                continue
                            for client, label, result in measure(server, pngs, data_files, args):
                                print(row(depth, batch, cls.name, client, label, result), flush=True)
                                if result is not None and "error" not in result:
                                    table.setdefault((depth, batch, cls.name, client, label), []).append(result["rps"])
                        finally:
                            server.stop()
    summary({k: statistics.median(v) for k, v in table.items()})


if __name__ == "__main__":
    main()
