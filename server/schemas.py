"""Typed API answers (they also document the OpenAPI schema)."""
from __future__ import annotations

from pydantic import BaseModel


class Classification(BaseModel):
    class_id: int
    class_name: str
    confidence: float
    exit: int
    exits_total: int
    latency_ms: float
    model: str


class BatchItem(BaseModel):
    filename: str | None
    result: Classification | None = None
    error: str | None = None
    status: int = 200


class BatchClassification(BaseModel):
    model: str
    latency_ms: float
    results: list[BatchItem]


class ErrorBody(BaseModel):
    error: str
    status: int
