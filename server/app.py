"""FastAPI app factory: state, error handlers, the middleware, the routes, offline docs, and the
lifespan (batchers start, models warm up, the decode pool stops last)."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

import swagger_ui_bundle
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelrepo import ManifestError

from . import metrics as m
from .admission import Admission, Overloaded
from .config import Settings, machine_cpus
from .engine import StagedModel, load_repository
from .errors import ApiError, error_answer, error_response
from .fast_path import FastPath
from .images import DecodePool, ImageError
from .middleware import ObserveMiddleware
from .openapi import document_limits
from .routes import router
from .service import ModelService
from .state import ServerState
from .v2_grpc import create_server as create_grpc_server
from .v2_http import package_version
from .v2_http import router as v2_router

log = logging.getLogger(__name__)
DOCS_ASSETS = "/docs-assets"
WARM_UP_BATCH = 8
PUBLISH_S = 0.25  # how often the admission gauges are written


def decode_workers(settings: Settings) -> int:
    return settings.decode_workers or machine_cpus()


@asynccontextmanager
async def lifespan(app: FastAPI):
    state: ServerState = app.state.server
    for service in state.services.values():
        # Admission's estimate starts from the warm-up's timings, not from zero (admit everything).
        # Small batches: ONNX Runtime's arena grows to the largest batch run (64: +50 MB a worker).
        sizes = (1, min(WARM_UP_BATCH, state.settings.batch_size))
        for images, seconds in await run_in_threadpool(service.model.warm_up, sizes):
            state.admission.observe_batch(images, seconds)
        service.batcher.start()
    if state.grpc_port is not None:  # in the event loop the batchers run in
        state.grpc = create_grpc_server(state, state.grpc_port, package_version())
        await state.grpc.start()
    publisher = asyncio.get_running_loop().create_task(publish_admission(state.admission))
    state.warm = True
    gc.freeze()  # what start-up made lives for good: keep it out of every later collection's scan
    m.READY.set(1 if all(s.model.provider_ok for s in state.services.values()) else 0)
    log.info("serving %s (default %s)", ", ".join(state.services), state.settings.default_model)
    yield
    m.READY.set(0)
    publisher.cancel()
    if state.grpc is not None:  # stopping since the listeners closed (serving.py): its calls finish first
        await state.grpc.stop(state.settings.shutdown_timeout_seconds)
    for service in state.services.values():
        await service.batcher.stop()
    state.decoder.shutdown()


def register_error_handlers(app: FastAPI) -> None:
    """Every error is a JSON `{"error", "status"}` body (errors.py); bad input is a 4xx, never a 500."""

    async def _known_error(request: Request, exc: Exception):
        return error_answer(exc, request.app.state.server.admission)

    for known in (ApiError, ImageError, Overloaded, StarletteHTTPException):  # ProtocolError is an ApiError
        app.add_exception_handler(known, _known_error)

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


def add_offline_docs(app: FastAPI) -> None:
    """/docs from Swagger UI files shipped in the package (no CDN: works air-gapped)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
        )


async def publish_admission(admission: Admission) -> None:
    """The admission gauges, sampled every PUBLISH_S until cancelled: pushed, not read on scrape (so
    that they work in prometheus' multiprocess mode), and not on every change (four metric writes
    a request were measurable in its CPU cost)."""
    while True:
        m.ADMISSION_WAIT.set(admission.expected_wait())
        m.ADMISSION_OUTSTANDING.set(admission.outstanding)
        await asyncio.sleep(PUBLISH_S)


def load_models(settings: Settings) -> dict[str, StagedModel]:
    """The repository's models as the settings ask (provider, threads); ManifestError names what is wrong."""
    return load_repository(
        settings.model_repository,
        settings.default_model,
        settings.provider,
        settings.intra_op_threads,
        settings.ort_spinning,
    )


def create_app(
    settings: Settings, models: dict[str, StagedModel] | None = None, grpc_port: int | None = None
) -> FastAPI:
    """Build the app. `models` may be loaded beforehand (so start-up errors surface before serving);
    with `grpc_port` it also serves the inference protocol over gRPC there."""
    if models is None:
        models = load_models(settings)
    app = FastAPI(
        title="elf-reslt inference server",
        version="1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Early-exit classification of images with staged ONNX models "
        "(every image is converted to RGB and resized to 32x32).",
        # Prometheus is this server's telemetry; FastAPI's OpenTelemetry hook, off, is one
        # check a request, on, a span and two instruments a request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    admission = Admission(
        settings.max_wait_ms / 1000,
        settings.batch_size,
        max_uploads=settings.max_uploads_in_progress,
        parallel=settings.inference_threads,
    )
    m.ADMISSION_MAX_WAIT.set(admission.max_wait_s)
    services = {name: ModelService(model, settings, on_batch=admission.observe_batch) for name, model in models.items()}
    decoder = DecodePool(
        decode_workers(settings),
        settings.max_upload_bytes,
        settings.max_image_pixels,
        settings.decode_budget_pixels or settings.max_image_pixels,
    )
    state = app.state.server = ServerState(settings, admission, services, decoder, grpc_port)
    register_error_handlers(app)
    app.add_middleware(FastPath, state=state)  # inside ObserveMiddleware: added first
    app.add_middleware(ObserveMiddleware, state=state)
    app.include_router(router)
    app.include_router(v2_router)
    add_offline_docs(app)
    document_limits(app, settings, list(models), [s.version for s in state.services.values()])
    return app


__all__ = ["create_app", "ManifestError"]
