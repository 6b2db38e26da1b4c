"""Argilla as an :class:`~connector.tools.base.AnnotationTool`: datasets, records, responses, webhooks.

Built on the ``argilla`` SDK (2.8); every remote call goes through the shared retry policy. Our
key for an item version (``item_key``) is the record's ``id`` in the SDK (the server's
``external_id``), so logging the same item version twice updates one record instead of adding
another: the bulk upsert is idempotent, and retrying it after a lost answer is safe (checked
against the real server behind a proxy that loses the answer). The project key in the store is
the dataset's name.

Responses are pulled with a search on ``response.status`` (submitted or discarded), never on the
record's ``updated_at``: a new response bumps ``updated_at`` in the database, but the search
index keeps the old timestamp, so a filter on it misses exactly the records that changed. So a
pull returns every submitted response (a stored answer it does not return was deleted); with
``known`` (the ``updated_at`` already held per record and user), ``submitted_responses`` returns
only what is new or newer. Webhooks (``response.created``/``response.updated``) say when to pull.

The SDK's response objects carry neither the response id nor its ``updated_at``, so the pull
posts the SDK-built query through the SDK's own HTTP client and reads the server's JSON.
Webhook deliveries are signed the Standard Webhooks way: ``verify_webhook`` checks them.

Review kinds (``extraction``, ``answer``): the dataset's settings are ``review_kinds.argilla_settings``
(an ``outcome`` question instead of ``label``), the pushed result's text areas become suggestions of
the text questions of the same names, and responses are read by ``review_kinds.parse_argilla``.

Argilla 2.8 completes a record at the dataset's ``min_submitted`` and has no per-record overlap, so
an item cannot be sent back for one more answer (``per_item_overlap`` is false): the sync sends
disagreements to the task's adjudication dataset (``ensure_adjudication``: ``<dataset> ·
adjudication``, the text and the answers in conflict as fields, complete at one answer) instead.
"""

from __future__ import annotations

import binascii
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from connector.review_kinds import OUTCOME, argilla_settings, parse_argilla, suggested_texts
from connector.tools.base import (
    ANSWERS_FIELD,
    Pull,
    PushItem,
    RemoteAnswer,
    UserNames,
    adjudication_name,
    as_utc,
    retrying,
)

if TYPE_CHECKING:
    from connector.task_spec import TaskSpec

log = logging.getLogger(__name__)

QUESTION = "label"
MAX_PER_REQUEST = 500  # argilla-server's bulk upsert limit
SEARCH_PAGE = 500  # the server allows up to 1,000
PULLED_STATUSES = ("submitted", "discarded")
DELETE_PAGE = 100  # record ids per delete request (they travel in the query string)


class WebhookError(ValueError):
    """A webhook delivery whose Standard Webhooks signature is missing, malformed, stale or wrong."""


def suggested_labels(result: Any) -> list[str]:
    """The labels in a suggestion given as a string, a list of strings, or Label Studio choices."""
    if result is None:
        return []
    if isinstance(result, str):
        return [result]
    labels: list[str] = []
    for r in result:
        if isinstance(r, str):
            labels.append(r)
        elif isinstance(r, dict) and r.get("type") == "choices":
            labels.extend(r.get("value", {}).get("choices", []))
    return labels


def label_suggestions(result: Any, score: float | None,
                      questions: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(question, value, score)`` of each label suggestion in a pushed ``result`` (the labels as a
    string or a list, or Label Studio ``choices`` items, one per control), for the dataset's
    ``questions`` (name -> question). A ``choices`` item goes to the question named as its
    ``from_name``, else (one question) to ``label``. A multi-label question's value is the labels
    chosen and its score their scores, aligned (argilla-server 2.8 refuses one score for a list of
    values): each label's own score from the item's ``meta.scores``, else the item's; a single-label
    question's is its one label with the item's ``score`` (else ``score``). An empty set is not
    suggested (the server refuses an empty value)."""
    import argilla as rg

    if result is None:
        return []
    items = [r for r in result if isinstance(r, dict) and r.get("type") == "choices"] if isinstance(result, list) else []
    if not items and isinstance(result, list) and any(isinstance(r, dict) and r.get("type") == "labels" for r in result):
        return span_suggestions(result, questions)
    if not items:  # plain labels: the ``label`` question's
        labels = suggested_labels(result)
        items = [{"from_name": QUESTION, "value": {"choices": labels}}] if labels else []
    out = span_suggestions(result, questions)
    for r in items:
        name = r.get("from_name")
        if name not in questions:
            if QUESTION not in questions or len(items) > 1:
                continue
            name = QUESTION
        labels = list((r.get("value") or {}).get("choices") or [])
        if not labels:
            continue
        own = r.get("score", score)
        if isinstance(questions[name], rg.MultiLabelQuestion):
            per_label = ((r.get("meta") or {}).get("scores") or {})
            scores = [per_label.get(label, own) for label in labels]
            out.append((name, labels, None if any(s is None for s in scores) else [float(s) for s in scores]))
        else:
            out.append((name, labels[0], None if own is None else float(own)))
    return out


def span_suggestions(result: Any, questions: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(question, value, scores)`` of each span question's suggestion in a pushed ``result``: its
    Label Studio ``labels`` items gathered by ``from_name``, the value ``[{"start", "end", "label"}]``
    and the scores one per span, aligned (argilla-server 2.8 takes a list of scores for a list value,
    of the same length; ``None`` when a span has none). A question without spans gets none."""
    import argilla as rg

    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in result if isinstance(result, list) else []:
        if isinstance(r, dict) and r.get("type") == "labels" and isinstance(questions.get(r.get("from_name")),
                                                                            rg.SpanQuestion):
            by_name.setdefault(r["from_name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        value, scores = [], []
        for r in rs:
            v = r.get("value") or {}
            for label in v.get("labels") or []:
                value.append({"start": int(v["start"]), "end": int(v["end"]), "label": str(label)})
                scores.append(r.get("score"))
        if value:
            out.append((name, value, None if any(x is None for x in scores) else [float(x) for x in scores]))
    return out


def span_answer(text: str, value: Any) -> list[list[Any]]:
    """A span question's response as ``[[start, end, label], ...]``: spans outside the record's
    ``text`` dropped (Argilla's offsets are code points into the field, as Python's)."""
    from connector.spans import from_argilla

    return [[s.start, s.end, s.label] for s in from_argilla(text, value if isinstance(value, list) else [])]


def _controls(spec: TaskSpec) -> list[tuple[str, list[str], bool, str, str]] | None:
    """A task's controls as questions (``None`` for a task of one control: its question is ``label``):
    ``(name, labels, multi_label, instructions, kind)``."""
    if not spec.controls:
        return None
    return [(c.name, list(c.labels), c.multi_label, c.instructions, c.kind) for c in spec.controls]


class ArgillaTool:
    """One Argilla server and workspace; ``api_key`` belongs to an owner or admin."""

    name = "argilla"
    cursor_keys: tuple[str, ...] = ()
    per_item_overlap = False

    def __init__(self, url: str, api_key: str, *, workspace: str = "default", attempts: int = 5,
                 timeout: float = 60.0) -> None:
        import argilla as rg

        self.url = url.rstrip("/")
        self.workspace = workspace
        self._call = retrying(attempts)
        self._rg = self._call(rg.Argilla, api_url=self.url, api_key=api_key, timeout=int(timeout))
        self._users = UserNames(self._username)
        self._datasets: dict[str, Any] = {}
        self._review: dict[str, TaskSpec] = {}  # dataset name -> the task of a review kind, whose answers it reads
        self._questions: dict[str, tuple[str, list[str]]] = {}  # dataset -> (primary question, the others)
        self._span_questions: dict[str, tuple[str, set[str]]] = {}  # dataset -> (text field, span questions)

    # -- the protocol -------------------------------------------------------------------------

    def ensure_project(self, spec: TaskSpec) -> str:
        """The task's dataset (see ``ensure_dataset``; a review kind's: ``review_kinds.argilla_settings``),
        min_submitted = the task's overlap; its name."""
        from connector.labeling_config import first_text_control

        if spec.kind != "label":
            return self._ensure_review(spec, spec.project_name, min_submitted=spec.overlap)
        control = first_text_control(spec.label_config())
        self.ensure_dataset(spec.project_name, text_field=control.data_key, labels=list(spec.labels),
                            multi_label=spec.multi_label, instructions=spec.instructions, min_submitted=spec.overlap,
                            controls=_controls(spec))
        return spec.project_name

    def ensure_adjudication(self, spec: TaskSpec) -> str:
        """The task's adjudication dataset (``<dataset> · adjudication``): the text, the answers in
        conflict (``ANSWERS_FIELD``), the task's question, complete at one answer; its name."""
        from connector.labeling_config import first_text_control

        name = adjudication_name(spec.project_name)
        if spec.kind != "label":
            return self._ensure_review(spec, name, min_submitted=1, extra_fields={ANSWERS_FIELD: "Answers so far"})
        control = first_text_control(spec.label_config())
        instructions = "The answers so far disagree: give the final label." + (
            f" {spec.instructions}" if spec.instructions else "")
        self.ensure_dataset(name, text_field=control.data_key, labels=list(spec.labels),
                            multi_label=spec.multi_label, instructions=instructions, min_submitted=1,
                            extra_fields={ANSWERS_FIELD: "Answers so far"}, controls=_controls(spec))
        return name

    def _ensure_review(self, spec: TaskSpec, name: str, *, min_submitted: int,
                       extra_fields: Mapping[str, str] | None = None) -> str:
        """A review kind's dataset, noted so that its responses are read by the kind's form."""
        self._ensure(name, lambda: argilla_settings(spec, min_submitted=min_submitted, extra_fields=extra_fields,
                                                       client=self._rg),
                     OUTCOME)
        self._review[name] = spec
        return name

    def push(self, project: str, items: Sequence[PushItem]) -> dict[str, str]:
        """Upsert one record per item (by external id), with its suggestion; external id -> record id.

        ``data`` holds the dataset's fields (the text field; the adjudication dataset's answers too)
        and keys named like the dataset's metadata properties, which go to metadata; ``result`` is
        the suggested label or labels (a string, a list, or Label Studio choices), with ``score``
        its confidence (a review kind's dataset: Label Studio text areas, each the suggestion of
        the text question of its name); an item may carry a ``metadata`` dict too. Nothing else is added:
        annotators see the record's fields and, when there is one, the suggestion. At most 500
        records go in one request; logging an item again updates its record.
        """
        import argilla as rg

        dataset = self.dataset(project)
        field_names = [f.name for f in dataset.settings.fields]
        metadata_names = {m.name for m in dataset.settings.metadata}
        questions = {q.name: q for q in dataset.settings.questions}
        review = project in self._review or (OUTCOME in questions and QUESTION not in questions
                                             and project not in self._questions)
        items = list(items)
        mapping: dict[str, str] = {}
        for start in range(0, len(items), MAX_PER_REQUEST):
            models = []
            for it in items[start:start + MAX_PER_REQUEST]:
                data = dict(it.data)
                metadata = {k: data.pop(k) for k in list(data) if k in metadata_names}
                metadata.update(getattr(it, "metadata", None) or {})
                metadata = {k: v for k, v in metadata.items() if v is not None}
                suggestions = []
                if review:  # a review kind: the editable texts, pre-filled
                    suggestions = [rg.Suggestion(name, text, score=it.score, agent=it.model_version)
                                   for name, text in suggested_texts(it.result).items() if name in questions]
                else:
                    suggestions = [rg.Suggestion(name, value, score=score, agent=it.model_version)
                                   for name, value, score in label_suggestions(it.result, it.score, questions)]
                fields = {name: data[name] for name in field_names if name in data}
                fields[field_names[0]] = data[field_names[0]]  # the text: required
                record = rg.Record(id=it.external_id, fields=fields, metadata=metadata, suggestions=suggestions)
                record.dataset = dataset  # suggestions resolve their question id through it
                models.append(record.api_model())
            upserted, _ = self._call(self._rg.api.records.bulk_upsert, dataset.id, models)
            mapping.update({str(m.external_id): str(m.id) for m in upserted})
        missing = [it.external_id for it in items if it.external_id not in mapping]
        if missing:
            raise RuntimeError(f"Argilla returned no record for {len(missing)} logged items, e.g. {missing[:3]}")
        return mapping

    def find(self, project: str, external_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Our external ids -> record ids in the dataset (all of them, or only those asked for)."""
        import argilla as rg

        dataset = self.dataset(project)
        if external_ids is None:
            records = self._call(lambda: list(dataset.records(with_suggestions=False, with_responses=False)))
            return {str(r.id): str(r._server_id) for r in records}
        wanted = list(dict.fromkeys(external_ids))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), SEARCH_PAGE):
            query = rg.Query(filter=rg.Filter([("id", "in", wanted[start:start + SEARCH_PAGE])]))
            for raw in self._search(dataset, query, include=()):
                found[str(raw["external_id"])] = str(raw["id"])
        return found

    def pull(self, project: str, cursor: Mapping[str, str]) -> Pull:
        """Every submitted or discarded response: a stored answer not among them was deleted."""
        return Pull(self.submitted_responses(project), items=None)

    def send_back(self, project: str, wanted: Sequence[tuple[str, int, str]]) -> int:
        """Argilla 2.8 completes a record at the dataset's ``min_submitted`` and has no per-record
        setting to ask for one more answer. A review dataset's record whose correction was refused
        (reason ``correction_invalid``) is reopened: its submitted responses are deleted (our store
        keeps them, and the refusal is on the item's history), so the record is pending again and
        back in the reviewers' queue. Anything else is not sent: disagreements go to the
        adjudication dataset instead (the sync does it); what is left here (too few answers, skips)
        stays unsettled, its label row says why, and is listed in the log; raise the task's
        ``overlap`` to ask for more."""
        reopen = [w for w in wanted if project in self._review and w[2] == "correction_invalid"]
        rest = [w for w in wanted if w not in reopen]
        for record_id, _, _ in reopen:
            self._call(self._reopen, record_id)
        if rest:
            log.warning("%d Argilla records need more answers (e.g. record %s: %s); Argilla has no per-record "
                        "overlap: raise the task's overlap", len(rest), rest[0][0], rest[0][2])
        return len(reopen)

    def _reopen(self, record_id: str) -> None:
        """Delete the record's submitted responses (idempotent: a response already gone is skipped)."""
        got = self._rg.http_client.get(f"/api/v1/records/{record_id}")
        got.raise_for_status()
        for response in got.json().get("responses") or []:
            if response.get("status") == "submitted":
                gone = self._rg.http_client.delete(f"/api/v1/responses/{response['id']}")
                if gone.status_code != 404:
                    gone.raise_for_status()

    def delete(self, project: str, remote_ids: Iterable[str]) -> int:
        """Delete records (with their responses and suggestions) by record id; how many went."""
        ids = [str(i) for i in remote_ids]
        if not ids:
            return 0
        dataset = self.dataset(project)
        for start in range(0, len(ids), DELETE_PAGE):

            def delete(chunk: list[str] = ids[start:start + DELETE_PAGE]) -> None:
                resp = self._rg.http_client.delete(f"/api/v1/datasets/{dataset.id}/records",
                                                   params={"ids": ",".join(chunk)})
                resp.raise_for_status()

            self._call(delete)
        return len(ids)

    # -- Argilla's own calls --------------------------------------------------------------------

    def dataset(self, project: str) -> Any:
        """The SDK dataset behind a project key (``ensure_project`` or ``ensure_dataset`` made it known)."""
        if project not in self._datasets:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = self._call(self._rg.datasets, name=project, workspace=self.workspace)
            if found is None:
                raise KeyError(f"no Argilla dataset {project!r} in workspace {self.workspace!r}")
            self._datasets[project] = found
        return self._datasets[project]

    def ensure_dataset(self, name: str, *, text_field: str, labels: list[str], multi_label: bool = False,
                       instructions: str = "", min_submitted: int = 1,
                       extra_fields: Mapping[str, str] | None = None,
                       controls: Sequence[tuple[str, list[str], bool, str] | tuple[str, list[str], bool, str, str]]
                       | None = None) -> Any:
        """The dataset called ``name`` in the workspace, created (and the workspace too) if absent.

        Settings: one text field (then ``extra_fields``: name -> title, more text fields), one
        required question ``label`` (single or multi label), no metadata (annotators see metadata:
        why a record was sent stays in our store), and a task distribution that completes a record
        after ``min_submitted`` submitted responses. ``controls`` (a task of several controls:
        ``(name, labels, multi_label, instructions)``, the primary first) asks one question per
        control instead, named as the control; the first is required, the others are not (an
        annotator may leave one out; a multi-label one left empty means no label applies); a fifth
        element ``"spans"`` makes it a ``SpanQuestion`` on the text field (no overlapping spans).
        An existing dataset is reused as it is, after checking that it has the first question;
        one left unpublished by an interrupted creation is deleted and made again.
        """
        import argilla as rg

        specs = list(controls) if controls else [(QUESTION, list(labels), multi_label, instructions)]

        def question(k: int, name: str, labels: list[str], multi: bool, note: str, kind: str = "choices") -> Any:
            if kind == "spans":
                return rg.SpanQuestion(name=name, field=text_field, labels=list(labels), allow_overlapping=False,
                                       description=note or instructions or None, required=k == 0)
            cls = rg.MultiLabelQuestion if multi else rg.LabelQuestion
            return cls(name=name, labels=list(labels), description=note or instructions or None, required=k == 0)

        span_names = {c[0] for c in specs if len(c) > 4 and c[4] == "spans"}
        # a span question's answer is read into extra["controls"], the primary one's too (an NER dataset)
        self._questions[name] = (specs[0][0], [c[0] for c in specs[1:]] + [specs[0][0]] * (specs[0][0] in span_names))
        self._span_questions[name] = (text_field, span_names)
        return self._ensure(name, lambda: rg.Settings(
            guidelines=instructions or None,
            fields=[rg.TextField(name=text_field),
                    *(rg.TextField(name=n, title=title) for n, title in (extra_fields or {}).items())],
            questions=[question(k, *c) for k, c in enumerate(specs)],
            distribution=rg.TaskDistribution(min_submitted=min_submitted),
        ), specs[0][0])

    def _ensure(self, name: str, settings: Callable[[], Any], question: str) -> Any:
        """The dataset ``name``, created with ``settings()`` if absent; an existing one must have ``question``."""
        import argilla as rg

        with warnings.catch_warnings():  # the SDK warns when the dataset is not found
            warnings.simplefilter("ignore")
            existing = self._call(self._rg.datasets, name=name, workspace=self._ensure_workspace())
        if existing is not None and getattr(existing._model, "status", "ready") != "ready":
            # a creation cut short (the SDK rolls back on an exception, not on SIGKILL) leaves a draft
            # without its search index; a draft holds no records, so it is made again
            log.warning("Argilla dataset %r was left unpublished by an interrupted creation; creating it again", name)
            self._call(existing.delete)
            existing = None
        if existing is not None:
            if question not in [q.name for q in existing.settings.questions]:
                raise ValueError(f"Argilla dataset {name!r} exists without a {question!r} question")
            self._datasets[name] = existing
            return existing
        dataset = rg.Dataset(name=name, workspace=self.workspace, settings=settings(), client=self._rg)
        self._call(dataset.create)
        log.info("created Argilla dataset %r in workspace %r", name, self.workspace)
        self._datasets[name] = dataset
        return dataset

    def submitted_responses(self, project: str,
                            known: Mapping[tuple[str, str], str] | None = None) -> list[RemoteAnswer]:
        """Submitted and discarded responses, oldest record first; with ``known``, only new or changed ones.

        ``known`` maps (record external id, user id) to the ``updated_at`` already stored for that
        response; a response is returned when its pair is absent or its ``updated_at`` is newer.
        Drafts are never returned.
        """
        import argilla as rg

        dataset = self.dataset(project)
        review = self._review.get(project)
        primary, others = self._questions.get(project, (QUESTION, []))
        if review is None and primary not in [q.name for q in dataset.settings.questions]:
            raise RuntimeError(f"Argilla dataset {project!r} is a review dataset: ensure_project(spec) first, so "
                               "that its responses are read by the task's form")
        query = rg.Query(filter=rg.Filter([("response.status", "in", list(PULLED_STATUSES))]))
        known_at = {k: as_utc(v) for k, v in (known or {}).items()}
        answers: list[RemoteAnswer] = []
        for raw in self._search(dataset, query, include=("responses",)):
            external_id = raw.get("external_id")
            for resp in raw.get("responses") or []:
                if resp.get("status") not in PULLED_STATUSES:
                    continue
                user_id = str(resp["user_id"])
                updated = as_utc(resp.get("updated_at") or resp.get("inserted_at"))
                seen = known_at.get((str(external_id), user_id))
                if seen is not None and updated <= seen:
                    continue
                if review is None:
                    values = resp.get("values") or {}
                    field, span_names = self._span_questions.get(project, ("", set()))
                    value = [] if primary in span_names else suggested_labels((values.get(primary) or {}).get("value"))
                    text = str((raw.get("fields") or {}).get(field) or "")
                    extra = {"controls": {name: span_answer(text, (values.get(name) or {}).get("value"))
                                          if name in span_names else
                                          suggested_labels((values.get(name) or {}).get("value"))
                                          for name in others}} if others else None
                else:
                    value, extra = parse_argilla(review, resp.get("values"), raw.get("fields"))
                answers.append(RemoteAnswer(
                    remote_id=str(resp["id"]), item_remote_id=str(raw["id"]),
                    external_id=str(external_id) if external_id is not None else None,
                    annotator=self._users(user_id), value=value, extra=extra,
                    status="skipped" if resp["status"] == "discarded" else "submitted",
                    updated_at=updated.isoformat(), annotator_id=user_id))
        return answers

    def _ensure_workspace(self) -> str:
        import argilla as rg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = self._call(self._rg.workspaces, self.workspace)
        if found is None:
            self._call(rg.Workspace(name=self.workspace, client=self._rg).create)
            log.info("created Argilla workspace %r", self.workspace)
        return self.workspace

    def _search(self, dataset: Any, query: Any, *, include: tuple[str, ...]) -> Iterator[dict[str, Any]]:
        """Raw records matching an SDK query, page by page in a stable order (by record id)."""
        body = query.api_model().model_dump(by_alias=True)
        body["sort"] = [{"scope": {"entity": "record", "property": "id"}, "order": "asc"}]
        offset = 0
        while True:
            params = {"offset": offset, "limit": SEARCH_PAGE, "include": list(include)}

            def page(params: dict[str, Any] = params) -> dict[str, Any]:
                resp = self._rg.http_client.post(f"/api/v1/datasets/{dataset.id}/records/search", json=body,
                                                 params=params)
                resp.raise_for_status()
                return resp.json()

            answer = self._call(page)
            items = answer.get("items") or []
            for item in items:
                yield item["record"]
            offset += len(items)
            if not items or offset >= int(answer.get("total", 0)):
                return

    def _username(self, user_id: str) -> str | None:
        user = self._call(self._rg.users, id=user_id)
        return user.username if user is not None else None


def verify_webhook(secret: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """Check a delivery's Standard Webhooks signature against the raw ``body``; the parsed JSON payload.

    ``secret`` is the webhook's secret as Argilla shows it (``whsec_…``). Raises ``WebhookError``
    when a header is missing, the timestamp is more than 5 minutes off, or no signature matches.
    """
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    try:
        return Webhook(secret).verify(body, dict(headers))
    except (WebhookVerificationError, ValueError, binascii.Error) as exc:
        raise WebhookError(f"webhook rejected: {exc}") from exc
