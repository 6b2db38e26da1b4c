"""One interface for annotation tools, and what every tool shares: records, retries, time, user names.

A tool (Label Studio, Argilla, the in-memory ``offline`` one) implements :class:`AnnotationTool`;
the sync service speaks only to that protocol. Every id crossing it is a string: our key for an
item version (:func:`item_key`; ``PushItem.external_id``, Label Studio's ``hitl_id``, Argilla's
record ``id``), the tool's id for an item (a Label Studio task, an Argilla record: the push's
``remote_id``), the tool's id for one answer (the annotation's ``remote_id``).

A pull says which stored answers it speaks for (:class:`Pull`): Label Studio returns the tasks
changed since the cursor, each with all of its annotations, so an answer missing from a returned
task was deleted; Argilla returns every submitted response, so any stored answer missing from the
pull was deleted. The sync service does the bookkeeping once from that.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from tenacity import before_sleep_log, retry, retry_if_exception, stop_after_attempt, wait_exponential

if TYPE_CHECKING:
    from connector.task_spec import TaskSpec

log = logging.getLogger(__name__)

#: the model version every suggestion we push names in the tool (Label Studio's prediction
#: ``model_version`` and the project's, Argilla's suggestion ``agent``): one neutral name, so
#: annotators never see which version (or that a new one arrived); the store keeps the real one
SUGGESTION_VERSION = "hitl"

#: The adjudication project's read-only field: the answers in conflict, one label per line.
ANSWERS_FIELD = "hitl_answers"
ADJUDICATION_SUFFIX = " · adjudication"


def adjudication_name(project_name: str, max_length: int | None = None) -> str:
    """The adjudication project's name: the task's project name and ``· adjudication``, the
    project name cut so that the whole fits in ``max_length`` (Label Studio's titles: 50)."""
    base = project_name if max_length is None else project_name[:max(max_length - len(ADJUDICATION_SUFFIX), 1)]
    return f"{base}{ADJUDICATION_SUFFIX}"


def item_key(external_id: str, version: int) -> str:
    """The key one item version is pushed under and found by: the external id for version 1,
    ``<external id>@v<version>`` after it.

    A changed text is a new version with the same external id (``store.items``); keyed alone by
    that id, a reconcile could confirm the new version's push with the old version's task, and an
    Argilla upsert would overwrite the old version's record. Version 1 keeps the bare external id,
    so the keys of everything pushed before versions were keyed stay what they were.
    """
    return external_id if version == 1 else f"{external_id}@v{version}"


@dataclass
class PushItem:
    """One routed item to create in the tool, with the model's suggestion (Label Studio ``result``)."""

    external_id: str  # the item version's key (:func:`item_key`)
    data: dict[str, Any]
    result: list[dict[str, Any]] | None = None
    score: float | None = None
    model_version: str | None = None


@dataclass
class RemoteAnswer:
    """One annotator's answer to one item, as the tool holds it now."""

    remote_id: str  # the tool's id for the answer (annotation or response id)
    item_remote_id: str  # the tool's id for the item (task or record id)
    external_id: str | None  # our key (:func:`item_key`), where the tool carries it
    annotator: str  # a display name (email or username)
    value: list[str]
    status: str  # "submitted" | "skipped"
    updated_at: str  # ISO-8601 UTC
    lead_time: float | None = None  # seconds, where the tool measures it
    annotator_id: str | None = None  # the tool's user id
    #: what a review kind's answer gives besides its outcome (``value``): the corrected output, a
    #: rating, whether the context supported the answer, a comment (``connector.review_kinds``)
    extra: dict[str, Any] | None = None


@dataclass
class RemoteItem:
    """An item a pull returned whole: every current answer to it is among the pull's answers."""

    remote_id: str
    external_id: str | None
    updated_at: str  # ISO-8601 UTC; stamps the answers found deleted


@dataclass
class Pull:
    """What one pull returned.

    ``items``: the items whose answers are complete in ``answers`` (a stored answer to one of them
    that is not returned was deleted); ``None`` means the pull returned every answer in the
    project (a stored answer not returned was deleted). ``cursor``: the values to store after the
    answers are (keys of the tool's ``cursor_keys``; empty: leave the cursor as it is).
    """

    answers: list[RemoteAnswer]
    items: list[RemoteItem] | None = None
    cursor: dict[str, str] = field(default_factory=dict)


class AnnotationTool(Protocol):
    """What the sync service needs from an annotation tool; ``project`` is the key ``ensure_project`` gave."""

    name: str  # the store's tool name
    cursor_keys: tuple[str, ...]  # the cursor values ``pull`` reads from the store
    per_item_overlap: bool  # ``send_back`` can ask one item for one more answer (Argilla 2.8 cannot)

    def ensure_project(self, spec: TaskSpec) -> str:
        """The task's project (or dataset), created if absent; the project key the store uses."""
        ...

    def ensure_adjudication(self, spec: TaskSpec) -> str:
        """The task's adjudication project (or dataset), created if absent; its project key. It asks
        the task's question on the text, showing the answers in conflict (``ANSWERS_FIELD`` of
        each pushed item's data), and completes an item at one answer."""
        ...

    def push(self, project: str, items: Sequence[PushItem]) -> dict[str, str]:
        """Create one remote item per item, with its suggestion; external id -> remote id."""
        ...

    def find(self, project: str, external_ids: Iterable[str] | None = None) -> dict[str, str]:
        """External id -> remote id of the items already in the project (all, or those asked for)."""
        ...

    def pull(self, project: str, cursor: Mapping[str, str]) -> Pull:
        """The answers changed since ``cursor`` (the stored values of ``cursor_keys``; empty at first)."""
        ...

    def send_back(self, project: str, wanted: Sequence[tuple[str, int, str]]) -> int:
        """Ask for more answers: ``(remote id, answers wanted in all, reason)``; how many were sent."""
        ...

    def delete(self, project: str, remote_ids: Iterable[str]) -> int:
        """Delete remote items (with their answers); how many were deleted."""
        ...


# -- retries ------------------------------------------------------------------------------------

def is_transient(exc: BaseException) -> bool:
    """Worth retrying: a connection error, a timeout, or a 5xx from the server or a tool SDK.

    The SDKs raise their own errors carrying ``status_code`` (label-studio-sdk's ``ApiError``,
    argilla's ``ArgillaAPIError``); a 4xx is a bad request, which retrying cannot help.
    """
    if isinstance(exc, (httpx.TransportError, httpx.TimeoutException)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and status >= 500


def retrying(attempts: int) -> Callable[..., Any]:
    """``call(fn, *args, **kwargs)`` with exponential backoff on transient errors, one log line per retry.

    Only for calls that are safe to repeat (reads, upserts by key, updates, deletes): a transient
    failure does not say whether the server did the work. Creates go through :func:`push_checked`.
    """
    policy = retry(retry=retry_if_exception(is_transient), stop=stop_after_attempt(attempts),
                   wait=wait_exponential(multiplier=0.5, max=10), reraise=True,
                   before_sleep=before_sleep_log(log, logging.WARNING))
    return policy(lambda fn, *args, **kwargs: fn(*args, **kwargs))


def push_checked(create: Callable[[list[PushItem]], dict[str, str]],
                 find: Callable[[list[str]], dict[str, str]], items: Sequence[PushItem], *,
                 attempts: int, wait_s: float = 0.5) -> dict[str, str]:
    """Create remote items with a call that is not idempotent, never sending one blind a second time.

    ``create`` sends once (no retry of its own, the SDK's included); a transient failure (a read
    timeout, a dropped connection, a 502/504 from a proxy) does not say whether the server
    committed, so after a pause the items are looked up by key (``find``, a read, retried as
    usual): what landed is kept and only what is missing is sent again, ``attempts`` sends at
    most. Returns key -> remote id for every item; the last failure is raised when sends run out
    (the pending pushes are then reconciled by the next pass). A request still running on the
    server when we look is not seen: the pause (backoff, as ``retrying``) is what guards that.
    """
    mapping: dict[str, str] = {}
    todo = list(items)
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            mapping.update(create(todo))
            return mapping
        except Exception as exc:
            if not is_transient(exc) or attempt >= attempts:
                raise
            time.sleep(min(wait_s * 2 ** (attempt - 1), 10.0))
            landed = find([it.external_id for it in todo])
            log.warning("push of %d items failed (%s: %s); %d had landed, sending the %d missing again",
                        len(todo), type(exc).__name__, exc, len(landed), len(todo) - len(landed))
            mapping.update(landed)
            todo = [it for it in todo if it.external_id not in landed]
            if not todo:
                return mapping
    raise AssertionError("unreachable")  # the loop returns or raises


# -- time ---------------------------------------------------------------------------------------

def as_utc(value: Any) -> datetime:
    """An aware UTC datetime from a datetime or an ISO-8601 string (``Z``, an offset, or naive UTC)."""
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def utc_iso(value: Any) -> str:
    """UTC ISO-8601 with ``+00:00``, whatever form the tool used."""
    return as_utc(value).isoformat()


# -- user names ---------------------------------------------------------------------------------

class UserNames:
    """Annotator names by tool user id, each looked up once; a user the lookup cannot name keeps its id.

    ``lookup`` returns the name (or ``None``); exceptions of the types in ``tolerate`` count as
    no name, any other propagates.
    """

    def __init__(self, lookup: Callable[[str], str | None], *,
                 tolerate: tuple[type[BaseException], ...] = ()) -> None:
        self._lookup = lookup
        self._tolerate = tolerate
        self._names: dict[str, str] = {}

    def __call__(self, user_id: Hashable) -> str:
        key = str(user_id)
        if key not in self._names:
            try:
                name = self._lookup(key)
            except self._tolerate:
                name = None
            self._names[key] = str(name) if name else key
        return self._names[key]
