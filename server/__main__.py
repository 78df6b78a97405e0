"""`python -m server`: serve the model repository with uvicorn worker processes under a supervisor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or $ELF_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000, or $ELF_PORT)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="the Open Inference Protocol over gRPC (default 8002, or $ELF_GRPC_PORT)",
    )
    p.add_argument(
        "--health-port",
        type=int,
        default=None,
        help="port answering only /healthz and /readyz, apart from the load (default 8001, or $ELF_HEALTH_PORT)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server worker processes (default: the cgroup's CPU limit, else the CPUs; or $ELF_WORKERS)",
    )
    p.add_argument("--model-repository", type=Path, default=None, help="folder of model directories (default models)")
    p.add_argument("--default-model", default=None, help="model answering requests that name none (default 'default')")
    p.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="ONNX Runtime execution provider; cuda makes /readyz fail without a GPU (default auto)",
    )
    p.add_argument(
        "--shadow-rate",
        type=float,
        default=None,
        help="share of early-leaving images also run to the final exit in idle time, for the "
        "online exit-agreement metric (default 0.01, or $ELF_SHADOW_RATE; 0 turns it off)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=None,
        help="after SIGTERM: seconds of /readyz 503 while still serving, before the listener "
        "closes and accepted requests finish (default 5, or $ELF_DRAIN_SECONDS)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=None,
        help="admission bound: refuse new work with 503 when the admitted work would take longer "
        "(default 100, or $ELF_MAX_WAIT_MS)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=None,
        dest="read_timeout_seconds",
        help="seconds a request's headers, then its body, may take to arrive before 408 (default 5, or "
        "$ELF_READ_TIMEOUT_SECONDS)",
    )
    p.add_argument(
        "--worker-timeout",
        type=float,
        default=None,
        dest="worker_timeout_seconds",
        help="a worker whose event loop is silent this long is killed and replaced (default 10, or "
        "$ELF_WORKER_TIMEOUT_SECONDS)",
    )
    p.add_argument(
        "--hot-restart",
        action="store_true",
        default=None,
        help="start beside a server already on the port (then SIGTERM that one: it drains); "
        "without it a second server on the port is refused",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    from .config import Settings  # noqa: PLC0415

    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"error: invalid setting: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}", file=sys.stderr)
        return 2
    from .supervisor import serve_supervised  # noqa: PLC0415

    return serve_supervised(settings)


if __name__ == "__main__":
    sys.exit(main())
