"""The Open Inference Protocol (KServe v2, what Triton, MLServer, KServe and OpenVINO Model Server
speak), apart from its transports: the model's metadata, the inputs it takes, the outputs it
answers, and one inference. v2_http.py (JSON and the binary tensor data extension) and v2_grpc.py
carry it.

A model takes exactly one input per request:
- `image`, `BYTES` `[N]`: encoded images, any format `/classify` takes (decoded as it decodes);
- `pixels`, `UINT8` `[N, 32, 32, 3]`: RGB images already 32x32 (no decoding at all).
It answers `class_id` (`INT64` `[N]`), `confidence` (`FP32` `[N]`) and `exit` (`INT32` `[N]`,
1-based), all three unless the request names some. The request parameter `threshold` (a number in
[0, 1]) is `/classify`'s. Errors carry the HTTP status `/classify` would answer; gRPC maps it.
"""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass

import numpy as np

from .errors import ApiError
from .images import SIZE, ImageError
from .routes import lookup_service, readiness
from .service import ImageResult, ModelService
from .state import ServerState

SERVER_NAME = "elf-reslt"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "elf_reslt_staged_onnx"
IMAGE, PIXELS = "image", "pixels"
PIXEL_SHAPE = (SIZE[1], SIZE[0], 3)
# name -> (datatype, numpy dtype, what of an ImageResult)
OUTPUTS = {
    "class_id": ("INT64", np.int64, lambda r: r.class_id),
    "confidence": ("FP32", np.float32, lambda r: r.confidence),
    "exit": ("INT32", np.int32, lambda r: r.exit),
}
DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


class ProtocolError(ApiError):
    """A request the protocol refuses; `status` is the HTTP status (gRPC maps it)."""


@dataclass
class Tensor:
    """One input or output tensor: `data` a numpy array, or a list of bytes for BYTES."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


def server_metadata(version: str) -> dict:
    return {"name": SERVER_NAME, "version": version, "extensions": EXTENSIONS}


def model_metadata(service: ModelService) -> dict:
    return {
        "name": service.name,
        "versions": [service.version],
        "platform": PLATFORM,
        "inputs": [
            {"name": IMAGE, "datatype": "BYTES", "shape": [-1]},
            {"name": PIXELS, "datatype": "UINT8", "shape": [-1, *PIXEL_SHAPE]},
        ],
        "outputs": [{"name": name, "datatype": dtype, "shape": [-1]} for name, (dtype, _, _) in OUTPUTS.items()],
    }


def find_service(state: ServerState, name: str | None, version: str | None) -> ModelService:
    """The model a request names (none: the default) at the version it names (none: its one)."""
    try:
        service = lookup_service(state, name)
    except KeyError as exc:
        raise ProtocolError(404, exc.args[0]) from None
    if version and version != service.version:
        raise ProtocolError(404, f"model {service.name!r} has no version {version!r}; it has {service.version!r}")
    return service


def model_ready(state: ServerState, service: ModelService) -> bool:
    return readiness(state).ready and service.model.provider_ok


def model_config(service: ModelService) -> dict:
    """Triton's model configuration extension (what perf_analyzer reads), as JSON. A request sends one
    of the inputs: each is optional, so clients send only those their data names."""
    meta = model_metadata(service)

    def tensors(items, **extra):
        return [
            {
                "name": t["name"],
                "data_type": "TYPE_STRING" if t["datatype"] == "BYTES" else f"TYPE_{t['datatype']}",
                "dims": t["shape"],
                **extra,
            }
            for t in items
        ]

    return {
        "name": meta["name"],
        "platform": meta["platform"],
        "max_batch_size": 0,
        "input": tensors(meta["inputs"], optional=True),
        "output": tensors(meta["outputs"]),
    }


def threshold_parameter(parameters: dict | None) -> float | None:
    value = (parameters or {}).get("threshold")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ProtocolError(400, f"parameter 'threshold' must be a number in [0, 1], got {value!r}")
    return float(value)


def deserialize_bytes(buffer: bytes | memoryview, name: str) -> list[bytes]:
    """The binary form of a BYTES tensor: each element a little-endian uint32 length and its bytes."""
    view, items, offset = memoryview(buffer), [], 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise ProtocolError(400, f"input {name!r}: BYTES data ends inside an element's length")
        (length,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + length > len(view):
            raise ProtocolError(400, f"input {name!r}: BYTES element of {length} bytes runs past the data")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


def tensor_from_buffer(name: str, datatype: str, shape: list[int], buffer) -> Tensor:
    """A tensor from its binary data (the HTTP extension's, or gRPC's raw contents)."""
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, deserialize_bytes(buffer, name))
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(400, f"input {name!r}: unknown datatype {datatype!r}")
    if len(buffer) % np.dtype(dtype).itemsize:
        raise ProtocolError(400, f"input {name!r}: {len(buffer)} bytes is not a whole number of {datatype}")
    return Tensor(name, datatype, shape, np.frombuffer(buffer, dtype=dtype))


def tensor_from_list(name: str, datatype: str, shape: list[int], data) -> Tensor:
    """A tensor from JSON-like data (a flat or nested list; BYTES elements as str or bytes)."""
    if datatype == "BYTES":
        flat = list(_flatten(data))
        if not all(isinstance(x, (str, bytes)) for x in flat):
            raise ProtocolError(400, f"input {name!r}: BYTES elements must be strings")
        return Tensor(name, datatype, shape, [x.encode("latin-1") if isinstance(x, str) else x for x in flat])
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise ProtocolError(400, f"input {name!r}: unknown datatype {datatype!r}")
    try:
        return Tensor(name, datatype, shape, np.asarray(data, dtype=dtype).reshape(-1))
    except (ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError(400, f"input {name!r}: data is not {datatype}: {exc}") from None


def _flatten(data):
    """The leaves of nested lists, in order (iteratively: a JSON body may nest deeply)."""
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, (list, tuple)):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def request_images(inputs: list[Tensor], max_images: int) -> tuple[str, list]:
    """The request's one input: ("image", [encoded bytes]) or ("pixels", [32x32x3 uint8 arrays])."""
    if len(inputs) != 1:
        raise ProtocolError(400, f"expected exactly one input ({IMAGE!r} or {PIXELS!r}), got {len(inputs)}")
    (t,) = inputs
    if not t.shape or any(not isinstance(d, int) or d < 0 for d in t.shape):
        raise ProtocolError(400, f"input {t.name!r}: shape {t.shape} is not a list of sizes")
    count = math.prod(t.shape)
    if len(t.data) != count:
        raise ProtocolError(400, f"input {t.name!r}: shape {t.shape} holds {count} elements, the data {len(t.data)}")
    if t.name == IMAGE:
        if t.datatype != "BYTES" or len(t.shape) != 1:
            raise ProtocolError(400, f"input {IMAGE!r} is BYTES [N], got {t.datatype} {t.shape}")
        images = t.data
    elif t.name == PIXELS:
        if t.datatype != "UINT8" or len(t.shape) != 4 or tuple(t.shape[1:]) != PIXEL_SHAPE:
            raise ProtocolError(
                400, f"input {PIXELS!r} is UINT8 [N, {', '.join(map(str, PIXEL_SHAPE))}], got {t.datatype} {t.shape}"
            )
        images = list(t.data.reshape(-1, *PIXEL_SHAPE))
    else:
        raise ProtocolError(400, f"unknown input {t.name!r}; this model takes {IMAGE!r} (BYTES) or {PIXELS!r} (UINT8)")
    if not 0 < len(images) <= max_images:
        raise ProtocolError(400, f"input {t.name!r}: {len(images)} images; 1 to {max_images} per request")
    return t.name, images


def requested_outputs(names: list[str] | None) -> list[str]:
    if not names:
        return list(OUTPUTS)
    unknown = [n for n in names if n not in OUTPUTS]
    if unknown:
        raise ProtocolError(400, f"unknown output {unknown[0]!r}; this model answers {', '.join(OUTPUTS)}")
    return names


async def decode_all(decoder, images: list[bytes]) -> list:
    """Each encoded image decoded, or the ImageError it raised: side by side (small ones on the loop),
    as /classify/batch's files. One image is awaited as it is: gather would wrap it in a task of its
    own, ~8 us more on a request that costs ~1 ms."""
    if len(images) > 1:
        return await asyncio.gather(*(decoder.decode(data) for data in images), return_exceptions=True)
    try:
        return [await decoder.decode(images[0])]
    except ImageError as exc:
        return [exc]


async def infer(
    decoder, service: ModelService, kind: str, images: list, threshold: float | None, outputs: list[str]
) -> list[Tensor]:
    """Decode (encoded images) and classify; one bad image fails the request (the protocol has no
    per-element errors), with the status /classify would answer for it."""
    if kind == IMAGE:
        decoded = await decode_all(decoder, images)
        for k, image in enumerate(decoded):
            if isinstance(image, ImageError):
                raise ProtocolError(image.status, f"input {IMAGE!r}, element {k}: {image}")
            if isinstance(image, BaseException):
                raise image
        images = decoded
    results: list[ImageResult] = await service.classify(images, threshold)
    return [
        Tensor(
            name,
            OUTPUTS[name][0],
            [len(results)],
            np.fromiter((OUTPUTS[name][2](r) for r in results), dtype=OUTPUTS[name][1], count=len(results)),
        )
        for name in outputs
    ]
