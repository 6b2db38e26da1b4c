"""Label Studio behind a small interface: ensure a project, push items, pull annotations.

Built on ``label-studio-sdk``. Every remote call is retried with exponential backoff (tenacity)
on connection errors, timeouts and 5xx answers, with one log line per retry; a 4xx is raised at
once (retrying a bad request cannot help). Our external id travels in each task's data under
``hitl_id`` so a push can be reconciled after a crash.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from tenacity import before_sleep_log, retry, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger(__name__)

EXTERNAL_ID_KEY = "hitl_id"


@dataclass
class PushItem:
    """One routed item to create as a task, with the model's suggestion."""

    external_id: str
    data: dict[str, Any]
    result: list[dict[str, Any]] | None = None
    score: float | None = None
    model_version: str | None = None


@dataclass
class RemoteAnnotation:
    """An annotation as Label Studio holds it now."""

    remote_id: str
    annotator: str
    value: list[str]
    status: str  # "submitted" | "skipped"
    updated_at: str
    lead_time: float | None = None


@dataclass
class TaskSnapshot:
    """A task that changed since the cursor, with all of its current annotations."""

    task_id: int
    external_id: str | None
    updated_at: str
    annotations: list[RemoteAnnotation] = field(default_factory=list)


def _retryable(exc: BaseException) -> bool:
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
        return True
    return isinstance(exc, ApiError) and (exc.status_code or 0) >= 500


def _with_retries(attempts: int):
    return retry(retry=retry_if_exception(_retryable), stop=stop_after_attempt(attempts),
                 wait=wait_exponential(multiplier=0.5, max=10), reraise=True,
                 before_sleep=before_sleep_log(log, logging.WARNING))


def choices_of(result: list[dict[str, Any]] | None, from_name: str | None = None) -> list[str]:
    """The labels chosen in a Label Studio ``result`` (optionally of one control)."""
    out: list[str] = []
    for r in result or []:
        if r.get("type") == "choices" and (from_name is None or r.get("from_name") == from_name):
            out.extend(r.get("value", {}).get("choices", []))
    return out


class LabelStudioClient:
    """The calls the sync service needs, with retries; ``api_key`` is a legacy token or a PAT."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, attempts: int = 5,
                 from_name: str | None = None) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.from_name = from_name
        self._ls = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        self._call = _with_retries(attempts)(lambda fn, *a, **kw: fn(*a, **kw))
        self._users: dict[int, str] = {}

    # -- projects -----------------------------------------------------------------------------

    def ensure_project(self, title: str, label_config: str, *, description: str = "") -> int:
        """The id of the project titled ``title``, created with ``label_config`` if absent."""
        for p in self._call(lambda: list(self._ls.projects.list(search=title))):
            if p.title == title:
                return int(p.id)
        project = self._call(self._ls.projects.create, title=title, label_config=label_config,
                             description=description)
        log.info("created Label Studio project %s (%r)", project.id, title)
        return int(project.id)

    # -- push ---------------------------------------------------------------------------------

    def task_ids_by_external_id(self, project: int, external_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Map our external ids to task ids in ``project`` (all of them, or only those asked for)."""
        wanted = set(external_ids) if external_ids is not None else None
        found: dict[str, int] = {}
        for task in self._iter_tasks(project, include="id,data"):
            ext = (task.data or {}).get(EXTERNAL_ID_KEY)
            if ext is not None and (wanted is None or ext in wanted):
                found[str(ext)] = int(task.id)
        return found

    def import_items(self, project: int, items: list[PushItem]) -> dict[str, int]:
        """Create one task per item (with its prediction) in one bulk call; external id → task id."""
        if not items:
            return {}
        payload = []
        for it in items:
            task: dict[str, Any] = {"data": {**it.data, EXTERNAL_ID_KEY: it.external_id}}
            if it.result is not None:
                task["predictions"] = [{"result": it.result, "score": it.score, "model_version": it.model_version}]
            payload.append(task)
        resp = self._call(self._ls.projects.import_tasks, project, request=payload, return_task_ids=True)
        ids = list(resp.task_ids or [])
        if len(ids) != len(items):
            raise RuntimeError(f"Label Studio returned {len(ids)} task ids for {len(items)} imported tasks")
        return {it.external_id: int(tid) for it, tid in zip(items, ids)}

    # -- pull ---------------------------------------------------------------------------------

    def changed_tasks(self, project: int, since: str | None, *, overlap_s: float = 1.0) -> Iterator[TaskSnapshot]:
        """Tasks updated after ``since`` (ISO time), oldest first, with their annotations.

        The window starts ``overlap_s`` before the cursor so that tasks updated in the same
        instant are not missed; the caller's upsert makes the overlap harmless.
        """
        filters = []
        if since:
            start = (datetime.fromisoformat(since.replace("Z", "+00:00")) - timedelta(seconds=overlap_s))
            start = start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # the only format it takes
            filters.append({"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
                            "value": start})
        query = json.dumps({"filters": {"conjunction": "and", "items": filters}, "ordering": ["tasks:updated_at"]})
        for task in self._iter_tasks(project, fields="all", query=query):
            anns = []
            for a in task.annotations or []:
                a = a if isinstance(a, dict) else a.model_dump()
                anns.append(RemoteAnnotation(
                    remote_id=str(a["id"]), annotator=self._user(a.get("completed_by")),
                    value=choices_of(a.get("result"), self.from_name),
                    status="skipped" if a.get("was_cancelled") else "submitted",
                    updated_at=_iso(a.get("updated_at") or a.get("created_at")), lead_time=a.get("lead_time")))
            ext = (task.data or {}).get(EXTERNAL_ID_KEY)
            yield TaskSnapshot(int(task.id), str(ext) if ext is not None else None, _iso(task.updated_at), anns)

    def server_time(self) -> datetime:
        """Label Studio's clock (its HTTP ``Date`` header, 1 s resolution), immune to our clock's skew."""
        from email.utils import parsedate_to_datetime

        r = self._call(httpx.get, f"{self.url}/health", timeout=10)
        return parsedate_to_datetime(r.headers["date"]).astimezone(UTC)

    def _iter_tasks(self, project: int, **kwargs: Any) -> Iterator[Any]:
        page = 1
        while True:
            try:
                batch = self._call(lambda page=page: self._ls.tasks.list(project=project, page=page, page_size=500,
                                                               **kwargs).items)
            except Exception as exc:  # the last page + 1 answers 404
                from label_studio_sdk.core.api_error import ApiError

                if isinstance(exc, ApiError) and exc.status_code == 404:
                    return
                raise
            if not batch:
                return
            yield from batch
            if len(batch) < 500:
                return
            page += 1

    def _user(self, user: Any) -> str:
        if isinstance(user, dict):
            return str(user.get("email") or user.get("id"))
        if user is None:
            return "unknown"
        uid = int(user)
        if uid not in self._users:
            try:
                u = self._call(self._ls.users.get, uid)
                self._users[uid] = str(u.email or uid)
            except Exception:  # noqa: BLE001 - an unknown user keeps its numeric id
                self._users[uid] = str(uid)
        return self._users[uid]

    def request_more_answers(self, task_id: int, overlap: int) -> None:
        """Put a task back in the labeling queue until it has ``overlap`` annotations (Label
        Studio serves it to annotators who have not answered it yet)."""
        self._call(self._ls.tasks.update, id=task_id, overlap=overlap, is_labeled=False)

    # -- annotations (used by tests and the simulator) -------------------------------------------

    def annotate(self, task_id: int, result: list[dict[str, Any]], *, completed_by: int | None = None,
                 skipped: bool = False) -> int:
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": skipped}
        if completed_by is not None:
            kwargs["completed_by"] = completed_by
        return int(self._call(self._ls.annotations.create, id=task_id, **kwargs).id)


def _iso(value: Any) -> str:
    """UTC ISO-8601 with ``+00:00`` whatever form Label Studio used (``Z`` or an offset)."""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()
