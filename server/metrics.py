"""Every Prometheus metric, created once at import on the server's own registry.

Names follow Prometheus' guide: base units (seconds), `_total` counters, bounded labels
(model names come from the repository, exits 1..K, stages 1..K, endpoints fixed).

Under `python -m server` every worker process writes its values to files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode, set up by supervisor.py) and
`exposition()` merges them: counters and histograms add up over the workers, each gauge combines
as its `multiprocess_mode` says (live*: only running workers count). In a process without that
variable (tests building the app in-process) the registry is read directly.
"""

import os
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)

# Multiprocess mode checks the process id on every metric write (a fork resets the values), and
# os.getpid() is a system call: several a request, 3.5% of a worker's GIL-held time under load
# (py-spy). The id kept here, renewed in a forked child, is what the check is given instead.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))
if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _pid[0])

REQUEST_BUCKETS = (0.5e-3, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Stages of a ResNet-32 take tens of microseconds to a few milliseconds, and up to seconds on a
# saturated CPU (ORT threads competing with the event loop).
STAGE_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, *REQUEST_BUCKETS)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# Every metric of the server goes to its own registry (merged with the other workers' on a scrape).
_counter, _gauge, _histogram = (partial(kind, registry=REGISTRY) for kind in (Counter, Gauge, Histogram))

REQUESTS = _counter("elf_http_requests_total", "HTTP requests by endpoint and status code", ["endpoint", "status"])
REQUEST_LATENCY = _histogram(
    "elf_http_request_duration_seconds", "HTTP request latency", ["endpoint"], buckets=REQUEST_BUCKETS
)
GRPC_REQUESTS = _counter(
    "elf_grpc_requests_total", "gRPC calls (the inference protocol) by method and status code", ["method", "code"]
)
GRPC_LATENCY = _histogram("elf_grpc_request_duration_seconds", "gRPC call latency", ["method"], buckets=REQUEST_BUCKETS)
EXITS = _counter("elf_exits_total", "Images classified, by model and exit level (1-based)", ["model", "exit"])
EXIT_DEPTH = _histogram(
    "elf_exit_depth", "Exit level at which images leave the network", ["model"], buckets=(1, 2, 3, 4, 5)
)
EXIT_CONFIDENCE = _histogram(
    "elf_exit_confidence",
    "Max softmax probability at the exit taken",
    ["model", "exit"],
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
STAGE_LATENCY = _histogram(
    "elf_stage_duration_seconds", "ONNX Runtime time per stage run", ["model", "stage"], buckets=STAGE_BUCKETS
)
STAGE_BATCH = _histogram("elf_stage_batch_size", "Images per stage run", ["model", "stage"], buckets=BATCH_BUCKETS)
QUEUE_DEPTH = _gauge("elf_queue_depth", "Images waiting for inference", ["model"], multiprocess_mode="livesum")
MACS = _counter("elf_macs_total", "Multiply-accumulates spent on images", ["model"])
MACS_FULL = _counter(
    "elf_macs_full_network_total", "Multiply-accumulates the same images would cost through every stage", ["model"]
)
PROVIDER = _gauge(
    "elf_execution_provider",
    "Active ONNX Runtime execution provider (1 = in use)",
    ["model", "provider"],
    multiprocess_mode="livemax",
)
MODEL_INFO = _gauge(
    "elf_model_info",
    "Loaded models (value 1) and their provenance",
    ["model", "variant", "format_version", "imbalance", "exits", "default_threshold"],
    multiprocess_mode="livemax",
)
EXIT_AGREEMENT = _counter(
    "elf_exit_agreement_total",
    "Shadowed images that left at an early exit, by whether "
    "that exit's class equals the final exit's (online agreement, no labels needed)",
    ["model", "exit", "agree"],
)
SHADOW_DROPPED = _counter(
    "elf_shadow_dropped_total",
    "Images chosen for a shadow run but dropped (server busy or shadow queue full)",
    ["model"],
)
AGREEMENT_ALERT_LEVEL = _gauge(
    "elf_exit_agreement_alert_level",
    "Agreement ratio below which the "
    "ExitAgreementLow alert fires (ELF_AGREEMENT_ALERT_LEVEL, or the manifest's "
    "offline agreement minus ELF_AGREEMENT_ALERT_MARGIN)",
    ["model", "exit"],
    multiprocess_mode="livemax",
)
READY = _gauge(
    "elf_ready", "1 when every model is loaded, warmed up and on the expected provider", multiprocess_mode="livemin"
)
ADMISSION_WAIT = _gauge(
    "elf_admission_expected_wait_seconds",
    "Expected wait of the work admitted and not yet "
    "answered, at the measured service rate (new work is refused above ELF_MAX_WAIT_MS)",
    multiprocess_mode="livemax",
)
ADMISSION_MAX_WAIT = _gauge(
    "elf_admission_max_wait_seconds", "Admission bound (ELF_MAX_WAIT_MS)", multiprocess_mode="livemax"
)
ADMISSION_OUTSTANDING = _gauge(
    "elf_admission_outstanding_images", "Images admitted and not yet answered", multiprocess_mode="livesum"
)


def exposition() -> bytes:
    """The text exposition of every metric: merged over the worker processes in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return generate_latest(REGISTRY)
    merged = CollectorRegistry()
    MultiProcessCollector(merged)
    return generate_latest(merged)
