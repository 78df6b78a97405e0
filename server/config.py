"""Server settings: one pydantic-settings class, from flags or ELF_* environment variables."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ELF_", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model_repository: Path = Path("models")
    default_model: str = "default"
    # auto: CUDA when ONNX Runtime has a usable GPU, else CPU. cuda: /readyz fails without one.
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per session (0: the container's "
                                  "CPU limit from its cgroup, else ONNX Runtime's default)")
    ort_spinning: bool = Field(False, description="let ONNX Runtime's idle intra-op threads spin-wait (its own "
                               "default); off, they sleep and leave the cores to HTTP and decoding: 1.2-1.5x req/s "
                               "at threshold 1.0 on a 2-core CPU (results/BENCHMARKS.md, benchmarks/load_test.py)")
    max_upload_bytes: int = Field(8 * 1024 * 1024, gt=0, description="byte cap per uploaded file")
    max_image_pixels: int = Field(16_000_000, gt=0, description="pixel cap (decompression bombs)")
    max_batch_files: int = Field(64, gt=0, description="files per /classify/batch request")
    batch_size: int = Field(64, gt=0, description="images per inference batch across requests")
    batch_wait_ms: float = Field(2.0, ge=0, description="how long a batch waits to fill")
    max_queue: int = Field(1024, gt=0, description="queued images per model: the hard cap behind admission")
    max_wait_ms: float = Field(100.0, gt=0, description="admission bound: refuse new work (503 + Retry-After, "
                               "before reading its body) when the admitted work would take longer than this "
                               "at the measured service rate")
    decode_workers: int = Field(0, ge=0, description="image decoding threads (0: the CPU limit from the "
                                "cgroup, else the machine's CPUs)")
    decode_budget_pixels: int = Field(0, ge=0, description="pixels decoded at once across uploads, bounds "
                                      "decoding memory (0: max_image_pixels, i.e. one largest image at a time)")
    drain_seconds: float = Field(5.0, ge=0, description="after SIGTERM/SIGINT: /readyz answers 503 for this long "
                                 "while requests are still served as before; then the listener closes, responses "
                                 "carry 'Connection: close' and accepted requests finish (a second signal skips it)")
    shutdown_timeout_seconds: float = Field(20.0, gt=0, description="after the drain: how long accepted "
                                            "requests may take to finish before they are cancelled")
    shadow_rate: float = Field(0.01, ge=0, le=1, description="share of early-leaving images that also run "
                               "the remaining stages in idle time (online exit agreement)")
    shadow_queue: int = Field(1024, gt=0, description="shadow images kept waiting for idle time before dropping")
    agreement_alert_level: float | None = Field(
        None, ge=0, le=1, description="exit agreement below this fires the ExitAgreementLow alert (exported "
        "as a gauge per exit); unset: the manifest's offline agreement at that exit minus agreement_alert_margin")
    agreement_alert_margin: float = Field(0.05, ge=0, le=1, description="see agreement_alert_level")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
