"""Admission refusals at the HTTP protocol: a busy server answers 503 from the parser's
headers-complete callback, before uvicorn builds a request cycle, an asyncio task, the ASGI scope
and middleware stack and a response object.

Under clients that resend at once, refusals are nearly all an event loop does, and a refusal's
latency is the time to answer those queued ahead of it (clients / refusals per second): what a
refusal costs sets that latency. The body that follows is skipped by the parser, and the
connection is kept alive as for any answered request.

Requests this path hands on to the ASGI one (middleware.ObserveMiddleware, which makes the same
decision): a pipelined request behind one still in flight (answers must keep their order), one
with `Expect: 100-continue` or without keep-alive, an oversized Content-Length (413 there), and
everything once the server is closing or logs each request (debug).
"""
from __future__ import annotations

import json
import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import metrics as m
from .admission import Overloaded
from .middleware import INFERENCE, upload_limit


def refusing_protocol(state) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, refusing from `state` (the app's: settings, admission, closing)."""
    paths = {path.encode(): path for path in INFERENCE}
    limit = upload_limit(state.settings)
    observed = {path: (m.REQUESTS.labels(path, "503"), m.REQUEST_LATENCY.labels(path)) for path in INFERENCE}

    class RefusingProtocol(HttpToolsProtocol):
        refusing = False  # between a refused request's headers and the end of its body

        def on_headers_complete(self) -> None:
            if not self._refused():
                super().on_headers_complete()

        def _refused(self) -> bool:
            t0 = time.perf_counter()
            path = paths.get(self.url.partition(b"?")[0])
            if (path is None or self.parser.get_method() != b"POST" or state.closing or self.config.access_log
                    or self.expect_100_continue or self.pipeline or not self.parser.should_keep_alive()
                    or (self.cycle is not None and not self.cycle.response_complete)):
                return False
            length = dict(self.headers).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                return False
            try:
                state.admission.check()
                return False
            except Overloaded as exc:
                self._write_refusal(str(exc), state.admission.retry_after_s())
            self.refusing = True
            requests, latency = observed[path]
            requests.inc()
            latency.observe(time.perf_counter() - t0)
            return True

        def _write_refusal(self, message: str, retry_after: int) -> None:
            # middleware.error_response's body, byte for byte (json.dumps' own options would take its
            # pure-Python encoder: a tenth of a refusal's cost)
            body = b'{"error":%s,"status":503}' % json.dumps(message).encode()
            head = [STATUS_LINE[503]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-length: ", str(len(body)).encode(), b"\r\ncontent-type: application/json\r\n",
                     b"retry-after: ", str(retry_after).encode(), b"\r\n\r\n", body]
            self.transport.write(b"".join(head))

        def on_body(self, body: bytes) -> None:
            if not self.refusing:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self.refusing:
                return super().on_message_complete()
            self.refusing = False
            self.on_response_complete()  # as after any answer: keep-alive timer, reading resumed

    return RefusingProtocol
