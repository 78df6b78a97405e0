"""The inference protocol's gRPC messages and service, from `inference.proto` compiled to a
descriptor set (`inference.binpb`; tests/server/test_v2_grpc.py checks it matches the .proto).

The messages live in a descriptor pool of their own, not protobuf's default one: a client of the
same protocol (`tritonclient.grpc`) registers the same `inference.*` names there, and a process
holding both (a test, a benchmark) would fail with duplicate symbols."""
from __future__ import annotations

import functools
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO = Path(__file__).with_name("inference.proto")
DESCRIPTORS = Path(__file__).with_name("inference.binpb")
PACKAGE = "inference"
SERVICE_NAME = f"{PACKAGE}.GRPCInferenceService"

_pool = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file:
    _pool.Add(_file)
SERVICE = _pool.FindServiceByName(SERVICE_NAME)


@functools.cache
def message(name: str):
    """The message class of `inference.<name>`."""
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
