"""Request and response bodies: the OpenAPI schema is the contract."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class SetupRequest(BaseModel):
    """What Label Studio posts to ``/setup`` (its access token is accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    project: str | int | None = None
    schema_: str = Field("", alias="schema")
    hostname: str | None = None
    access_token: str | None = Field(None, repr=False)
    extra_params: Any = None


class SetupResponse(BaseModel):
    model_version: str
    labels: list[str]
    warnings: list[str] = []


class LSPredictRequest(BaseModel):
    """What Label Studio posts to ``/predict``."""

    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = Field(None, repr=False)


class LSPrediction(BaseModel):
    result: list[dict[str, Any]]
    score: float
    model_version: str


class LSPredictResponse(BaseModel):
    results: list[LSPrediction]
    model_version: str
    warnings: list[str] = []


class PredictRequest(BaseModel):
    """``POST /v1/predict``: plain texts."""

    texts: list[str] = Field(..., min_length=1, description="texts to classify")


class PredictItem(BaseModel):
    label: str
    confidence: float = Field(description="calibrated probability of `label`")
    probabilities: dict[str, float]
    entropy: float
    margin: float
    model_version: str
    truncated: bool = Field(description="the text was cut to the model's token limit")


class PredictResponse(BaseModel):
    predictions: list[PredictItem]
    model_version: str


class VersionsResponse(BaseModel):
    versions: list[str]
    current: str | None
    serving: str | None = Field(description="null while the backend waits for its first model version")


class HealthResponse(BaseModel):
    """``GET /health``: ``UP`` with the serving version and the batcher's counters, or ``WAITING``
    (no model version yet) with why."""

    status: Literal["UP", "WAITING"]
    model_class: str
    model_version: str | None
    detail: str | None = None
    queue: int | None = None
    batches_run: int | None = None
    items_run: int | None = None


class WebhookIgnored(BaseModel):
    """``POST /webhook``: taken and ignored, and why (the backend does not train on webhooks)."""

    status: Literal["ignored"]
    reason: str


class ErrorResponse(BaseModel):
    """Every error body: ``detail`` is one sentence, the problems of a ``/predict`` request one per
    task, or FastAPI's validation errors (a 422 from the request schema)."""

    detail: str | list[str] | list[dict[str, Any]]
