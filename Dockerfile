# The inference server image: ONNX Runtime on the CPU (no torch), with the shipped models/.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY modelrepo ./modelrepo
COPY server ./server
COPY training/__init__.py ./training/__init__.py
RUN pip install --no-cache-dir ".[serve]"
COPY models ./models
RUN useradd --create-home elf && chown -R elf /app
USER elf
EXPOSE 8000
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000", "--model-repository", "/app/models"]
