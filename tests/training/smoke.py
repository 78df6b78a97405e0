"""Flags for a few-batch training run on real CIFAR-10, shared by the CLI-level tests."""


def smoke_flags(train: int = 200, test: int = 100, batches: int = 2, epochs: int = 1) -> list[str]:
    return ["--epochs", str(epochs), "--batch-size", "32", "--max-train-samples", str(train),
            "--max-batches", str(batches), "--max-test-samples", str(test), "--workers", "0"]


SMOKE = smoke_flags()


def kill_at_first_checkpoint(cmd: list[str], run_dir) -> None:
    """Start a training-like command and SIGKILL it as soon as its first checkpoint exists."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
