"""Typed API answers (they also document the OpenAPI schema)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Classification(BaseModel):
    class_id: int = Field(ge=0)
    class_name: str
    confidence: float = Field(ge=0, le=1, description="the exit's max softmax probability (after logit adjustment)")
    exit: int = Field(ge=1, description="1-based exit the image left at")
    exits_total: int = Field(ge=1)
    latency_ms: float = Field(ge=0, description="server time for the request, upload parsing to answer")
    model: str


class BatchItem(BaseModel):
    filename: str | None
    result: Classification | None = None
    error: str | None = Field(None, description="why this file got no result (the others still do)")
    status: int = Field(200, description="the HTTP status this file alone would have got")


class BatchClassification(BaseModel):
    model: str
    latency_ms: float = Field(ge=0)
    results: list[BatchItem]


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, in words")
    status: int = Field(description="the HTTP status, repeated")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    problems: list[str] = Field(description="why the server is not ready (empty when it is)")
    providers: dict[str, str] = Field(description="ONNX Runtime execution provider of each model")
    draining: bool = Field(description="shutting down: still serving, but new work belongs elsewhere")


def errors(*statuses: int) -> dict:
    """OpenAPI `responses` entries: each status answered with an ErrorBody."""
    return {status: {"model": ErrorBody} for status in statuses}
