"""`python -m server`: validate the model repository, then serve it with uvicorn."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pydantic import ValidationError


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or $ELF_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000, or $ELF_PORT)")
    p.add_argument("--model-repository", type=Path, default=None, help="folder of model directories (default models)")
    p.add_argument("--default-model", default=None, help="model answering requests that name none (default 'default')")
    p.add_argument("--provider", choices=("auto", "cpu", "cuda"), default=None,
                   help="ONNX Runtime execution provider; cuda makes /readyz fail without a GPU (default auto)")
    p.add_argument("--shadow-rate", type=float, default=None,
                   help="share of early-leaving images also run to the final exit in idle time, for the "
                        "online exit-agreement metric (default 0.01, or $ELF_SHADOW_RATE; 0 turns it off)")
    p.add_argument("--drain-seconds", type=float, default=None,
                   help="after SIGTERM: seconds of /readyz 503 while still serving, before the listener "
                        "closes and accepted requests finish (default 5, or $ELF_DRAIN_SECONDS)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="admission bound: refuse new work with 503 when the admitted work would take longer "
                        "(default 100, or $ELF_MAX_WAIT_MS)")
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
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from modelrepo import ManifestError  # noqa: PLC0415

    from .app import create_app  # noqa: PLC0415
    from .engine import load_repository  # noqa: PLC0415
    from .serving import serve  # noqa: PLC0415
    try:
        models = load_repository(settings.model_repository, settings.default_model, settings.provider,
                                 settings.intra_op_threads, settings.ort_spinning)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(create_app(settings, models), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
