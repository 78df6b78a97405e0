"""The one HTTP middleware, in plain ASGI (Starlette's BaseHTTPMiddleware costs a task and a
stream per request): request metrics, the body-size cap, admission, the body deadline and closing.

Order for an inference request: an oversized Content-Length is refused (413) and a busy server
refuses (503 + Retry-After) from the headers alone, before a byte of the body is read, parsed
or decoded (under uvicorn most refusals are answered earlier still, by protocol.py). An accepted
request is an upload in progress until its body is complete; then it holds one image of the
admitted work until it is answered (the batch endpoint adds its other files once it has counted
them). A body not complete within `read_timeout_seconds` of the headers is answered 408 and its
connection closed; a client that goes away mid-body is counted as 499 (nginx's "client closed
request"), apart from bad input; an answer given before the body is complete closes the
connection (the rest of the body is not read). Once the server is closing (after the drain, serving.py), every
response carries `Connection: close`, and a request still unanswered when the shutdown timeout
cancels it gets a JSON 503.
"""

from __future__ import annotations

import asyncio
import re
import time

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from . import metrics as m
from .admission import Overloaded
from .errors import error_answer, error_response
from .state import ServerState

ENDPOINTS = frozenset(
    {
        "/classify",
        "/classify/batch",
        "/models",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    }
)
V2_MODEL = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?(/ready|/config|/infer)?")
V2_INFER = "/v2/models/{model}/infer"
INFERENCE = frozenset({"/classify", "/classify/batch", V2_INFER})
CLIENT_CLOSED_REQUEST = 499


def endpoint_label(path: str) -> str:
    """The metrics' `endpoint` label of a path: itself for fixed routes, the route's template for the
    inference protocol's per-model ones (bounded label values), else "other"."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v2/models/") and (match := V2_MODEL.fullmatch(path)):
        return "/v2/models/{model}" + (match[1] or "")
    return "other"


def upload_limit(settings) -> int:
    """The largest Content-Length an inference request may declare (a full batch, plus its multipart framing)."""
    return settings.max_upload_bytes * settings.max_batch_files + 1024 * 1024


class UploadAborted(HTTPException):
    """The body did not arrive (deadline) or never will (client gone). Starlette's HTTPException, so
    that FastAPI's body parsing passes it on instead of calling it a parsing error (400)."""


def upload_receive(receive, admission, request_state: dict, timeout: float):
    """`receive` for an inference request: the body within `timeout` seconds, or UploadAborted; the
    request's image reserved in `admission` once its body is complete."""
    deadline = asyncio.get_running_loop().time() + timeout

    async def receive_upload():
        if request_state["images"]:  # the body is complete: only a disconnect is left to hear
            return await receive()
        try:
            async with asyncio.timeout_at(deadline):
                message = await receive()
        except TimeoutError:
            raise UploadAborted(
                408, f"request body not received within {timeout:g} s", {"Connection": "close"}
            ) from None
        if message["type"] == "http.disconnect":
            raise UploadAborted(CLIENT_CLOSED_REQUEST, "client closed the connection before its body was complete")
        if not message.get("more_body", False):
            request_state["images"] = 1
            admission.end_upload(1)
        return message

    return receive_upload


class ObserveMiddleware:
    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = endpoint_label(scope["path"])
        status = None  # until a response starts
        request_state = scope.setdefault("state", {})  # request.state; "images": what this request holds
        admission = self.state.admission
        uploading = False

        async def observed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Closing: and an answer before the body's end (a bad upload): the rest is not read.
                if self.state.closing or (uploading and not request_state["images"]):
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            refusal = self._refusal(scope, path)
            if refusal is not None:
                await refusal(scope, receive, observed_send)
                return
            if path in INFERENCE and scope["method"] == "POST":
                request_state["images"], uploading = 0, True
                admission.start_upload()
                receive = upload_receive(receive, admission, request_state, self.state.settings.read_timeout_seconds)
            await self.app(scope, receive, observed_send)
        except asyncio.CancelledError:  # the shutdown timeout: answer in the error contract, not uvicorn's text 500
            if status is None:
                await error_response(
                    503, "server shutting down: the request did not finish in time", {"Connection": "close"}
                )(scope, receive, observed_send)
            raise
        finally:
            if uploading and not request_state["images"]:
                admission.end_upload(0)
            if request_state.get("images"):
                admission.release(request_state["images"])
            m.REQUESTS.labels(path, str(status or 500)).inc()  # none started: uvicorn answers 500
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
            return error_answer(exc, self.state.admission)
        return None
