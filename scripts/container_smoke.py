"""Build the server's image from the unchanged Dockerfile and check that it serves: the user's view
of `docker build` + `docker run`, run by CI after the test suite.

    python scripts/container_smoke.py            # prints each check, then "N passed, N failed"

With podman (Debian's, installed here with apt where it is missing; root only). No container registry
need be reachable: the CPU flavour's base, `python:3.11-slim`, is made once per machine with
mmdebstrap (Debian bookworm's python3 is 3.11) and trusts this machine's CA certificates, so that pip
inside the build reaches the same package index as pip outside it. The container runs with
`--network host` so every address stays on loopback. The GPU flavour is built only where its base
image is already present (none can be pulled here); its CUDA major version is kept equal to what the
pinned onnxruntime-gpu links by tests/server/test_gpu_image.py.

Checks: the image builds; the server in it becomes ready; real CIFAR-10 test images (as PNG)
get the class and exit that ONNX Runtime gives outside the container for the same model and
thresholds, over `/classify` and the Open Inference Protocol; `/metrics` counts them; SIGTERM
drains and the container exits 0. Exit status 1 if a check failed, 0 otherwise, also when the
machine cannot run containers (not root, no podman to install, no base image to make, or a bare
container that does not start): the reason is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.server.conftest import free_port, png  # noqa: E402  (the test suite's own helpers)

BASE = "localhost/python:3.11-slim"  # the Dockerfile's `FROM python:3.11-slim`, made locally
IMAGE = "localhost/elf-reslt-server:smoke"
PACKAGES = ("podman", "runc", "mmdebstrap")


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.passed += ok
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail and not ok else ""), flush=True)
        return ok


def run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def build_image(flavor: str, tag: str) -> subprocess.CompletedProcess:
    """The unchanged Dockerfile built as `tag` (base images local only: no registry is reachable)."""
    return run(
        "podman",
        "build",
        "-q",
        "--network",
        "host",
        "--pull=never",
        "--build-arg",
        f"FLAVOR={flavor}",
        "-t",
        tag,
        str(REPO),
    )


def cannot_run_containers() -> str | None:
    """Why this machine cannot build and run the image (None: it can, after installing what is missing)."""
    if os.geteuid() != 0:
        return "not root (podman's root mode builds the image here)"
    missing = [p for p in PACKAGES if not shutil.which(p)]
    if missing:
        if not shutil.which("apt-get"):
            return f"{', '.join(missing)} missing and no apt-get to install them"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        out = run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES, env=env)
        if out.returncode != 0:  # package lists missing or stale on a fresh machine
            run("apt-get", "update", "-qq", env=env)
            out = run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES, env=env)
        if out.returncode != 0 or not all(shutil.which(p) for p in PACKAGES):
            return f"could not install {', '.join(PACKAGES)} with apt-get: {out.stderr.strip()[-300:]}"
    return None


def containers_conf(folder: Path) -> Path:
    """podman's settings for a root without CAP_SYS_RESOURCE (as in many CI containers): the
    container's limits no higher than this process's and conmon's (podman gives conmon the kernel's
    pid_max as its process limit), and runc, since Debian's crun refuses hybrid cgroup hierarchies."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    nproc = tuple(min(v if v != resource.RLIM_INFINITY else pid_max, pid_max) for v in nproc)
    path = folder / "containers.conf"
    path.write_text(
        f'[containers]\ndefault_ulimits = ["nofile={nofile[0]}:{nofile[1]}", '
        f'"nproc={nproc[0]}:{nproc[1]}"]\n[engine]\nruntime = "runc"\n'
    )
    return path


def make_base(folder: Path) -> None:
    """`python:3.11-slim` from Debian bookworm (python3 3.11, venv, CA certificates, useradd),
    trusting this machine's CA bundle, pip included."""
    tar = folder / "base.tar"
    pip_conf = "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt"
    out = run(
        "mmdebstrap",
        "--variant=minbase",
        "--include=python3,python3-venv,python-is-python3,ca-certificates,passwd",
        "--customize-hook=copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs",
        f"--customize-hook=printf '{pip_conf}\\n' > \"$1/etc/pip.conf\"",
        "bookworm",
        str(tar),
    )
    if out.returncode != 0:
        raise RuntimeError(f"mmdebstrap failed: {out.stderr.strip()[-500:]}")
    out = run("podman", "import", "-q", str(tar), BASE)
    tar.unlink()
    if out.returncode != 0:
        raise RuntimeError(f"podman import failed: {out.stderr.strip()[-500:]}")


def expected_answers(images: np.ndarray) -> list[tuple[int, int]]:
    """(class id, exit) of each image from ONNX Runtime outside the container: the same model
    directory, its default thresholds, the server's staged engine."""
    from server.engine import StagedModel

    model = StagedModel(REPO / "models" / "default", "cpu")
    result = model.run(model.preprocess(images), model.manifest.thresholds.inference)
    return list(zip(result.class_id.tolist(), result.exit.tolist()))


def test_images(count: int) -> np.ndarray:
    from training.data import default_data_dir, load_cifar10

    return load_cifar10(default_data_dir())[1].images[:count]


def smoke(checks: Checks, images: np.ndarray) -> None:
    ports = {name: free_port() for name in ("http", "health", "grpc")}
    name = f"elf-smoke-{os.getpid()}"
    started = run(
        "podman",
        "run",
        "-d",
        "--network",
        "host",
        "--name",
        name,
        "-e",
        "ELF_DRAIN_SECONDS=1",
        "-e",
        "ELF_WORKERS=2",
        IMAGE,
        "--port",
        str(ports["http"]),
        "--health-port",
        str(ports["health"]),
        "--grpc-port",
        str(ports["grpc"]),
    )
    if not checks.check("the container starts", started.returncode == 0, started.stderr.strip()[-500:]):
        return
    url, health = f"http://127.0.0.1:{ports['http']}", f"http://127.0.0.1:{ports['health']}"
    try:
        deadline, ready = time.monotonic() + 90, False
        while time.monotonic() < deadline and not ready:
            try:
                ready = httpx.get(health + "/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                time.sleep(0.2)
        if not checks.check("/readyz answers 200 within 90 s", ready, run("podman", "logs", name).stderr[-1000:]):
            return
        expected = expected_answers(images)
        pngs = [png(im) for im in images]
        with httpx.Client(base_url=url, timeout=30) as c:
            answers = [c.post("/classify", files={"file": ("x.png", data)}) for data in pngs]
            got = [(a.json()["class_id"], a.json()["exit"]) if a.status_code == 200 else a.status_code for a in answers]
            checks.check(
                f"POST /classify: {len(images)} CIFAR-10 test images get ONNX Runtime's class and exit",
                got == expected,
                f"{sum(g == e for g, e in zip(got, expected))} of {len(images)} equal",
            )
            checks.check(
                "early exit happens (some image leaves before the last stage)", any(e < 4 for _, e in expected)
            )
            body = {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [len(images), 32, 32, 3],
                        "datatype": "UINT8",
                        "data": images.reshape(-1).tolist(),
                    }
                ]
            }
            r = c.post("/v2/models/default/infer", json=body)
            outputs = {o["name"]: o["data"] for o in r.json().get("outputs", [])} if r.status_code == 200 else {}
            checks.check(
                "Open Inference Protocol infer (UINT8 tensor) answers the same",
                list(zip(outputs.get("class_id", []), outputs.get("exit", []))) == expected,
                f"status {r.status_code}: {r.text[:200]}",
            )
            bad = c.post("/classify", files={"file": ("x.png", b"not an image")})
            checks.check(
                "a broken upload gets a 4xx JSON error",
                400 <= bad.status_code < 500 and "error" in bad.json(),
                f"{bad.status_code} {bad.text[:200]}",
            )
            metrics = c.get("/metrics").text
            served = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith('elf_http_requests_total{endpoint="/classify",status="200"}')
            )
            checks.check("/metrics counts the answered /classify requests", served >= len(images), f"{served}")
        stopped = run("podman", "stop", "-t", "30", name)
        code = run("podman", "inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        checks.check(
            "SIGTERM (podman stop) drains and the server exits 0",
            stopped.returncode == 0 and code == "0",
            f"exit code {code!r}; {run('podman', 'logs', name).stderr[-800:]}",
        )
    finally:
        run("podman", "rm", "-f", name)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64, help="CIFAR-10 test images to classify")
    args = parser.parse_args()
    reason = cannot_run_containers()
    if reason:
        print(f"container smoke test skipped: {reason}")
        return 0
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="container-smoke-") as tmp:
        os.environ["CONTAINERS_CONF"] = str(containers_conf(Path(tmp)))
        if run("podman", "image", "exists", BASE).returncode != 0:
            t0 = time.monotonic()
            try:
                make_base(Path(tmp))
            except RuntimeError as exc:  # Debian's mirror unreachable, or no user namespaces for mmdebstrap
                print(f"container smoke test skipped: cannot make the base image {BASE}: {exc}")
                return 0
            print(f"made the base image {BASE} in {time.monotonic() - t0:.0f} s", flush=True)
        # The machine's part apart from the image's: a container runtime that cannot start a bare
        # container here (no cgroups, no namespaces in a sandbox) is not the Dockerfile's failure.
        probe = run("podman", "run", "--rm", "--network", "host", BASE, "python", "-c", "print('ok')")
        if probe.stdout.strip() != "ok":
            print(
                f"container smoke test skipped: podman cannot run a container on this machine: "
                f"{probe.stderr.strip()[-500:]}"
            )
            return 0
        t0 = time.monotonic()
        build = build_image("cpu", IMAGE)
        if checks.check(
            f"the CPU image builds from the unchanged Dockerfile ({time.monotonic() - t0:.0f} s)",
            build.returncode == 0,
            build.stderr.strip()[-1500:],
        ):
            smoke(checks, test_images(args.images))
        gpu_base = next(
            line.split()[1]
            for line in (REPO / "Dockerfile").read_text().splitlines()
            if line.startswith("FROM nvidia/cuda:")
        )
        if run("podman", "image", "exists", gpu_base).returncode == 0:
            build = build_image("gpu", IMAGE + "-gpu")
            checks.check("the GPU image builds", build.returncode == 0, build.stderr.strip()[-1500:])
        else:
            print(f"GPU image not built: its base {gpu_base} is not on this machine and no registry is reachable")
    print(f"{checks.passed} passed, {checks.failed} failed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
