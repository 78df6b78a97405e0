"""The one HTTP middleware, in plain ASGI (Starlette's BaseHTTPMiddleware costs a task and a
stream per request): request metrics, the body-size cap, admission and closing.

Order for an inference request: an oversized Content-Length is refused (413) and a busy server
refuses (503 + Retry-After) from the headers alone, before a byte of the body is read, parsed
or decoded (under uvicorn most refusals are answered earlier still, by refusal.py's protocol). Admitted requests hold one image of the admitted work until they are answered (the
batch endpoint adds its other files once it has counted them). Once the server is closing (after
the drain, serving.py), every response carries `Connection: close`.
"""
from __future__ import annotations

import time

from fastapi.responses import JSONResponse

from . import metrics as m
from .admission import Overloaded

ENDPOINTS = frozenset({"/classify", "/classify/batch", "/models", "/healthz", "/readyz", "/metrics"})
INFERENCE = frozenset({"/classify", "/classify/batch"})


def upload_limit(settings) -> int:
    """The largest Content-Length an inference request may declare (a full batch, plus its multipart framing)."""
    return settings.max_upload_bytes * settings.max_batch_files + 1024 * 1024


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """Every error the server answers: `{"error", "status"}` (also what app.py's handlers send)."""
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


class ObserveMiddleware:
    def __init__(self, app, state):
        self.app, self.state = app, state  # state: the FastAPI app's state (settings, admission, closing)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500  # unless a response starts
        request_state = scope.setdefault("state", {})  # request.state; "images": what this request holds

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.state.closing:
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, observed_send)
                return
            if path in INFERENCE and scope["method"] == "POST":
                request_state["images"] = 1
                self.state.admission.reserve(1)
            await self.app(scope, receive, observed_send)
        finally:
            if request_state.get("images"):
                self.state.admission.release(request_state["images"])
            m.REQUESTS.labels(path, str(status)).inc()
            m.REQUEST_LATENCY.labels(path).observe(time.perf_counter() - t0)

    def _refusal(self, scope, path: str) -> JSONResponse | None:
        """The answer when the request is refused from its headers alone."""
        if path not in INFERENCE or scope["method"] != "POST":
            return None
        limit = upload_limit(self.state.settings)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return error_response(413, f"request body too large: {int(length)} bytes > limit of {limit}")
        try:
            self.state.admission.check()
        except Overloaded as exc:
            return error_response(503, str(exc), {"Retry-After": str(self.state.admission.retry_after_s())})
        return None
