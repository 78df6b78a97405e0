"""FastAPI app factory: routes, error mapping, lifespan (batchers start, models warm up)."""
from __future__ import annotations

import logging
import math
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelrepo import ManifestError

from . import metrics as m
from .batcher import Overloaded
from .config import Settings
from .engine import StagedModel, load_repository
from .images import ImageError, decode_image
from .schemas import BatchClassification, BatchItem, Classification, ErrorBody
from .service import ModelService

log = logging.getLogger(__name__)
ENDPOINTS = ("/classify", "/classify/batch", "/models", "/healthz", "/readyz", "/metrics")
ERRORS = {400: {"model": ErrorBody}, 404: {"model": ErrorBody}, 413: {"model": ErrorBody},
          415: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def error_response(status: int, message: str, headers=None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def create_app(settings: Settings, models: dict[str, StagedModel] | None = None) -> FastAPI:
    """Build the app. `models` may be loaded beforehand (so start-up errors surface before serving)."""
    if models is None:
        models = load_repository(settings.model_repository, settings.default_model, settings.provider,
                                 settings.intra_op_threads)
    services = {name: ModelService(model, settings) for name, model in models.items()}
    state = {"warm": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for service in services.values():
            await run_in_threadpool(service.model.warm_up)
            service.batcher.start()
        state["warm"] = True
        m.READY.set(1 if all(s.model.provider_ok for s in services.values()) else 0)
        log.info("serving %s (default %s)", ", ".join(services), settings.default_model)
        yield
        m.READY.set(0)
        for service in services.values():
            await service.batcher.stop()

    app = FastAPI(title="elf-reslt inference server", version="1.0", lifespan=lifespan,
                  description="Early-exit classification of 32x32 images with staged ONNX models.")

    # -- errors: every bad input is a 4xx JSON body, never a 500 ----------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):  # unknown route, 405...
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"] if p not in ("body", "query"))
            problems.append(f"field '{field}': {err['msg']}")
        return error_response(422, "; ".join(problems) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal server error")

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        path = request.url.path if request.url.path in ENDPOINTS else "other"
        limit = settings.max_upload_bytes * settings.max_batch_files + 1024 * 1024
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            response = error_response(413, f"request body too large: {length} bytes > limit of {limit}")
        else:
            response = await call_next(request)
        m.REQUESTS.labels(path, str(response.status_code)).inc()
        m.REQUEST_LATENCY.labels(path).observe(time.perf_counter() - t0)
        return response

    # -- helpers ----------------------------------------------------------------------------------
    def get_service(name: str | None) -> ModelService:
        name = name or settings.default_model
        if name not in services:
            raise ApiError(404, f"unknown model {name!r}; available: {', '.join(services)}")
        return services[name]

    def parse_threshold(text: str | None, service: ModelService) -> float | list[float]:
        if text is None or text == "":
            return service.default_threshold
        try:
            value = float(text)
        except ValueError:
            raise ApiError(422, f"threshold must be a number in [0, 1], got {text!r}") from None
        if not (0.0 <= value <= 1.0) or math.isnan(value):
            raise ApiError(422, f"threshold must be in [0, 1], got {text}")
        return value

    async def read_image(upload: UploadFile):
        data = await upload.read(settings.max_upload_bytes + 1)
        return await run_in_threadpool(decode_image, data, settings.max_upload_bytes,
                                       settings.max_image_pixels)

    async def infer(service: ModelService, images, threshold):
        try:
            return await service.classify(images, threshold)
        except Overloaded as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None

    def answer(service: ModelService, r, t0: float) -> Classification:
        return Classification(class_id=r.class_id, class_name=service.class_names[r.class_id],
                              confidence=r.confidence, exit=r.exit, exits_total=service.exits_total,
                              latency_ms=1000 * (time.perf_counter() - t0), model=service.name)

    # -- routes -----------------------------------------------------------------------------------
    @app.post("/classify", response_model=Classification, responses=ERRORS)
    async def classify(file: UploadFile = File(..., description="the image (PNG, JPEG, BMP, WebP...)"),
                       model: str | None = Form(None, description="model name (default: the server's)"),
                       threshold: str | None = Form(None, description="exit threshold in [0, 1]")):
        t0 = time.perf_counter()
        service = get_service(model)
        thr = parse_threshold(threshold, service)
        try:
            image = await read_image(file)
        except ImageError as exc:
            raise ApiError(exc.status, str(exc)) from None
        (result,) = await infer(service, [image], thr)
        return answer(service, result, t0)

    @app.post("/classify/batch", response_model=BatchClassification, responses=ERRORS)
    async def classify_batch(files: list[UploadFile] = File(..., description="several images"),
                             model: str | None = Form(None), threshold: str | None = Form(None)):
        t0 = time.perf_counter()
        service = get_service(model)
        thr = parse_threshold(threshold, service)
        if len(files) > settings.max_batch_files:
            raise ApiError(413, f"too many files: {len(files)} > limit of {settings.max_batch_files}")
        items, images = [], []
        for upload in files:
            try:
                images.append(await read_image(upload))
                items.append(BatchItem(filename=upload.filename))
            except ImageError as exc:
                items.append(BatchItem(filename=upload.filename, error=str(exc), status=exc.status))
        results = iter(await infer(service, images, thr) if images else [])
        for item in items:
            if item.error is None:
                item.result = answer(service, next(results), t0)
        return BatchClassification(model=service.name, latency_ms=1000 * (time.perf_counter() - t0),
                                   results=items)

    @app.get("/models")
    async def list_models():
        return {"default": settings.default_model,
                "models": {name: {"provider": s.model.provider,
                                  "manifest": s.model.manifest.model_dump(mode="json")}
                           for name, s in services.items()}}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        problems = [] if state["warm"] else ["models are warming up"]
        for name, s in services.items():
            if not s.model.provider_ok:
                problems.append(f"model {name}: provider {settings.provider} required, "
                                f"but ONNX Runtime runs it on {s.model.provider}")
        body = {"ready": not problems, "problems": problems,
                "providers": {name: s.model.provider for name, s in services.items()}}
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(m.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["create_app", "ManifestError"]
