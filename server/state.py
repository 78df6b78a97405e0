"""What one worker's parts share: its settings, models, decoder, admission and lifecycle flags.

`create_app` makes one ServerState and keeps it as `app.state.server`; the routes take it as a
FastAPI dependency (`StateDep`), and the middleware, the fast path, the HTTP protocol, the gRPC
servicer and the serving loop are handed it when they are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

if TYPE_CHECKING:
    from .admission import Admission
    from .config import Settings
    from .images import DecodePool
    from .service import ModelService


@dataclass(eq=False)
class ServerState:
    settings: Settings
    admission: Admission
    services: dict[str, ModelService]  # model name -> its service (batcher, engine)
    decoder: DecodePool
    grpc_port: int | None = None  # the inference protocol over gRPC, when set
    grpc: Any = None  # its grpc.aio server, once the lifespan has started it
    warm: bool = False  # models warmed up and batchers running
    draining: bool = False  # after SIGTERM: /readyz 503, everything still served
    closing: bool = False  # after the drain: listeners closed, answers carry Connection: close


def server_state(request: Request) -> ServerState:
    return request.app.state.server


StateDep = Annotated[ServerState, Depends(server_state)]
