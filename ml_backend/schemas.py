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


class ControlCoverageItem(BaseModel):
    """One control of the config: whether it is predicted (and from which model: ``main`` or the
    control's own), its labels the model knows, those it lacks, the model's labels it lacks, and
    why nothing comes when nothing does."""

    name: str | None
    tag: str
    to_name: str | None
    predicted: bool
    labels: list[str] = []
    missing: list[str] = []
    unused: list[str] = []
    notes: list[str] = []
    reason: str = ""
    source: str | None = None


class SetupResponse(BaseModel):
    model_version: str
    labels: list[str] = Field(description="the first predicted control's labels the model knows")
    warnings: list[str] = []
    coverage: list[ControlCoverageItem] = Field([], description="what will and will not be predicted, per control")


class LSPredictRequest(BaseModel):
    """What Label Studio posts to ``/predict``."""

    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = Field(None, repr=False)


class LSPrediction(BaseModel):
    """One task's prediction: a result item per predicted control, and the task's ``score`` (its
    least sure control's)."""

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


class SpanOut(BaseModel):
    start: int = Field(description="character offset (Python string index) on the text")
    end: int
    label: str
    score: float | None = Field(None, description="calibrated chance the span is exactly right")


class ControlOutput(BaseModel):
    """What a control's own model says about one text."""

    kind: Literal["single", "multi", "spans"]
    labels: list[str] = Field([], description="the labels chosen: the most probable one, or every label at or over "
                                              "its threshold (possibly none)")
    probabilities: dict[str, float] = Field({}, description="calibrated; independent per label for 'multi'")
    spans: list[SpanOut] = Field([], description="'spans': the entities found")
    score: float = Field(description="confidence of the decision: the top label's probability, the least "
                                     "confident label decision, or min(least confident span, 1 - missed)")
    missed: float | None = Field(None, description="'spans': the chance an entity was missed")
    model_version: str


class PredictItem(BaseModel):
    """The main model's fields (absent when only controls have models) and, per control with a
    model of its own, ``controls``."""

    label: str | None = None
    confidence: float | None = Field(None, description="calibrated probability of `label`")
    probabilities: dict[str, float] | None = None
    entropy: float | None = None
    margin: float | None = None
    model_version: str | None = None
    truncated: bool = Field(description="the text was cut to the model's token limit")
    controls: dict[str, ControlOutput] | None = None


class PredictResponse(BaseModel):
    predictions: list[PredictItem]
    model_version: str


class ControlVersions(BaseModel):
    versions: list[str]
    current: str | None
    serving: str | None


class VersionsResponse(BaseModel):
    versions: list[str]
    current: str | None
    serving: str | None = Field(description="null while the backend waits for its first model version")
    controls: dict[str, ControlVersions] = Field({}, description="the versions of each control's own model")


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
