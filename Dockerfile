# The inference server image, no torch, the shipped models/ inside. Two flavours:
#   docker build -t elf-reslt-server:0.1.0-cpu .                          # ONNX Runtime on the CPU
#   docker build -t elf-reslt-server:0.1.0-gpu --build-arg FLAVOR=gpu .   # ONNX Runtime's CUDA provider
# Dependencies are pinned by constraints.txt (the same file CI installs with).
ARG FLAVOR=cpu

FROM python:3.11-slim AS base-cpu
ENV EXTRA=serve VENV=/opt/venv
RUN python -m venv "$VENV"

# The onnxruntime-gpu that constraints.txt pins links CUDA 13 and cuDNN 9 (its wheel's `cuda` extra):
# this runtime image carries both (tests/server/test_gpu_image.py keeps the two majors equal).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS base-gpu
ENV EXTRA=serve-gpu VENV=/opt/venv
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12=3.12.* python3.12-venv=3.12.* \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv "$VENV"

# One of the two stages above, by build argument (both are tagged there).
# hadolint ignore=DL3006
FROM base-${FLAVOR}
ENV PATH="/opt/venv/bin:$PATH" PYTHONUNBUFFERED=1
WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY modelrepo ./modelrepo
COPY server ./server
COPY training/__init__.py ./training/__init__.py
RUN pip install --no-cache-dir --constraint constraints.txt ".[${EXTRA}]"
COPY models ./models
RUN useradd --uid 10001 --no-create-home --home-dir /app elf
USER 10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000", "--model-repository", "/app/models"]
