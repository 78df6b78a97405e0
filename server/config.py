"""Server settings: one pydantic-settings class, from flags or ELF_* environment variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ELF_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(
        8002,
        ge=0,
        le=65535,
        description="the Open Inference Protocol's gRPC port (its HTTP/REST form is on the main port, under /v2)",
    )
    health_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="a second port answering only /healthz and "
        "/readyz, from the supervisor process: probes never wait behind uploads",
    )
    workers: int = Field(
        0,
        ge=0,
        description="server worker processes, each with its own models, batcher and "
        "share of the CPUs (0: the CPU limit from the cgroup, else the machine's CPUs)",
    )
    model_repository: Path = Path("models")
    default_model: str = "default"
    # auto: CUDA when ONNX Runtime has a usable GPU, else CPU. cuda: /readyz fails without one.
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime threads per session (0: the CPUs divided among the workers)"
    )
    cpu_affinity: bool = Field(
        True,
        description="give each worker its own share of the CPUs this server may run on (worker i "
        "the i-th of equal parts) where they divide evenly, unless it runs more than one inference "
        "thread: 2 workers on 2 cores served 1.12x the requests a second at the default thresholds "
        "(results/BENCHMARKS.md)",
    )
    inference_threads: int = Field(
        1,
        gt=0,
        description="batches a worker runs at once, each on its own thread: more than 1 lets a "
        "worker that gets more than its share of the load (one gRPC connection's calls all go to "
        "one worker) use cores the others leave idle",
    )
    ort_spinning: bool = Field(
        False,
        description="let ONNX Runtime's idle intra-op threads spin-wait (its own "
        "default); off, they sleep and leave the cores to HTTP and decoding: 1.2-1.5x req/s "
        "at threshold 1.0 on a 2-core CPU (results/BENCHMARKS.md, benchmarks/load_test.py)",
    )
    max_upload_bytes: int = Field(8 * 1024 * 1024, gt=0, description="byte cap per uploaded file")
    max_image_pixels: int = Field(16_000_000, gt=0, description="pixel cap (decompression bombs)")
    max_batch_files: int = Field(64, gt=0, description="files per /classify/batch request")
    batch_size: int = Field(64, gt=0, description="images per inference batch across requests")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    max_queue: int = Field(1024, gt=0, description="queued images per model: the hard cap behind admission")
    max_wait_ms: float = Field(
        100.0,
        gt=0,
        description="admission bound: refuse new work (503 + Retry-After, "
        "before reading its body) when the admitted work would take longer than this "
        "at the measured service rate",
    )
    decode_workers: int = Field(
        0, ge=0, description="image decoding threads per worker (0: the CPUs divided among the workers)"
    )
    decode_budget_pixels: int = Field(
        0,
        ge=0,
        description="pixels decoded at once across uploads, bounds "
        "decoding memory (0: max_image_pixels, i.e. one largest image at a time)",
    )
    read_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="a request's headers must arrive within this "
        "many seconds of its first byte, and its body within as many of its "
        "headers; else 408 and the connection closed (slow clients hold nothing)",
    )
    max_uploads_in_progress: int = Field(
        128,
        gt=0,
        description="request bodies being received at once per "
        "worker, apart from admitted work; beyond it new uploads get 503",
    )
    connection_max_age_seconds: float = Field(
        5.0,
        gt=0,
        description="a keep-alive connection older than this "
        "is answered with 'Connection: close' and opens anew, so clients "
        "spread again over the workers (one replaced gets its share)",
    )
    keep_alive_timeout_seconds: float = Field(
        65.0,
        gt=0,
        description="an idle keep-alive connection is closed "
        "after this long; longer than the idle timeouts of the clients and "
        "load balancers in front (60 s for nginx and AWS ALB, 5 s for "
        "httpx): the side that closes an idle connection second never "
        "sends a request into one the other has just closed",
    )
    heartbeat_timeout_seconds: float = Field(
        2.0,
        gt=0,
        description="a worker whose event loop has not beaten for this long makes the health port's /readyz 503",
    )
    worker_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="a worker silent for this long is killed and "
        "replaced, and the health port's /healthz fails until it is",
    )
    hot_restart: bool = Field(
        False,
        description="start beside a server already on the port (which is then "
        "stopped with SIGTERM and drains); without it a second server is refused",
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        description="after SIGTERM/SIGINT: /readyz answers 503 for this long "
        "while requests are still served as before; then the listener closes, responses "
        "carry 'Connection: close' and accepted requests finish (a second signal skips it)",
    )
    shutdown_timeout_seconds: float = Field(
        20.0,
        gt=0,
        description="after the drain: how long accepted requests may take to finish before they are cancelled",
    )
    shadow_rate: float = Field(
        0.01,
        ge=0,
        le=1,
        description="share of early-leaving images that also run "
        "the remaining stages in idle time (online exit agreement)",
    )
    shadow_queue: int = Field(1024, gt=0, description="shadow images kept waiting for idle time before dropping")
    agreement_alert_level: float | None = Field(
        None,
        ge=0,
        le=1,
        description="exit agreement below this fires the ExitAgreementLow alert (exported "
        "as a gauge per exit); unset: the manifest's offline agreement at that exit minus agreement_alert_margin",
    )
    agreement_alert_margin: float = Field(0.05, ge=0, le=1, description="see agreement_alert_level")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def cgroup_cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The container's CPU limit in whole CPUs (cgroup v2 quota / period, rounded up), or None
    when there is none. ONNX Runtime would otherwise size its thread pools to the host's cores."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, -(-int(quota) // int(period)))


def machine_cpus() -> int:
    """The CPUs this server may use: the cgroup's limit, else the machine's."""
    return cgroup_cpu_limit() or os.cpu_count() or 1
