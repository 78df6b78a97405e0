"""The HTTP API: classification, model listing, health, readiness and metrics.

Routes read what they serve from the worker's ServerState (settings, services, decoder, admission,
readiness; `state.StateDep`). Bad input raises ApiError / ImageError and overload raises
Overloaded: the handlers registered in app.py turn each into its `{"error", "status"}` answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, BinaryIO

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from . import metrics as m
from .errors import ApiError
from .images import ImageError
from .schemas import BatchClassification, BatchItem, Classification, Health, Readiness, errors
from .service import ModelService
from .state import ServerState, StateDep

router = APIRouter()
DRAINING = "shutting down: draining accepted requests"

ModelField = Annotated[str | None, Form(description="model name (default: the server's default model)")]
ThresholdField = Annotated[
    float | None,
    Form(
        ge=0,
        le=1,
        description="exit threshold in [0, 1] at every early "
        "exit: 0 answers at exit 1, 1 runs every stage (default: the "
        "model's calibrated thresholds)",
    ),
]


def lookup_service(state: ServerState, name: str | None) -> ModelService:
    """The model named (none: the default), or KeyError saying which exist (every protocol's 404)."""
    name = name or state.settings.default_model
    if name not in state.services:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(state.services)}")
    return state.services[name]


def get_service(state: ServerState, name: str | None) -> ModelService:
    try:
        return lookup_service(state, name)
    except KeyError as exc:
        raise ApiError(404, exc.args[0]) from None


def answer(service: ModelService, r, t0: float) -> Classification:
    return Classification(
        class_id=r.class_id,
        class_name=service.class_names[r.class_id],
        confidence=r.confidence,
        exit=r.exit,
        exits_total=service.exits_total,
        latency_ms=1000 * (time.perf_counter() - t0),
        model=service.name,
    )


async def classify_upload(
    state: ServerState, upload: bytes | BinaryIO, model: str | None, threshold: float | None, t0: float
) -> Classification:
    """One uploaded image classified (this route's, and the fast path's plain uploads)."""
    service = get_service(state, model)
    image = await state.decoder.decode(upload)
    (result,) = await service.classify([image], threshold)
    return answer(service, result, t0)


@router.post("/classify", response_model=Classification, responses=errors(400, 404, 408, 413, 415, 422, 503))
async def classify(
    state: StateDep,
    file: Annotated[UploadFile, File(description="the image (PNG, JPEG, BMP, WebP, GIF...)")],
    model: ModelField = None,
    threshold: ThresholdField = None,
):
    """Classify one image; stops at the first exit whose confidence reaches the threshold."""
    return await classify_upload(state, file.file, model, threshold, time.perf_counter())


@router.post("/classify/batch", response_model=BatchClassification, responses=errors(400, 404, 408, 413, 415, 422, 503))
async def classify_batch(
    request: Request,
    state: StateDep,
    files: Annotated[list[UploadFile], File(description="several images; each gets its own result or error")],
    model: ModelField = None,
    threshold: ThresholdField = None,
):
    """Classify several images in one request (at most max_batch_files). A file that is not a valid
    image gets its own error in the answer; when no file is valid the request fails as /classify would."""
    t0 = time.perf_counter()
    service = get_service(state, model)
    if len(files) > state.settings.max_batch_files:
        raise ApiError(422, f"too many files: {len(files)} > limit of {state.settings.max_batch_files}")
    # The middleware admitted this request as one image; hold the others too until answered.
    state.admission.reserve(len(files) - 1)
    request.state.images += len(files) - 1
    decoded = await asyncio.gather(*(state.decoder.decode(f.file) for f in files), return_exceptions=True)
    items, images = [], []
    for upload, image in zip(files, decoded):
        if isinstance(image, ImageError):
            items.append(BatchItem(filename=upload.filename, error=str(image), status=image.status))
        elif isinstance(image, BaseException):
            raise image
        else:
            items.append(BatchItem(filename=upload.filename))
            images.append(image)
    if not images:  # nothing to classify: the request itself failed, as /classify would
        first = next(item for item in items if item.error)
        raise ApiError(
            first.status,
            f"no file of the batch could be classified; "
            f"{len(items)} failed, the first ({first.filename}): {first.error}",
        )
    results = iter(await service.classify(images, threshold))
    for item in items:
        if item.error is None:
            item.result = answer(service, next(results), t0)
    return BatchClassification(model=service.name, latency_ms=1000 * (time.perf_counter() - t0), results=items)


@router.get("/models")
async def list_models(state: StateDep) -> dict:
    """The default model's name, and each model's execution provider and manifest."""
    return {
        "default": state.settings.default_model,
        "models": {
            name: {"provider": s.model.provider, "manifest": s.model.manifest.model_dump(mode="json")}
            for name, s in state.services.items()
        },
    }


@router.get("/healthz")
async def healthz() -> Health:
    """Alive: answers as long as the event loop runs, whatever the load."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(state: StateDep):
    """Ready for traffic: models loaded, warmed up, on the expected provider, and not draining
    (this worker process; the health port's /readyz answers for all of them)."""
    body = readiness(state)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


def readiness(state: ServerState) -> Readiness:
    """The app's readiness from its state (also what a worker reports to the supervisor)."""
    problems = [] if state.warm else ["models are warming up"]
    if state.draining:
        problems.append(DRAINING)
    for name, s in state.services.items():
        if not s.model.provider_ok:
            problems.append(
                f"model {name}: provider {state.settings.provider} required, "
                f"but ONNX Runtime runs it on {s.model.provider}"
            )
    return Readiness(
        ready=not problems,
        problems=problems,
        draining=state.draining,
        providers={name: s.model.provider for name, s in state.services.items()},
    )


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "content": {"text/plain": {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        }
    },
)
async def metrics():
    """Prometheus metrics (text exposition format)."""
    return PlainTextResponse(m.exposition(), media_type=CONTENT_TYPE_LATEST)
