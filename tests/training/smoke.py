"""Flags for a few-batch training run on real CIFAR-10, shared by the CLI-level tests."""


def smoke_flags(train: int = 200, test: int = 100, batches: int = 2, epochs: int = 1) -> list[str]:
    return ["--epochs", str(epochs), "--batch-size", "32", "--max-train-samples", str(train),
            "--max-batches", str(batches), "--max-test-samples", str(test), "--workers", "0"]


SMOKE = smoke_flags()
