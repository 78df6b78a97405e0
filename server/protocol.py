"""The server's HTTP/1.1 connection rules, in uvicorn's httptools protocol (the layer that sees a
connection's bytes before any request exists):

- **Refusals at the headers.** A busy server answers 503 from the parser's headers-complete
  callback, before uvicorn builds a request cycle, an asyncio task, the ASGI scope and middleware
  stack and a response object. Under clients that resend at once, refusals are nearly all an event
  loop does, and a refusal's latency is the time to answer those queued ahead of it: what a
  refusal costs sets that latency. The body that follows is skipped by the parser, and the
  connection is kept alive as for any answered request.
- **A header deadline.** A request's headers must be complete within `read_timeout_seconds` of
  its first byte, else 408 and the connection is closed (the body's deadline is the
  middleware's, which answers through the app). uvicorn itself bounds only idle keep-alive time.
- **Connection age.** A request on a connection older than `connection_max_age_seconds` is
  answered with `Connection: close` (when the request was read whole before its answer began):
  keep-alive clients reconnect now and then, so the kernel spreads them again over the workers (a
  replaced worker gets its share) at the cost of one loopback handshake per connection and age.
  Not while draining: a client reconnecting then could land in a listener's accept queue as it
  closes and be reset.

Requests the refusal path hands on to the ASGI one (middleware.ObserveMiddleware, which makes the
same decision): a pipelined request behind one still in flight (answers must keep their order),
one with `Expect: 100-continue` or without keep-alive, an oversized Content-Length (413 there),
and everything once the server is closing or logs each request (debug).
"""

from __future__ import annotations

import json
import time

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import metrics as m
from .admission import Overloaded
from .middleware import INFERENCE, endpoint_label, upload_limit
from .state import ServerState


def server_protocol(state: ServerState) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the rules above, read from `state` (the app's: settings,
    admission, draining, closing)."""
    paths = {path.encode(): path for path in INFERENCE}
    limit = upload_limit(state.settings)
    read_timeout = state.settings.read_timeout_seconds
    max_age = state.settings.connection_max_age_seconds
    observed = {path: (m.REQUESTS.labels(path, "503"), m.REQUEST_LATENCY.labels(path)) for path in INFERENCE}

    class ServerProtocol(HttpToolsProtocol):
        refusing = False  # between a refused request's headers and the end of its body
        header_timer = None  # armed from a request's first byte until its headers are complete

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.opened = time.monotonic()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.header_timer = self.loop.call_later(read_timeout, self._headers_too_slow)

        def on_headers_complete(self) -> None:
            self._disarm()
            if self._refused():
                return
            super().on_headers_complete()

        def _disarm(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

        def _headers_too_slow(self) -> None:
            self.header_timer = None
            if self.transport.is_closing():
                return
            m.REQUESTS.labels(endpoint_label(self.url.partition(b"?")[0].decode("latin-1")), "408").inc()
            self._write_error(408, f"request headers not received within {read_timeout:g} s", close=True)
            self.transport.close()

        def _refused(self) -> bool:
            t0 = time.perf_counter()
            url = self.url.partition(b"?")[0]
            path = paths.get(url) or (url.startswith(b"/v2/") and endpoint_label(url.decode("latin-1")))
            if (
                path not in INFERENCE
                or self.parser.get_method() != b"POST"
                or state.closing
                or self.config.access_log
                or self.expect_100_continue
                or self.pipeline
                or not self.parser.should_keep_alive()
                or (self.cycle is not None and not self.cycle.response_complete)
            ):
                return False
            length = dict(self.headers).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                return False
            try:
                state.admission.check()
                return False
            except Overloaded as exc:
                self._write_error(503, str(exc), retry_after=state.admission.retry_after_s())
            self.refusing = True
            requests, latency = observed[path]
            requests.inc()
            latency.observe(time.perf_counter() - t0)
            return True

        def _write_error(self, status: int, message: str, retry_after: int | None = None, close: bool = False) -> None:
            # middleware.error_response's body, byte for byte (json.dumps' own options would take its
            # pure-Python encoder: a tenth of a refusal's cost)
            body = b'{"error":%s,"status":%d}' % (json.dumps(message).encode(), status)
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [b"content-length: ", str(len(body)).encode(), b"\r\ncontent-type: application/json\r\n"]
            if retry_after is not None:
                head += [b"retry-after: ", str(retry_after).encode(), b"\r\n"]
            if close:
                head.append(b"connection: close\r\n")
            self.transport.write(b"".join([*head, b"\r\n", body]))

        def on_body(self, body: bytes) -> None:
            if not self.refusing:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self.refusing:
                # Aged out once the whole request is read and before its answer starts: closing with
                # a body still arriving would reset the connection under the answer (RST).
                cycle = self.cycle
                if (
                    cycle is not None
                    and not cycle.response_started
                    and not state.draining
                    and time.monotonic() - self.opened > max_age
                ):
                    cycle.keep_alive = False  # uvicorn answers with `Connection: close`, then closes
                return super().on_message_complete()
            self.refusing = False
            self.on_response_complete()  # as after any answer: keep-alive timer, reading resumed

    return ServerProtocol
