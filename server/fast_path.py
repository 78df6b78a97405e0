"""The inference routes' hot path: `POST /classify` and the inference protocol's `infer`, answered in
plain ASGI between the middleware and FastAPI.

Why: on this model a request's own inference costs about as much CPU as the HTTP machinery around
it, and profiled under load FastAPI's part of that machinery (routing over every route, solving the
handler's dependencies, parsing the form into spooled files, validating and rendering the answer
through its response classes) was the largest share of a worker's GIL-held time. Here a request
is read whole (it is capped, and the middleware already bounds how long it may take), parsed with
the same libraries (python-multipart, json) and answered with one pre-built head and body.

What it answers:
- every `infer` request (its parsing and errors are this server's own: v2_http.py);
- each `/classify` upload in the form clients send: multipart/form-data of a declared length of
  at most IN_MEMORY_BYTES, one `file` part with a filename, at most one `model` and one `threshold`
  field, the threshold a plain decimal in [0, 1]. Any other `/classify` request goes on to FastAPI's
  route, whose validation answers it exactly as before: a larger or chunked body unread (Starlette
  spools a large file to disk), any other form (no file, a field twice or unknown, a threshold that
  needs validating, malformed multipart, another content type) with the body already read.
Errors are answered through errors.py, as FastAPI's handlers answer them.
"""

from __future__ import annotations

import re
import time

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import ApiError, error_answer
from .middleware import upload_limit
from .routes import classify_upload
from .state import ServerState
from .v2_http import HEADER_LENGTH, infer_answer

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
PLAIN_THRESHOLD = re.compile(r"\d+(?:\.\d*)?|\.\d+")
FORM_FIELDS = ("file", "model", "threshold")
IN_MEMORY_BYTES = 1024 * 1024  # as much of a file as Starlette's form parser holds before spooling it
JSON_HEADERS = [(b"content-type", b"application/json")]


class FastPath:
    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state
        self.limit = upload_limit(state.settings)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/classify" and scope["method"] == "POST":
            length = header(scope, b"content-length")
            if length is None or not length.isdigit() or int(length) > IN_MEMORY_BYTES:
                return await self.app(scope, receive, send)
            handler = self._classify
        elif path.startswith("/v2/models/") and (route := INFER_PATH.fullmatch(path)):
            if scope["method"] != "POST":
                return await self._answer_error(
                    ApiError(405, "Method Not Allowed", {"Allow": "POST"}), scope, receive, send
                )
            handler = self._infer_handler(*route.groups())
        else:
            return await self.app(scope, receive, send)
        try:
            body = await read_body(receive, self.limit)
            answer = await handler(scope, body)
        except Exception as exc:  # noqa: BLE001 - the known ones get their answer; the rest go on
            return await self._answer_error(exc, scope, receive, send)
        if answer is None:  # a form for FastAPI's route and validation to answer
            return await self.app(scope, replay(body, receive), send)
        body, headers = answer
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _answer_error(self, exc: Exception, scope, receive, send) -> None:
        response = error_answer(exc, self.state.admission)
        if response is None:
            raise exc  # an internal error: FastAPI's outermost handler answers 500 and logs it
        await response(scope, receive, send)

    async def _classify(self, scope, body: bytes):
        t0 = time.perf_counter()
        form = plain_form(header(scope, b"content-type"), body)
        if form is None:
            return None
        threshold = form.get("threshold")
        answer = await classify_upload(
            self.state, form["file"], form.get("model"), None if threshold is None else float(threshold), t0
        )
        return answer.model_dump_json().encode(), JSON_HEADERS

    def _infer_handler(self, model: str, model_version: str | None):
        async def infer(scope, body: bytes):
            length = header(scope, HEADER_LENGTH.encode())
            return await infer_answer(
                self.state,
                scope["state"],
                model,
                model_version,
                body,
                None if length is None else length.decode("latin-1"),
            )

        return infer


def header(scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def read_body(receive, limit: int) -> bytes:
    """The whole request body, or 413 past `limit` bytes (a chunked body declares no length)."""
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks, size = [body], len(body)
    while message.get("more_body", False):
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body too large: more than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def replay(body: bytes, receive):
    """`receive` that gives the body already read, then whatever the connection says next."""
    pending = {"type": "http.request", "body": body, "more_body": False}

    async def replayed():
        nonlocal pending
        if pending is None:
            return await receive()
        message, pending = pending, None
        return message

    return replayed


class FormParts:
    """python-multipart's callbacks, collecting each part's Content-Disposition and data."""

    def __init__(self):
        self.parts: list[tuple[bytearray, bytearray]] = []  # (content-disposition, data)
        self.ended = 0  # parts whose closing boundary came (a body cut short leaves one open)
        self.field, self.value = bytearray(), bytearray()

    def callbacks(self) -> dict:
        return {
            "on_part_begin": lambda: self.parts.append((bytearray(), bytearray())),
            "on_part_data": lambda data, start, end: self.parts[-1][1].extend(data[start:end]),
            "on_header_field": lambda data, start, end: self.field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.value.extend(data[start:end]),
            "on_header_end": self.header_end,
            "on_part_end": self.part_end,
        }

    def part_end(self) -> None:
        self.ended += 1

    def header_end(self) -> None:
        if self.field.lower() == b"content-disposition":
            self.parts[-1][0][:] = self.value
        self.field.clear()
        self.value.clear()


def plain_form(content_type: bytes | None, body: bytes) -> dict[str, bytes | str] | None:
    """A plain upload's fields: `file` (bytes), `model` and `threshold` (str) where sent; None for
    any other form."""
    if content_type is None:
        return None
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        return None
    collected = FormParts()
    try:
        parser = MultipartParser(options[b"boundary"], collected.callbacks())
        parser.write(body)
        parser.finalize()
    except FormParserError:
        return None
    if collected.ended != len(collected.parts):
        return None
    form: dict[str, bytes | str] = {}
    for disposition, data in collected.parts:
        _, params = parse_options_header(bytes(disposition))
        name = params.get(b"name", b"").decode("latin-1")
        if name not in FORM_FIELDS or name in form or ((b"filename" in params) != (name == "file")):
            return None
        if name == "file":
            form[name] = bytes(data)
            continue
        try:
            form[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    threshold = form.get("threshold")
    if (
        "file" not in form
        or form.get("model") == ""
        or (threshold is not None and not (PLAIN_THRESHOLD.fullmatch(threshold) and float(threshold) <= 1))
    ):
        return None
    return form
