"""Per-image cost of each ONNX stage by batch size: what merging the survivors of consecutive
batches before the next stage (per-stage queues) could save.

Stage k's input is the real feature map of real CIFAR-10 test images after stages 1..k-1. If the
per-image time at the batch sizes survivors arrive in is already close to its large-batch floor,
per-stage queues cannot win much on this machine.

    python benchmarks/stage_batch_cost.py [--model models/default] [--provider cpu|cuda] [--threads 0]
                                             [--repeats 30]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from server.engine import StagedModel  # noqa: E402
from training.data import default_data_dir, load_cifar10  # noqa: E402

SIZES = (1, 2, 4, 8, 16, 32, 64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "models" / "default")
    p.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: as the server)")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    model = StagedModel(args.model, args.provider, intra_op_threads=args.threads)
    _, test = load_cifar10(default_data_dir())
    inputs = [model.preprocess(test.images[: max(SIZES)])]
    for k in range(len(model.sessions) - 1):
        inputs.append(model._run_stage(k, inputs[k])[0])
    print(
        f"{platform.machine()}, {model.provider}, ORT threads {args.threads or 'default'}; ms per image (median of "
        f"{args.repeats}), stage by batch size"
    )
    print("stage " + "".join(f"{n:>9}" for n in SIZES))
    for k, x in enumerate(inputs):
        row = []
        for n in SIZES:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                model._run_stage(k, x[:n])
                times.append(time.perf_counter() - t0)
            row.append(1000 * float(np.median(times)) / n)
        print(f"{k + 1:>5} " + "".join(f"{v:9.3f}" for v in row))


if __name__ == "__main__":
    main()
