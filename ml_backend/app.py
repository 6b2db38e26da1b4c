"""FastAPI app: Label Studio's ML backend protocol plus a plain JSON predict API.

Label Studio 1.23 calls ``GET /health`` (1 s timeout), ``POST /setup`` (3 s) before every
prediction request, ``POST /predict`` (100 s) and ``POST /webhook``: connecting a backend adds a
project webhook to it for every event (each annotation, 1 s timeout, in the annotator's request),
and *Start Training* sends ``START_TRAINING`` there. This backend trains on none of them: the
scheduler retrains on settled labels, and answers reach it through the sync service's own
receiver. ``/webhook`` says so with a 200 at once, the answer label-studio-ml-backend gives an
event it does not handle (an error status would put the model in Label Studio's error state).
The model is loaded in the lifespan, never on a request; ``/setup`` only parses the config
(cached by the config's hash).
On an empty model root the app starts anyway: ``/health`` answers 200 with status ``WAITING`` (the
process is fine, nothing should restart it) and the model's routes 503 until a version is promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from connector.batching import QueueFull
from connector.control_models import control_names, control_store
from connector.hardening import loads_json
from connector.labeling_config import LabelingConfigError
from ml_backend.auth import require_auth
from ml_backend.metrics import CONTENT_TYPE, BackendMetrics, MetricsMiddleware
from ml_backend.schemas import (
    ControlVersions,
    ErrorResponse,
    HealthResponse,
    LSPredictRequest,
    LSPredictResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    VersionsResponse,
    WebhookIgnored,
)
from ml_backend.service import ModelService, NoModelYet, SetupError
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)


class BodySizeLimit:
    """Answer 413 to bodies over ``limit`` bytes, declared or streamed, before they are buffered."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(send)

    async def _reject(self, send: Any) -> None:
        detail = f"request body over the limit of {self.limit} bytes (HITL_MAX_REQUEST_BYTES)"
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _error(status: int, detail: Any) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


# what each error status means on this app; every route documents the ones it can answer
ERRORS = {
    400: "the body is not JSON: malformed, not UTF-8, or nested past the parser's limit",
    401: "credentials are configured (HITL_API_TOKEN, HITL_BASIC_AUTH_*) and these are missing or wrong",
    413: "the body is over HITL_MAX_REQUEST_BYTES, or it carries more tasks (HITL_MAX_TASKS_PER_REQUEST) or "
         "texts (HITL_MAX_TEXTS_PER_REQUEST) than one request may",
    422: "the body does not fit the request schema, or the labeling config cannot be served (the reason is given)",
    503: "no model version yet, or the inference queue is full: retry after Retry-After seconds",
}


WEBHOOK_IGNORED = ("the ML backend does not train on webhooks: answers reach the loop through the sync "
                   "service's receiver (/webhooks/label-studio), and the scheduler retrains on settled labels")


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


def create_app(settings: BackendSettings | None = None, service: ModelService | None = None) -> FastAPI:
    """Build the app; ``service`` lets tests share one loaded model across apps."""
    settings = settings or BackendSettings()
    owns_service = service is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = service or ModelService(settings)
        # the model and libraries are long-lived: keep the cyclic GC from scanning them on every
        # full collection (a gen-2 pass over them stalls requests for hundreds of ms)
        gc.collect()
        gc.freeze()
        poller = asyncio.create_task(_poll_versions(app)) if settings.reload_interval_s > 0 else None
        try:
            yield
        finally:
            if poller:
                poller.cancel()
            if owns_service:
                app.state.service.close()

    app = FastAPI(title="hitl ML backend", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, limit=settings.max_request_bytes)
    # one registry per app; added last, so it is outermost and also counts BodySizeLimit's 413s
    metrics = app.state.metrics = BackendMetrics(lambda: getattr(app.state, "service", None))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    texts_predicted = metrics.texts_predicted
    auth = [Depends(require_auth)]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 "There was an error parsing the body" for any failure to parse; say why
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
            return _error(400, "request body is JSON nested too deeply")
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            return _error(400, f"request body is not UTF-8 ({exc.__cause__})")
        return await http_exception_handler(request, exc)

    @app.exception_handler(QueueFull)
    async def _busy(_: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(NoModelYet)
    async def _no_model(_: Request, exc: NoModelYet) -> JSONResponse:
        retry = str(max(1, round(settings.reload_interval_s)))
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": retry})

    @app.exception_handler(LabelingConfigError)
    async def _bad_config(_: Request, exc: LabelingConfigError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(SetupError)
    async def _bad_setup(_: Request, exc: SetupError) -> JSONResponse:
        return _error(422, str(exc))

    def svc(request: Request) -> ModelService:
        return request.app.state.service

    @app.get("/health", response_model=HealthResponse, response_model_exclude_unset=True)
    async def health(request: Request) -> dict[str, Any]:
        s = svc(request)
        if not s.ready:
            return {"status": "WAITING", "model_class": "TextClassifier", "model_version": None,
                    "detail": f"no model version under {settings.model_root} yet; checked every "
                              f"{settings.reload_interval_s:g} s (train one with `hitl train`)"}
        return {"status": "UP", "model_class": "TextClassifier", "model_version": s.model_version,
                "queue": s.batcher.queue_size, "batches_run": s.batcher.batches_run, "items_run": s.batcher.items_run}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_text() -> Response:
        # open like /health (a probe); the model version is read from the service at each scrape
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.post("/setup", response_model=SetupResponse, dependencies=auth,
              responses=_responses(400, 401, 413, 422, 503))
    async def setup(body: SetupRequest, request: Request) -> SetupResponse:
        s = svc(request)
        try:
            ps = s.setup(body.schema_)
        except SetupError as exc:
            log.warning("project %s: %s", body.project, exc)
            raise
        log.info("project %s: %s", body.project, ps.coverage.summary())
        for w in ps.warnings():
            log.warning("project %s: %s", body.project, w)
        return SetupResponse(model_version=s.model_version, labels=list(ps.usable), warnings=ps.warnings(),
                             coverage=_coverage(ps))

    @app.post("/predict", response_model=LSPredictResponse, dependencies=auth,
              responses=_responses(400, 401, 413, 422, 503))
    async def predict_ls(body: LSPredictRequest, request: Request) -> LSPredictResponse | JSONResponse:
        s = svc(request)
        if not body.label_config:
            return _error(422, "request has no label_config; Label Studio sends the project's labeling config")
        if len(body.tasks) > settings.max_tasks_per_request:
            return _error(413, f"{len(body.tasks)} tasks; at most {settings.max_tasks_per_request} per request")
        ps = s.setup(body.label_config)
        keys = list(dict.fromkeys(served.control.data_key for served in ps.served))
        texts, problems = [], []
        for i, task in enumerate(body.tasks):
            data = task.get("data")
            tid = task.get("id", f"#{i}")
            if not isinstance(data, dict):
                problems.append(f"task {tid}: no 'data' object")
                continue
            for key in keys:
                value = data.get(key)
                if key not in data:
                    problems.append(f"task {tid}: data has no field {key!r} (the config reads ${key}); "
                                    f"it has {sorted(data)[:10]}")
                elif not isinstance(value, str):
                    problems.append(f"task {tid}: data.{key} must be a string, got {type(value).__name__}")
            if len(keys) == 1 and isinstance(data.get(keys[0]), str):
                texts.append(data[keys[0]])
        if len(keys) > 1 and not problems:
            return _error(422, f"the served controls read different fields ({keys}); one text per task is served")
        if problems:
            return _error(422, problems[:50])
        outputs = await s.predict_all(texts)
        texts_predicted["/predict"].inc(len(outputs))
        results, warnings = [], ps.warnings()
        one_main = len(ps.served) == 1 and ps.served[0].source == "main"
        for task, text, out in zip(body.tasks, texts, outputs):
            version = out.main.model_version if one_main else _versions(ps, out)
            items, score = s.ls_result(ps, out, text)
            results.append({"result": items, "score": score, "model_version": version})
            if out.truncated:
                warnings.append(f"task {task.get('id')}: text cut to the model's limit of "
                                f"{s.max_length} tokens")
        # built as plain JSON (the hot path); the shape is LSPredictResponse's, as the schema says
        return JSONResponse({"results": results, "model_version": s.model_version, "warnings": warnings})

    @app.post("/webhook", dependencies=auth, response_model=WebhookIgnored,
              responses=_responses(400, 401, 413), openapi_extra={"requestBody": {
                  "required": True, "description": "a Label Studio event (any project event; START_TRAINING): ignored, nothing kept",
                  "content": {"application/json": {"schema": {
                      "type": "object", "required": ["action"], "properties": {"action": {"type": "string"}}}}}}})
    async def webhook(request: Request) -> JSONResponse:
        try:
            payload = loads_json(await request.body())
        except ValueError as exc:
            return _error(400, f"webhook body is not JSON ({exc})")
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            return _error(400, "webhook body must be a JSON object with an 'action' string")
        if payload["action"] == "START_TRAINING":  # asked by a person; the other events come with every annotation
            log.info("START_TRAINING ignored: %s", WEBHOOK_IGNORED)
        return JSONResponse({"status": "ignored", "reason": WEBHOOK_IGNORED})

    @app.get("/versions", response_model=VersionsResponse, dependencies=auth, responses=_responses(401),
             response_model_exclude_unset=True)
    async def versions(request: Request) -> VersionsResponse:
        s = svc(request)
        controls = {name: ControlVersions(versions=control_store(settings.model_root, name).versions(),
                                          current=control_store(settings.model_root, name).current(),
                                          serving=s.control_versions.get(name))
                    for name in sorted(set(control_names(settings.model_root)) | set(s.control_versions))}
        return VersionsResponse(versions=s.store.versions(), current=s.store.current(),
                                serving=s.main_version,
                                **({"controls": controls} if controls else {}))

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=auth,
              responses=_responses(400, 401, 413, 422, 503))
    async def predict_json(body: PredictRequest, request: Request) -> JSONResponse:
        s = svc(request)
        if len(body.texts) > settings.max_texts_per_request:
            return _error(413, f"{len(body.texts)} texts; at most {settings.max_texts_per_request} per request "
                               "(HITL_MAX_TEXTS_PER_REQUEST): send them in several requests")
        outputs = await s.predict_all(body.texts)
        texts_predicted["/v1/predict"].inc(len(outputs))
        return JSONResponse({"predictions": [_plain(out) for out in outputs], "model_version": s.model_version})

    return app


def _coverage(ps: Any) -> list[dict[str, Any]]:
    """The coverage of a config, one plain dict per control."""
    return [{"name": c.name, "tag": c.tag, "to_name": c.to_name, "predicted": c.predicted, "labels": list(c.labels),
             "missing": list(c.missing), "unused": list(c.unused), "notes": list(c.notes), "reason": c.reason,
             "source": next((sv.source for sv in ps.served if sv.control.from_name == c.name), None)}
            for c in ps.coverage.controls]


def _versions(ps: Any, out: Any) -> str:
    """The versions behind one prediction of several controls: ``name:version`` joined by ``+``."""
    parts = []
    for served in ps.served:
        version = out.main.model_version if served.source == "main" else out.versions[served.source]
        parts.append(f"{served.control.from_name}:{version}")
    return "+".join(parts)


def _plain(out: Any) -> dict[str, Any]:
    """One ``/v1/predict`` prediction: the main model's fields (when there is one) and, per control
    with a model of its own, its labels chosen, probabilities, score, kind and version."""
    item: dict[str, Any] = dict(out.main.__dict__) if out.main is not None else {"truncated": out.truncated}
    if out.controls or out.spans:
        item["controls"] = {}
        for name, pred in out.spans.items():
            item["controls"][name] = {"kind": "spans", "spans": [
                {"start": sp.start, "end": sp.end, "label": sp.label, "score": sp.score} for sp in pred.spans],
                "score": pred.score, "missed": pred.missed, "model_version": out.versions[name]}
        for name, probs in out.controls.items():
            m = out.models[name]
            thresholds = m.thresholds()
            if m.label_set:
                chosen = [label for label in m.labels if probs[label] >= thresholds[label]]
            else:
                chosen = [max(m.labels, key=lambda label: probs[label])]
            score = float(m.task_scores(np.array([[probs[label] for label in m.labels]]))[0])
            item["controls"][name] = {"kind": m.kind, "labels": chosen, "probabilities": probs, "score": score,
                                      "model_version": m.version}
    return item


async def _poll_versions(app: FastAPI) -> None:
    """Pick up a newly promoted version without a restart."""
    settings: BackendSettings = app.state.settings
    while True:
        await asyncio.sleep(settings.reload_interval_s)
        try:
            await asyncio.to_thread(app.state.service.reload_if_changed)
        except Exception:
            log.exception("could not switch model version")
