"""The Open Inference Protocol over gRPC (`grpc_v2/inference.proto`), served by each worker on the
gRPC port beside HTTP: the same models, admission, batcher, shadow runs and metrics as `/classify`,
in the same event loop (grpc.aio). Every worker binds the port with SO_REUSEPORT, as for HTTP, so
the kernel spreads connections over the workers.

Outputs travel as `raw_output_contents` (what `tritonclient` reads first, and the cheapest to
build); inputs are taken raw or as typed contents. Errors carry the status `/classify` would answer,
mapped to gRPC's codes.
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import json_format

from . import inference_protocol as oip
from . import metrics as m
from .admission import Overloaded
from .grpc_v2 import SERVICE, message
from .middleware import upload_limit
from .routes import readiness
from .state import ServerState

log = logging.getLogger(__name__)

CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
# datatype -> the InferTensorContents field that carries it
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def parameters(params) -> dict:
    """A protobuf map of InferParameter as plain values."""
    return {
        key: getattr(value, value.WhichOneof("parameter_choice"))
        for key, value in params.items()
        if value.WhichOneof("parameter_choice")
    }


def input_tensors(request) -> list[oip.Tensor]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise oip.ProtocolError(400, f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    tensors = []
    for k, t in enumerate(request.inputs):
        shape = list(t.shape)
        if raw:
            tensors.append(oip.tensor_from_buffer(t.name, t.datatype, shape, raw[k]))
        elif t.datatype in CONTENTS:
            tensors.append(
                oip.tensor_from_list(t.name, t.datatype, shape, list(getattr(t.contents, CONTENTS[t.datatype])))
            )
        else:
            raise oip.ProtocolError(400, f"input {t.name!r}: unknown datatype {t.datatype!r}")
    return tensors


class InferenceServicer:
    """The service's calls, each `async (request, context) -> response`, named as in the .proto."""

    def __init__(self, state, server_version: str):
        self.state, self.version = state, server_version  # state: the app's (services, admission, decoder...)

    def _service(self, name: str, version: str):
        return oip.find_service(self.state, name, version)

    def _ready(self) -> bool:
        return readiness(self.state).ready

    async def ServerLive(self, request, context):  # noqa: N802 (the protocol's names)
        return message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return message("ServerReadyResponse")(ready=self._ready())

    async def ModelReady(self, request, context):  # noqa: N802
        return await observed("ModelReady", context, self._model_ready(request))

    async def _model_ready(self, request):
        service = self._service(request.name, request.version)
        return message("ModelReadyResponse")(ready=oip.model_ready(self.state, service))

    async def ServerMetadata(self, request, context):  # noqa: N802
        meta = oip.server_metadata(self.version)
        return message("ServerMetadataResponse")(**meta)

    async def ModelMetadata(self, request, context):  # noqa: N802
        return await observed("ModelMetadata", context, self._model_metadata(request))

    async def _model_metadata(self, request):
        meta = oip.model_metadata(self._service(request.name, request.version))
        response = message("ModelMetadataResponse")
        tensor = response.TensorMetadata
        return response(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(self, request, context):  # noqa: N802
        return await observed("ModelConfig", context, self._model_config(request))

    async def _model_config(self, request):
        config = oip.model_config(self._service(request.name, request.version))
        return message("ModelConfigResponse")(config=json_format.ParseDict(config, message("ModelConfig")()))

    async def ModelInfer(self, request, context):  # noqa: N802
        return await observed("ModelInfer", context, self._model_infer(request))

    async def _model_infer(self, request):
        state = self.state
        service = self._service(request.model_name, request.model_version)
        state.admission.check()
        kind, images = oip.request_images(input_tensors(request), state.settings.max_batch_files)
        threshold = oip.threshold_parameter(parameters(request.parameters))
        names = oip.requested_outputs([o.name for o in request.outputs])
        state.admission.reserve(len(images))
        try:
            outputs = await oip.infer(state.decoder, service, kind, images, threshold, names)
        finally:
            state.admission.release(len(images))
        response = message("ModelInferResponse")(model_name=service.name, model_version=service.version, id=request.id)
        for t in outputs:
            response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            response.raw_output_contents.append(t.data.astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes())
        return response


async def observed(method: str, context, call):
    """Run one call: its errors in gRPC's form, counted and timed by method and code."""
    t0 = time.perf_counter()
    try:
        response = await call
        code = grpc.StatusCode.OK
    except oip.ProtocolError as exc:
        code, message = CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT), exc.message
    except Overloaded as exc:
        code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
    except Exception:
        log.exception("unexpected error in %s", method)
        code, message = grpc.StatusCode.INTERNAL, "internal server error"
    m.GRPC_REQUESTS.labels(method, code.name).inc()
    m.GRPC_LATENCY.labels(method).observe(time.perf_counter() - t0)
    if code is grpc.StatusCode.OK:
        return response
    await context.abort(code, message)


def create_server(state: ServerState, port: int, server_version: str) -> grpc.aio.Server:
    """The worker's gRPC server on `port` (started by the app's lifespan, in its event loop)."""
    settings = state.settings
    limit = upload_limit(settings)
    # A client multiplexes its calls over one HTTP/2 connection, and a connection is served by the
    # worker the kernel gave it: connections age out as HTTP's do (GOAWAY; calls under way finish),
    # so long-lived clients spread again over the workers, a replaced one included.
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.max_connection_age_ms", int(1000 * settings.connection_max_age_seconds)),
            ("grpc.max_connection_age_grace_ms", int(1000 * settings.shutdown_timeout_seconds)),
        ]
    )
    servicer = InferenceServicer(state, server_version)
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=message(method.input_type.name).FromString,
            response_serializer=message(method.output_type.name).SerializeToString,
        )
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    host = settings.host
    server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return server
