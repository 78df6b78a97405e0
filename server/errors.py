"""The error contract: every error the server answers over HTTP is a JSON `{"error", "status"}`
body, and bad input is a 4xx, never a 500. FastAPI's exception handlers (app.py) and the inference
routes' fast path (fast_path.py) answer through `error_answer`, so both give the same answer."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .admission import Admission, Overloaded
from .images import ImageError


class ApiError(Exception):
    """A request refused for what it asks (unknown model, too many files...); `status` is the HTTP one."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def error_answer(exc: BaseException, admission: Admission) -> JSONResponse | None:
    """The answer to an exception a request may raise (None: not one of them, an internal error)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.message, exc.headers)
    if isinstance(exc, ImageError):
        return error_response(exc.status, str(exc))
    if isinstance(exc, Overloaded):
        return error_response(503, str(exc), {"Retry-After": str(admission.retry_after_s())})
    if isinstance(exc, HTTPException):  # unknown route, 405, and the middleware's aborted uploads
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))
    return None
