"""Early-exit inference server (FastAPI + ONNX Runtime). Never imports torch."""
