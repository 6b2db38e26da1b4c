"""Webhook receivers: answer at once, then wake the sync loop to pull that project.

Label Studio gives a webhook 1 s and no retry, and sends no signature: we require a shared secret
in a header configured on the webhook (``X-Hitl-Secret``). The sync registers that webhook itself
when ``HITL_SYNC_PUBLIC_URL`` says where Label Studio reaches this receiver
(``LabelStudioTool.ensure_webhook``). Payloads carry the project's token and are never logged.

Each receiver checks what it can without the body first (the secret header; the presence of the
signature headers), then reads at most ``max_body_bytes`` (more: 413), then parses (malformed or
too deeply nested JSON: 400). Without a Label Studio secret the receiver is open: allowed on
loopback only (:func:`check_bind`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import Collector
from pydantic import BaseModel

from connector.hardening import is_loopback, loads_json
from connector.tools.label_studio import WEBHOOK_SECRET_HEADER as SECRET_HEADER

log = logging.getLogger(__name__)

LABEL_STUDIO_PATH = "/webhooks/label-studio"
ARGILLA_PATH = "/webhooks/argilla"
PULL_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                          "ANNOTATION_DELETED", "TASKS_DELETED"})


class PullRequests:
    """Projects whose pull was asked for by a webhook, and an event that wakes the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._projects: set[str] = set()
        self.wake = threading.Event()

    def add(self, project: str) -> None:
        with self._lock:
            self._projects.add(project)
        self.wake.set()

    def take(self) -> set[str]:
        with self._lock:
            out, self._projects = self._projects, set()
        self.wake.clear()
        return out


ARGILLA_PULL_EVENTS = frozenset({"response.created", "response.updated", "response.deleted", "record.completed"})
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


class WebhookAck(BaseModel):
    """The delivery was taken; ``pull_queued`` when its event asks for a pull."""

    status: Literal["ok"]
    pull_queued: bool


class ErrorResponse(BaseModel):
    detail: str


ERRORS = {
    400: "the body is not JSON (malformed, not UTF-8, nested past the parser's limit) or lacks what the event needs",
    401: "the secret header (X-Hitl-Secret) or the Standard Webhooks signature is missing or wrong",
    413: "the body is over the limit (max_body_bytes, 4 MiB by default)",
    503: "no Argilla webhook secret is configured (HITL_ARGILLA_WEBHOOK_SECRET)",
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse, "description": ERRORS[status]} for status in statuses}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body the route reads itself (the raw bytes are needed first)."""
    return {"requestBody": {"required": True, "description": description,
                            "content": {"application/json": {"schema": schema}}}}


_ID = {"anyOf": [{"type": "integer"}, {"type": "string", "minLength": 1}]}
LABEL_STUDIO_EVENT = _json_body({
    "type": "object", "required": ["action", "project"],
    "properties": {"action": {"type": "string"},
                   "project": {"anyOf": [_ID, {"type": "object", "required": ["id"], "properties": {"id": _ID}}]}},
}, "a Label Studio webhook event; sent with the X-Hitl-Secret header when HITL_WEBHOOK_SECRET is set")
ARGILLA_EVENT = _json_body({
    "type": "object", "required": ["type"],
    "properties": {"type": {"type": "string"}, "timestamp": {"type": "string"}, "data": {"type": "object"}},
}, "an Argilla webhook event, signed per Standard Webhooks")
ARGILLA_EVENT["parameters"] = [{"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                               for h in SIGNATURE_HEADERS]


def _label_studio_project(payload: dict[str, Any]) -> int | str | None:
    """The project's id (``project`` is the project object, or its bare id); ``None`` when it has none."""
    project = payload.get("project")
    project_id = project.get("id") if isinstance(project, dict) else project
    if isinstance(project_id, bool) or not isinstance(project_id, (int, str)) or project_id == "":
        return None
    return project_id


def label_studio_webhook_url(public_url: str) -> str:
    """The Label Studio receiver's URL under the sync service's public base URL."""
    return public_url.rstrip("/") + LABEL_STUDIO_PATH


def check_bind(host: str, secret: str | None) -> None:
    """Refuse to serve the Label Studio receiver beyond loopback without its secret."""
    if not secret and not is_loopback(host):
        raise ValueError(f"HITL_SYNC_HOST={host} is reachable beyond loopback: set HITL_WEBHOOK_SECRET "
                         "(the X-Hitl-Secret header of the Label Studio webhook), or bind to 127.0.0.1")


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes; ``HTTPException(413)`` beyond (declared or streamed)."""
    too_large = HTTPException(413, f"request body over the limit of {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def create_webhook_app(requests: PullRequests, *, secret: str | None, argilla_secret: str | None = None,
                       metrics: Collector | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> FastAPI:
    """``metrics`` (e.g. ``sync.metrics.SyncMetricsCollector(store)``) is served on ``GET /metrics``,
    from a registry of this app's own; without it the exposition is empty. An empty secret counts
    as none."""
    secret, argilla_secret = secret or None, argilla_secret or None
    app = FastAPI(title="hitl sync webhooks")
    registry = CollectorRegistry()
    if metrics is not None:
        registry.register(metrics)

    @app.post(ARGILLA_PATH, response_model=WebhookAck, responses=_responses(400, 401, 413, 503),
              openapi_extra=ARGILLA_EVENT)
    async def argilla(request: Request) -> JSONResponse:
        """Standard Webhooks: the signature over the raw body is checked before anything else;
        Argilla retries up to 3 times, and a repeated delivery only asks for a pull again."""
        from connector.tools.argilla import WebhookError, verify_webhook

        if argilla_secret is None:
            return JSONResponse({"detail": "no Argilla webhook secret configured"}, status_code=503)
        missing = [h for h in SIGNATURE_HEADERS if not request.headers.get(h)]
        if missing:
            return JSONResponse({"detail": f"webhook rejected: missing {', '.join(missing)}"}, status_code=401)
        body = await read_limited(request, max_body_bytes)
        try:
            payload = verify_webhook(argilla_secret, dict(request.headers), body)
        except WebhookError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=401)
        except RecursionError:  # signed, but nested past the parser's limit
            return JSONResponse({"detail": "body is not JSON (nested too deeply)"}, status_code=400)
        if not isinstance(payload, dict) or not isinstance(payload.get("type"), str):
            return JSONResponse({"detail": "payload must be an object with a 'type'"}, status_code=400)
        data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
        record = data.get("record") if isinstance(data.get("record"), dict) else data
        dataset = (record.get("dataset") or {}) if isinstance(record, dict) else {}
        name = dataset.get("name") if isinstance(dataset, dict) else None
        name = name if isinstance(name, str) and name else None
        queued = payload["type"] in ARGILLA_PULL_EVENTS
        if queued:
            requests.add(name or "argilla")
        return JSONResponse({"status": "ok", "pull_queued": queued})

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.get("/metrics", include_in_schema=False)
    def metrics_text() -> Response:
        # a plain def: the collector queries the store, so it runs in the thread pool, off the event loop
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.post(LABEL_STUDIO_PATH, response_model=WebhookAck, responses=_responses(400, 401, 413),
              openapi_extra=LABEL_STUDIO_EVENT)
    async def label_studio(request: Request) -> JSONResponse:
        if secret is not None and not secrets.compare_digest(request.headers.get(SECRET_HEADER, "").encode(),
                                                             secret.encode()):
            return JSONResponse({"detail": f"missing or wrong {SECRET_HEADER}"}, status_code=401)
        body = await read_limited(request, max_body_bytes)
        try:
            payload: Any = loads_json(body)
        except ValueError as exc:
            return JSONResponse({"detail": f"body is not JSON ({exc})"}, status_code=400)
        if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
            return JSONResponse({"detail": "body must be a JSON object with an 'action' string"}, status_code=400)
        project_id = _label_studio_project(payload)
        if project_id is None:
            return JSONResponse({"detail": "body has no project id (an integer or a string, or an object with one)"},
                                status_code=400)
        queued = payload["action"] in PULL_ACTIONS
        if queued:
            requests.add(str(project_id))
        return JSONResponse({"status": "ok", "pull_queued": queued})

    return app
