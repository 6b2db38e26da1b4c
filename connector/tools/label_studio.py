"""Label Studio as an :class:`~connector.tools.base.AnnotationTool`: projects, tasks, annotations.

Built on ``label-studio-sdk``; every remote call goes through the shared retry policy, except the
import that creates tasks, which is never sent blind twice (see ``push``). Our key for an item
version travels in each task's data under ``hitl_id`` so a push can be reconciled after a crash.
The project key in the store is the project id, as a string.

How Label Studio 1.23 behaved, and what the pull does about it:
- ``tasks.list(only_annotated=True)`` is silently ignored; the filter on ``tasks:updated_at``
  works, and only in the form ``%Y-%m-%dT%H:%M:%S.%fZ``. A task's ``updated_at`` moves when an
  annotation is created, updated or deleted, so the pull reads the tasks changed since the
  cursor, each with all of its annotations (an annotation missing from one was deleted).
- A task saved just before the cursor may still be in an uncommitted transaction when we read,
  so reads overlap the previous one by ``overlap_s`` until the cursor has settled: once Label
  Studio's clock is well past it, everything up to it is committed and the next read starts
  exactly there (so a quiet project is not re-read).
- Paging by page number over the ``updated_at`` order loses tasks: a task edited during the pull
  jumps to the end, every later task shifts one place back, and one crosses into a page already
  read (behind the cursor, for good). So the changed tasks are read by key: each request asks for
  the first page after the last instant read. ``ordering`` honours its first key only (no ``id``
  tie-break), so the tasks at a page's last instant are read whole by id (``updated_at`` ``equal``,
  exact to the microsecond, plus ``filter:tasks:id`` ``greater``, ordered by ``tasks:id``) before
  the next page starts strictly after that instant. A task edited during the pull is read again at
  its new place; the pull keeps its last reading.
- Asking for the page after the last answers 404.

What an annotator must not see, and how Label Studio 1.23 would show it anyway: opening a task with
no prediction (the Data Manager's task view, ``GET /api/tasks/<id>``) makes Label Studio ask the
project's ML backend for one, store it and show it pre-selected with its model version and score;
and a project whose ``model_version`` is the backend's title (the default when the backend is
registered before any prediction is imported) asks the backend live for every task of the
labelling stream. Either would show the model's label on gold items, audits and spot checks. So
every project is created with ``model_version`` :data:`PREDICTION_VERSION`, and a task without a
suggestion is imported with an empty prediction under that name: nothing is pre-selected, and
Label Studio never asks the backend about it.

Adjudication: Label Studio Community (1.23) has no reviewer flow (the review stream, reviewer
role and review API are Label Studio Enterprise's), so the task's adjudication project is a second
project (``ensure_adjudication``), titled like the task with ``· adjudication``, whose config is the
task's with the answers in conflict shown above the question (``adjudication_config``).

Review kinds (``extraction``, ``answer``): the project's config is ``review_kinds.build_review_config``,
the prediction pre-fills its text areas with the model output, and the answers of a project known
as a review kind's (``ensure_project``/``ensure_adjudication`` note it) are read by
``review_kinds.parse_label_studio``: the outcome as ``value``, the rest as ``extra``.

Projects are created with ``maximum_annotations`` = the task's ``overlap``. With a webhook URL,
``ensure_project`` also keeps exactly one project webhook to it (the sync receiver), with the
shared secret in ``X-Hitl-Secret``, so an annotation wakes a pull at once instead of at the next
poll. Label Studio 1.23 blocks webhooks to loopback and private addresses unless
``SSRF_PROTECTION_ENABLED=false`` (the local launcher sets it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from connector.review_kinds import parse_label_studio
from connector.tools.base import (
    ANSWERS_FIELD,
    SUGGESTION_VERSION,
    Pull,
    PushItem,
    RemoteAnswer,
    RemoteItem,
    UserNames,
    adjudication_name,
    as_utc,
    push_checked,
    retrying,
    utc_iso,
)

if TYPE_CHECKING:
    from connector.task_spec import TaskSpec

log = logging.getLogger(__name__)

EXTERNAL_ID_KEY = "hitl_id"
PAGE = 500
TITLE_MAX = 50  # Label Studio's PROJECT_TITLE_MAX_LEN
WEBHOOK_SECRET_HEADER = "X-Hitl-Secret"
# what changes an answer; the payload carries the project (the receiver needs its id)
WEBHOOK_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
#: the model version of our predictions and the project's ``model_version`` (the one Label Studio
#: pre-selects from): the neutral name every pushed suggestion carries
PREDICTION_VERSION = SUGGESTION_VERSION


def choices_of(result: list[dict[str, Any]] | None, from_name: str | None = None) -> list[str]:
    """The labels chosen in a Label Studio ``result`` (optionally of one control)."""
    out: list[str] = []
    for r in result or []:
        if r.get("type") == "choices" and (from_name is None or r.get("from_name") == from_name):
            out.extend(r.get("value", {}).get("choices", []))
    return out


def spans_of(result: list[dict[str, Any]] | None, from_name: str, text: str) -> list[list[Any]]:
    """The spans of control ``from_name`` in a Label Studio ``result`` as ``[[start, end, label], ...]``,
    each checked against ``text`` (the quoted ``value.text`` must be ``text[start:end]``; offsets a
    browser counted in UTF-16 units are converted; a span whose text is not found is dropped:
    :func:`connector.spans.from_label_studio`)."""
    from connector.spans import from_label_studio

    return [[s.start, s.end, s.label] for s in from_label_studio(text, result or [], from_name=from_name)]


def adjudication_config(label_config: str) -> str:
    """The task's labeling config with the answers in conflict (``$hitl_answers``) shown, read-only,
    right after the text the task's first ``<Choices>`` labels."""
    import xml.etree.ElementTree as ET

    from connector.labeling_config import first_text_control

    to_name = first_text_control(label_config).to_name  # refuses a DTD before ET reads it
    root = ET.fromstring(label_config)
    for parent in root.iter():
        for position, child in enumerate(list(parent)):
            if child.get("name") == to_name:
                shown = [ET.Element("Header", value="Answers so far"),
                         ET.Element("Text", name=ANSWERS_FIELD, value=f"${ANSWERS_FIELD}")]
                for offset, element in enumerate(shown, 1):
                    element.tail = child.tail
                    parent.insert(position + offset, element)
                return ET.tostring(root, encoding="unicode")
    raise ValueError(f"no element named {to_name!r} in the labeling config")


class LabelStudioTool:
    """One Label Studio instance; ``api_key`` is a legacy token or a personal access token.

    ``webhook_url`` (the sync receiver's ``/webhooks/label-studio`` as Label Studio reaches it) and
    ``webhook_secret``: the project webhook :meth:`ensure_project` keeps; none without a URL."""

    name = "label_studio"
    cursor_keys = ("updated_at", "settled")
    per_item_overlap = True

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0, attempts: int = 5,
                 from_name: str | None = None, overlap_s: float = 1.0, page_size: int = PAGE,
                 webhook_url: str | None = None, webhook_secret: str | None = None) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.webhook_url = webhook_url or None
        self.webhook_secret = webhook_secret or None
        self.from_name = from_name
        self.overlap_s = overlap_s
        self.page_size = page_size
        self._ls = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)
        self.attempts = attempts
        self._call = retrying(attempts)
        self._users = UserNames(lambda uid: self._call(self._ls.users.get, int(uid)).email, tolerate=(Exception,))
        self._review: dict[str, TaskSpec] = {}  # project id -> the task of a review kind, whose answers it reads
        # project id -> (primary control, the others, span control -> its text's data key)
        self._controls: dict[str, tuple[str, list[str], dict[str, str]]] = {}

    # -- the protocol -------------------------------------------------------------------------

    def ensure_project(self, spec: TaskSpec) -> str:
        """The id of the project titled like the task, created from its labeling config if absent,
        with ``maximum_annotations`` = the task's overlap; with a webhook URL, its one webhook."""
        project = self.project_id(spec.project_name, spec.label_config(), description=spec.instructions,
                                  maximum_annotations=spec.overlap)
        if self.webhook_url:
            try:
                self.ensure_webhook(project, self.webhook_url, secret=self.webhook_secret)
            except Exception as exc:  # noqa: BLE001 - the poll still brings every answer, a webhook only sooner
                log.error("Label Studio project %s: could not register the webhook to %s (%s); answers still "
                          "come with each poll. Label Studio refuses loopback and private addresses unless "
                          "SSRF_PROTECTION_ENABLED=false", project, self.webhook_url, _reason(exc))
        return self._known(project, spec)

    def ensure_adjudication(self, spec: TaskSpec) -> str:
        """The id of the task's adjudication project (``<title> · adjudication``, the title cut to
        Label Studio's 50 characters), created with the task's config and the answers in conflict."""
        title = adjudication_name(spec.project_name, TITLE_MAX)
        description = f"Adjudication of {spec.project_name!r}: the answers so far disagree; give the final label."
        return self._known(self.project_id(title, adjudication_config(spec.label_config()), description=description),
                           spec)

    def push(self, project: str, items: Sequence[PushItem]) -> dict[str, str]:
        """Create one task per item (with its prediction) in one bulk import; external id -> task id.

        An import is not idempotent: sent twice, it creates every task twice. It is never retried
        blind, neither by our policy nor by the SDK (which by default retries a 5xx, a 408/409/429
        and a dropped connection twice): after a transient failure the batch is looked up by
        ``hitl_id`` and only what is missing is imported again (:func:`push_checked`).
        """
        if not items:
            return {}
        return push_checked(lambda todo: self._import(int(project), todo), lambda keys: self.find(project, keys),
                            items, attempts=self.attempts)

    def find(self, project: str, external_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Our external ids -> task ids in ``project`` (all of them, or only those asked for)."""
        wanted = set(external_ids) if external_ids is not None else None
        found: dict[str, str] = {}
        for task in self._iter_tasks(int(project), include="id,data"):
            ext = (task.data or {}).get(EXTERNAL_ID_KEY)
            if ext is not None and (wanted is None or ext in wanted):
                found[str(ext)] = str(task.id)
        return found

    def pull(self, project: str, cursor: Mapping[str, str]) -> Pull:
        """The tasks changed since ``cursor["updated_at"]``, each with all of its annotations.

        The next cursor is the newest task's ``updated_at``; ``settled`` says whether Label
        Studio's clock (read before the tasks) was ``overlap_s`` + 2 s past it.
        """
        since = cursor.get("updated_at")
        settled = cursor.get("settled") == "1"
        server_now = self.server_time()
        read: dict[str, tuple[RemoteItem, list[RemoteAnswer]]] = {}  # by task id; a re-read replaces
        for item, task_answers in self.changed_tasks(int(project), since, overlap_s=0.0 if settled else self.overlap_s):
            read.pop(item.remote_id, None)
            read[item.remote_id] = (item, task_answers)
        items = [item for item, _ in read.values()]
        answers = [a for _, task_answers in read.values() for a in task_answers]
        newest = max([since] * (since is not None) + [it.updated_at for it in items], default=None)
        if newest is None:
            return Pull(answers, items)
        lag = (server_now - datetime.fromisoformat(newest)).total_seconds()
        return Pull(answers, items, {"updated_at": newest, "settled": "1" if lag > self.overlap_s + 2.0 else "0"})

    def _known(self, project: int, spec: TaskSpec) -> str:
        """The project key, noting the task's kind: a review kind's answers are read by its form, and
        a task of several controls has each answer read control by control."""
        if spec.kind != "label":
            self._review[str(project)] = spec
        elif spec.controls:
            from connector.labeling_config import parse_config

            keys = {c.from_name: c.data_key for c in parse_config(spec.label_config()).spans}
            # every span control's answer goes to extra["controls"], the primary one's too (an NER project)
            read = [c for c in spec.control_specs if c.name != spec.primary.name or c.kind == "spans"]
            self._controls[str(project)] = (spec.primary.name, [c.name for c in read],
                                            {c.name: keys.get(c.name, spec.text_field) for c in read
                                             if c.kind == "spans"})
        return str(project)

    def answer_of(self, project: int | str, result: list[dict[str, Any]] | None,
                  data: Mapping[str, Any] | None) -> tuple[list[str], dict[str, Any] | None]:
        """An annotation's ``(value, extra)``: the labels chosen (``from_name``'s, or every
        ``<Choices>``'s), or for a review kind the outcome and the rest of the answer. In a project
        of several controls: the primary control's labels, and the others' in ``extra["controls"]``
        (control name -> labels; a span control's ``[[start, end, label], ...]``, offsets checked
        against the task's text and repaired: :func:`spans_of`)."""
        spec = self._review.get(str(project))
        if spec is None and str(project) in self._controls:
            primary, others, span_keys = self._controls[str(project)]
            return choices_of(result, primary), {"controls": {
                name: spans_of(result, name, str((data or {}).get(span_keys[name]) or ""))
                if name in span_keys else choices_of(result, name) for name in others}}
        if spec is None:
            return choices_of(result, self.from_name), None
        return parse_label_studio(spec, result, data)

    def send_back(self, project: str, wanted: Sequence[tuple[str, int, str]]) -> int:
        """Raise each task's overlap to the answers wanted and return it to the queue."""
        for task_id, answers, reason in wanted:
            self.request_more_answers(task_id, answers)
            log.info("task %s sent back for answer %d (%s)", task_id, answers, reason)
        return len(wanted)

    def delete(self, project: str, remote_ids: Iterable[str]) -> int:
        """Delete tasks (their annotations go with them); a task already gone is not counted."""
        from label_studio_sdk.core.api_error import ApiError

        deleted = 0
        for task_id in remote_ids:
            try:
                self._call(self._ls.tasks.delete, id=int(task_id))
            except ApiError as exc:
                if exc.status_code != 404:
                    raise
                continue
            deleted += 1
        return deleted

    # -- Label Studio's own calls (the protocol's parts; tests and the simulator use them too) ---

    def project_id(self, title: str, label_config: str, *, description: str = "",
                   maximum_annotations: int | None = None) -> int:
        """The id of the project titled ``title``, created with ``label_config`` if absent.

        With ``maximum_annotations`` (answers wanted per task), a new project gets it and an
        existing one with another value is updated (:meth:`set_maximum_annotations`)."""
        for p in self._call(lambda: list(self._ls.projects.list(search=title))):
            if p.title == title:
                if maximum_annotations is not None and p.maximum_annotations != maximum_annotations:
                    self.set_maximum_annotations(int(p.id), maximum_annotations)
                return int(p.id)
        extra = {} if maximum_annotations is None else {"maximum_annotations": maximum_annotations}
        project = self._call(self._ls.projects.create, title=title, label_config=label_config,
                             description=description, model_version=PREDICTION_VERSION, **extra)
        log.info("created Label Studio project %s (%r)", project.id, title)
        return int(project.id)

    def set_maximum_annotations(self, project: int, value: int) -> None:
        """Set the project's answers per task; no unfinished task ends with less overlap than it had.

        Label Studio applies a new value to the tasks by its own rule (lowered: every task above
        it comes down; raised: every task, or only those above 1 when some are). A task sent back
        for another answer (its overlap raised above the project's) would lose that request and
        count as done, and the consensus asks only once per answer count: so each unfinished task
        Label Studio lowers gets its overlap back, and stays in the queue."""
        waiting = {int(t.id): int(t.overlap) for t in self._iter_tasks(project, fields="task_only")
                   if not t.is_labeled and (t.overlap or 1) > value}
        self._call(self._ls.projects.update, id=project, maximum_annotations=value)
        for task_id, overlap in waiting.items():
            self.request_more_answers(task_id, overlap)
        log.info("Label Studio project %s: maximum_annotations set to %d (%d tasks waiting for more answers kept "
                 "their overlap)", project, value, len(waiting))

    def ensure_webhook(self, project: int, url: str, *, secret: str | None = None) -> int:
        """Exactly one active webhook of ``project`` to ``url`` (the answer actions, with the
        payload, ``secret`` in ``X-Hitl-Secret``): created if absent, corrected if it differs,
        duplicates deleted. Webhooks to other URLs are left alone. Returns its id."""
        headers = {WEBHOOK_SECRET_HEADER: secret} if secret else {}
        wanted = {"actions": list(WEBHOOK_ACTIONS), "headers": headers, "is_active": True,
                  "send_payload": True, "send_for_all_actions": False}
        hooks = self._webhooks(project, url)
        if not hooks:  # a create is not idempotent: never sent blind twice (push_checked looks first)
            def create(_: list[PushItem]) -> dict[str, str]:
                made = self._ls.webhooks.create(url=url, project=project, **wanted, request_options={"max_retries": 0})
                return {"webhook": str(made.id)}

            def find(_: list[str]) -> dict[str, str]:
                found = self._webhooks(project, url)
                return {"webhook": str(found[0].id)} if found else {}

            push_checked(create, find, [PushItem("webhook", {})], attempts=self.attempts)
            hooks = self._webhooks(project, url)
            log.info("Label Studio project %s: webhook to %s registered", project, url)
        keep, *extra = sorted(hooks, key=lambda w: int(w.id))
        for hook in extra:
            self._call(self._ls.webhooks.delete, id=int(hook.id))
        have = {"actions": sorted(keep.actions or []), "headers": keep.headers or {}, "is_active": keep.is_active,
                "send_payload": keep.send_payload, "send_for_all_actions": keep.send_for_all_actions}
        if have != {**wanted, "actions": sorted(WEBHOOK_ACTIONS)}:
            self._call(self._ls.webhooks.update, id=int(keep.id), url=url, **wanted)
            log.info("Label Studio project %s: webhook %s to %s updated", project, keep.id, url)
        return int(keep.id)

    def _webhooks(self, project: int, url: str) -> list[Any]:
        """The project's webhooks to ``url`` (a read, retried)."""
        hooks = self._call(self._ls.webhooks.list, project=str(project)) or []
        return [w for w in hooks if w.project == project and w.url == url]

    def changed_tasks(self, project: int, since: str | None, *,
                      overlap_s: float = 1.0) -> Iterator[tuple[RemoteItem, list[RemoteAnswer]]]:
        """Tasks updated after ``since`` (ISO time) less ``overlap_s``, oldest first, with their annotations.

        Keyset paging on ``(updated_at, id)`` (see the module's notes): a task edited while we
        read is read again later, never skipped.
        """
        after = None if not since else as_utc(since) - timedelta(seconds=overlap_s)
        while True:
            batch = self._task_page(project, [] if after is None else [_updated_at("greater", after)],
                                    "tasks:updated_at")
            if len(batch) < self.page_size:
                yield from (self._remote_task(project, t) for t in batch)
                return
            last = as_utc(batch[-1].updated_at)
            yield from (self._remote_task(project, t) for t in batch if as_utc(t.updated_at) < last)
            after_id = 0
            while True:  # every task at the instant ``last``, by id
                tied = self._task_page(project, [_updated_at("equal", last), {
                    "filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after_id}],
                    "tasks:id")
                yield from (self._remote_task(project, t) for t in tied)
                if len(tied) < self.page_size:
                    break
                after_id = max(int(t.id) for t in tied)
            after = last

    def _remote_task(self, project: int, task: Any) -> tuple[RemoteItem, list[RemoteAnswer]]:
        ext = (task.data or {}).get(EXTERNAL_ID_KEY)
        ext = str(ext) if ext is not None else None
        answers = []
        for a in task.annotations or []:
            a = a if isinstance(a, dict) else a.model_dump()
            user = a.get("completed_by")
            value, extra = self.answer_of(project, a.get("result"), task.data)
            answers.append(RemoteAnswer(
                remote_id=str(a["id"]), item_remote_id=str(task.id), external_id=ext, annotator=self._user(user),
                value=value, extra=extra,
                status="skipped" if a.get("was_cancelled") else "submitted",
                updated_at=utc_iso(a.get("updated_at") or a.get("created_at")), lead_time=a.get("lead_time"),
                annotator_id=None if user is None or isinstance(user, dict) else str(user)))
        return RemoteItem(str(task.id), ext, utc_iso(task.updated_at)), answers

    def _task_page(self, project: int, filters: list[dict[str, Any]], ordering: str) -> list[Any]:
        """The first page of the project's tasks (all fields) matching ``filters``, ordered by ``ordering``."""
        from label_studio_sdk.core.api_error import ApiError

        query = json.dumps({"filters": {"conjunction": "and", "items": filters}, "ordering": [ordering]})
        try:
            return list(self._call(lambda: self._ls.tasks.list(project=project, page=1, page_size=self.page_size,
                                                               fields="all", query=query).items) or [])
        except ApiError as exc:  # an empty result may answer 404, like the page after the last
            if exc.status_code == 404:
                return []
            raise

    def server_time(self) -> datetime:
        """Label Studio's clock (its HTTP ``Date`` header, 1 s resolution), immune to our clock's skew."""
        from email.utils import parsedate_to_datetime

        r = self._call(httpx.get, f"{self.url}/health", timeout=10)
        return parsedate_to_datetime(r.headers["date"]).astimezone(UTC)

    def request_more_answers(self, task_id: int | str, overlap: int) -> None:
        """Put a task back in the labeling queue until it has ``overlap`` annotations (Label
        Studio serves it to annotators who have not answered it yet)."""
        self._call(self._ls.tasks.update, id=int(task_id), overlap=overlap, is_labeled=False)

    def annotate(self, task_id: int | str, result: list[dict[str, Any]], *, completed_by: int | None = None,
                 skipped: bool = False) -> int:
        """Create an annotation (as ``completed_by``, else as the token's user); its id.

        A create is not idempotent, so it is never sent blind twice (:func:`push_checked`): the
        task's annotations are read first, and after a transient failure a new one with this
        user and result is taken as the one sent; only when none is there is it sent again.
        """
        kwargs: dict[str, Any] = {"result": result, "was_cancelled": skipped}
        if completed_by is not None:
            kwargs["completed_by"] = completed_by
        before = {a["id"] for a in self._annotations(task_id)}

        def create(_: list[PushItem]) -> dict[str, str]:
            made = self._ls.annotations.create(id=int(task_id), **kwargs, request_options={"max_retries": 0})
            return {"annotation": str(made.id)}

        def find(_: list[str]) -> dict[str, str]:
            for a in self._annotations(task_id):
                user = a.get("completed_by")
                user = user.get("id") if isinstance(user, dict) else user
                if (a["id"] not in before and a.get("result") == result and bool(a.get("was_cancelled")) == skipped
                        and (completed_by is None or user == completed_by)):
                    return {"annotation": str(a["id"])}
            return {}

        mapping = push_checked(create, find, [PushItem("annotation", {})], attempts=self.attempts)
        return int(mapping["annotation"])

    def _annotations(self, task_id: int | str) -> list[dict[str, Any]]:
        """A task's annotations, as plain dicts (a read, retried)."""
        found = self._call(self._ls.annotations.list, id=int(task_id)) or []
        return [a if isinstance(a, dict) else a.model_dump() for a in found]

    def _import(self, project: int, items: Sequence[PushItem]) -> dict[str, str]:
        """One import request, no retry: external id -> task id."""
        payload = []
        for it in items:
            task: dict[str, Any] = {"data": {**it.data, EXTERNAL_ID_KEY: it.external_id}}
            if it.result is not None:
                task["predictions"] = [{"result": it.result, "score": it.score,
                                        "model_version": it.model_version or PREDICTION_VERSION}]
            else:  # an empty one: Label Studio would otherwise ask the ML backend (see the module's notes)
                task["predictions"] = [{"result": [], "model_version": PREDICTION_VERSION}]
            payload.append(task)
        resp = self._ls.projects.import_tasks(project, request=payload, return_task_ids=True,
                                              request_options={"max_retries": 0})
        ids = list(resp.task_ids or [])
        if len(ids) != len(items):
            raise RuntimeError(f"Label Studio returned {len(ids)} task ids for {len(items)} imported tasks")
        return {it.external_id: str(tid) for it, tid in zip(items, ids)}

    def _iter_tasks(self, project: int, **kwargs: Any) -> Iterator[Any]:
        from label_studio_sdk.core.api_error import ApiError

        page = 1
        while True:
            try:
                batch = self._call(lambda page=page: self._ls.tasks.list(project=project, page=page,
                                                                         page_size=self.page_size, **kwargs).items)
            except ApiError as exc:  # the last page + 1 answers 404
                if exc.status_code == 404:
                    return
                raise
            if not batch:
                return
            yield from batch
            if len(batch) < self.page_size:
                return
            page += 1

    def _user(self, user: Any) -> str:
        if isinstance(user, dict):
            return str(user.get("email") or user.get("id"))
        if user is None:
            return "unknown"
        return self._users(int(user))


def _reason(exc: Exception) -> str:
    """An SDK error in one line: the status and body Label Studio answered, else the exception."""
    status, body = getattr(exc, "status_code", None), getattr(exc, "body", None)
    return f"HTTP {status}: {body}"[:300] if status is not None else f"{type(exc).__name__}: {exc}"[:300]


def _updated_at(operator: str, at: datetime) -> dict[str, Any]:
    """A filter on the task's ``updated_at``, in the one value format Label Studio 1.23 parses."""
    return {"filter": "filter:tasks:updated_at", "operator": operator, "type": "Datetime",
            "value": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
