"""The Open Inference Protocol over HTTP/REST (inference_protocol.py says what the model takes and
answers): JSON bodies, and the binary tensor data extension (a JSON header of
`Inference-Header-Content-Length` bytes, then each binary tensor's bytes in order), which
`tritonclient` and `perf_analyzer` use by default. Also Triton's model configuration extension
(`/config`), which `perf_analyzer` reads before it sends anything.

Errors are `{"error": message}` (plus this server's `"status"`), with `/classify`'s status codes.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Response

from . import inference_protocol as oip
from .routes import readiness
from .schemas import errors
from .state import ServerState, StateDep

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
HEADER_LENGTH = "inference-header-content-length"


def package_version() -> str:
    try:
        return version("elf-reslt")
    except PackageNotFoundError:
        return "0"


def json_response(body: dict, status: int = 200) -> Response:
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json")


@router.get("", summary="Server metadata")
async def server_metadata() -> dict:
    return oip.server_metadata(package_version())


@router.get("/health/live", summary="Server live")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (400 when not: the protocol's 4xx for false)", responses=errors(400))
async def server_ready(state: StateDep):
    ready = readiness(state).ready
    return json_response({"ready": ready}, 200 if ready else 400)


def service_of(state: ServerState, model: str, model_version: str | None):
    return oip.find_service(state, model, model_version)


@router.get("/models/{model}", summary="Model metadata", responses=errors(404))
async def model_metadata(state: StateDep, model: str) -> dict:
    return oip.model_metadata(service_of(state, model, None))


@router.get("/models/{model}/versions/{model_version}", summary="Model metadata (a version)", responses=errors(404))
async def model_version_metadata(state: StateDep, model: str, model_version: str) -> dict:
    return oip.model_metadata(service_of(state, model, model_version))


def ready_answer(state: ServerState, model: str, model_version: str | None) -> Response:
    service = service_of(state, model, model_version)
    ready = oip.model_ready(state, service)
    return json_response({"name": service.name, "ready": ready}, 200 if ready else 400)


@router.get("/models/{model}/ready", summary="Model ready", responses=errors(400, 404))
async def model_ready(state: StateDep, model: str):
    return ready_answer(state, model, None)


@router.get(
    "/models/{model}/versions/{model_version}/ready", summary="Model ready (a version)", responses=errors(400, 404)
)
async def model_version_ready(state: StateDep, model: str, model_version: str):
    return ready_answer(state, model, model_version)


@router.get(
    "/models/{model}/config",
    summary="Model configuration (Triton's extension, for perf_analyzer)",
    responses=errors(404),
)
async def model_config(state: StateDep, model: str) -> dict:
    return oip.model_config(service_of(state, model, None))


INFER_ERRORS = errors(400, 404, 408, 413, 415, 422, 503)
TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {
            "type": "string",
            "description": "'image' (BYTES [N]: encoded images) or 'pixels' (UINT8 [N, 32, 32, 3])",
        },
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "parameters": {
            "type": "object",
            "description": "binary_data_size: the tensor's bytes after the JSON header (binary tensor data extension)",
        },
        "data": {"type": "array", "description": "the elements, flat or nested (BYTES as strings)"},
    },
}
INFER_BODY = {
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["inputs"],
                        "properties": {
                            "id": {"type": "string"},
                            "parameters": {
                                "type": "object",
                                "description": "threshold: a number in [0, 1], as /classify's; "
                                "binary_data_output: answer every output in binary",
                            },
                            "inputs": {"type": "array", "items": TENSOR},
                            "outputs": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {
                                        "name": {"type": "string", "enum": list(oip.OUTPUTS)},
                                        "parameters": {"type": "object"},
                                    },
                                },
                            },
                        },
                    }
                },
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "binary "
                        "tensor data extension: Inference-Header-Content-Length bytes of JSON, then "
                        "each tensor's bytes",
                    }
                },
            },
        }
    }
}


# The infer routes are served by fast_path.py, ahead of FastAPI; this router only describes them in
# the OpenAPI document (app.py's document_limits adds it), next to the other routes.
described = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])


@described.post("/models/{model}/infer", summary="Inference", responses=INFER_ERRORS, **INFER_BODY)
async def model_infer(model: str):
    """Described only (fast_path.py serves it)."""


@described.post(
    "/models/{model}/versions/{model_version}/infer",
    summary="Inference (a version)",
    responses=INFER_ERRORS,
    **INFER_BODY,
)
async def model_version_infer(model: str, model_version: str):
    """Described only (fast_path.py serves it)."""


def mapping(value, what: str) -> dict:
    """A JSON object of the request (absent: empty), or a 400 naming where it is not one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise oip.ProtocolError(400, f"{what} must be an object")
    return value


async def infer_answer(
    state: ServerState,
    request_state: dict,
    model: str,
    model_version: str | None,
    body: bytes,
    header_length: str | None,
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """One infer request: its answer's body and headers. `request_state` counts the images the
    request holds in admission (the middleware admitted it as one)."""
    service = oip.find_service(state, model, model_version)
    header, inputs = parse_request(body, header_length)
    kind, images = oip.request_images(inputs, state.settings.max_batch_files)
    parameters = mapping(header.get("parameters"), "'parameters'")
    threshold = oip.threshold_parameter(parameters)
    wanted = header.get("outputs") or []
    if not isinstance(wanted, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted):
        raise oip.ProtocolError(400, "'outputs' must be a list of objects with a 'name'")
    names = oip.requested_outputs([o["name"] for o in wanted])
    binary = {
        o["name"]
        for o in wanted
        if mapping(o.get("parameters"), f"output {o['name']!r}: 'parameters'").get("binary_data") is True
    }
    if parameters.get("binary_data_output") is True:
        binary = set(names)
    state.admission.reserve(len(images) - 1)
    request_state["images"] += len(images) - 1
    outputs = await oip.infer(state.decoder, service, kind, images, threshold, names)
    return encode_response(service.name, service.version, header.get("id"), outputs, binary)


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, list[oip.Tensor]]:
    """(the JSON header, the input tensors) of an infer request, JSON or binary."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise oip.ProtocolError(
                400, f"{HEADER_LENGTH} {header_length!r} is not a length within the body's {len(body)} bytes"
            )
        split = int(header_length)
    else:
        split = len(body)
    try:
        header = json.loads(body[:split])
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise oip.ProtocolError(400, f"the request is not JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise oip.ProtocolError(400, "the request must be an object with an 'inputs' list")
    binary, offset, tensors = memoryview(body)[split:], 0, []
    for t in header["inputs"]:
        if not (
            isinstance(t, dict)
            and isinstance(t.get("name"), str)
            and isinstance(t.get("datatype"), str)
            and isinstance(t.get("shape"), list)
        ):
            raise oip.ProtocolError(400, "each input needs a 'name', a 'datatype' and a 'shape'")
        size = mapping(t.get("parameters"), f"input {t['name']!r}: 'parameters'").get("binary_data_size")
        if size is None:
            if "data" not in t:
                raise oip.ProtocolError(400, f"input {t['name']!r} has neither 'data' nor a binary_data_size")
            tensors.append(oip.tensor_from_list(t["name"], t["datatype"], t["shape"], t["data"]))
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise oip.ProtocolError(
                400, f"input {t['name']!r}: binary_data_size {size!r} runs past the {len(binary)} bytes of binary data"
            )
        tensors.append(oip.tensor_from_buffer(t["name"], t["datatype"], t["shape"], binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise oip.ProtocolError(400, f"{len(binary) - offset} bytes of binary data belong to no input")
    return header, tensors


def encode_response(
    model: str, model_version: str, request_id, outputs: list[oip.Tensor], binary: set[str]
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The infer response (body, headers): JSON, or the JSON header and the binary outputs after it."""
    entries, chunks = [], []
    for t in outputs:
        entry = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.name in binary:
            raw = t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = t.data.tolist()
        entries.append(entry)
    body = {"model_name": model, "model_version": model_version, "outputs": entries}
    if request_id is not None:
        body["id"] = request_id
    head = json.dumps(body).encode()
    if not chunks:
        return head, [(b"content-type", b"application/json")]
    return b"".join([head, *chunks]), [
        (b"content-type", b"application/octet-stream"),
        (HEADER_LENGTH.encode(), str(len(head)).encode()),
    ]
