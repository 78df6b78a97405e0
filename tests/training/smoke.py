"""Flags for a few-batch training run on real CIFAR-10, shared by the CLI-level tests."""

from ..conftest import cli_args


def smoke_flags(train: int = 200, test: int = 100, batches: int = 2, epochs: int = 1, workers: int = 0) -> list[str]:
    return cli_args(
        epochs=epochs,
        batch_size=32,
        max_train_samples=train,
        max_batches=batches,
        max_test_samples=test,
        workers=workers,
    )


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


def processes_of(run_dir, within_s: float = 2.0) -> list:
    """Processes still running with `run_dir` in their command line after `within_s` seconds (a
    killed run's DataLoader workers must end with it)."""
    import time

    import psutil

    deadline = time.monotonic() + within_s
    while True:
        left = [p for p in psutil.process_iter(["cmdline"]) if str(run_dir) in " ".join(p.info["cmdline"] or ())]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def check_second_stage_resumes_bit_for_bit(cmd, tmp_path, record: str, epochs: int = 3) -> None:
    """cmd(out, *extra) of fit-exits or rebalance, `epochs` long: killed at its first checkpoint and
    resumed, it ends with the uninterrupted run's weights and losses."""
    import subprocess

    import torch

    straight = tmp_path / "straight"
    subprocess.run(cmd(straight), check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    kill_at_first_checkpoint(cmd(killed), killed)
    cut_at = torch.load(killed / "checkpoint.pt", map_location="cpu", weights_only=False)[record]["epoch"]
    assert cut_at < epochs, "the run finished before it could be killed"
    done = subprocess.run(cmd(killed, "--resume"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming {killed} from epoch {cut_at}" in done.stdout
    a, b = (torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=False) for d in (straight, killed))
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [e["loss"] for e in a[record]["history"]] == [e["loss"] for e in b[record]["history"]]
