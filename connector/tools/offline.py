"""An in-memory :class:`~connector.tools.base.AnnotationTool`: the simulator's tool and the unit tests' double.

Tasks and answers live in this object; whoever plays the annotators writes answers with
``annotate`` (and removes them with ``delete_answer``). A pull returns the tasks changed since
the cursor (a count of changes seen) with all of their current answers, in the order the answers
were written, like Label Studio; with ``whole_project=True`` it returns every answer instead,
like Argilla.

A push creates one task per item every time, like Label Studio's import (``find`` returns the
newest task with a key), and goes through the same rule as Label Studio's (``push_checked``), so the faults
queued in ``push_faults`` test it: ``"after_commit"`` creates the tasks, then fails like an
answer lost on the way back (a read timeout); ``"before_commit"`` fails before creating any.

The adjudication project is one more project (the task's key and ``· adjudication``);
``per_item_overlap=False`` plays Argilla, whose items cannot be sent back one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from connector.tools.base import Pull, PushItem, RemoteAnswer, RemoteItem, adjudication_name, push_checked

if TYPE_CHECKING:
    from connector.task_spec import TaskSpec


@dataclass
class OfflineProject:
    """One project's tasks (key -> newest task id), answers (by answer id) and change log (task ids)."""

    tasks: dict[str, str] = field(default_factory=dict)
    items: dict[str, PushItem] = field(default_factory=dict)  # by task id: every task, duplicates included
    answers: dict[str, RemoteAnswer] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    updated_at: dict[str, str] = field(default_factory=dict)  # by task id
    sent_back: list[tuple[str, int, str]] = field(default_factory=list)


class OfflineTool:
    """The protocol over plain dicts; ``project`` overrides the project key (else the task's name)."""

    name = "offline"
    cursor_keys = ("changes",)

    def __init__(self, *, project: str | None = None, whole_project: bool = False, attempts: int = 3,
                 per_item_overlap: bool = True) -> None:
        self.project = project
        self.whole_project = whole_project
        self.per_item_overlap = per_item_overlap
        self.projects: dict[str, OfflineProject] = {}
        self.push_faults: list[str] = []  # "after_commit" | "before_commit", one per create call, in order
        self.creates: list[list[str]] = []  # the keys each create call was sent
        self.attempts = attempts
        self._tasks = 0

    # -- the protocol -------------------------------------------------------------------------

    def ensure_project(self, spec: TaskSpec) -> str:
        key = self.project or spec.project_name
        self.projects.setdefault(key, OfflineProject())
        return key

    def ensure_adjudication(self, spec: TaskSpec) -> str:
        key = adjudication_name(self.project or spec.project_name)
        self.projects.setdefault(key, OfflineProject())
        return key

    def push(self, project: str, items: Sequence[PushItem]) -> dict[str, str]:
        return push_checked(lambda todo: self._create(project, todo), lambda keys: self.find(project, keys), items,
                            attempts=self.attempts, wait_s=0.0)

    def find(self, project: str, external_ids: Iterable[str] | None = None) -> dict[str, str]:
        tasks = self.projects[project].tasks
        wanted = tasks if external_ids is None else external_ids
        return {e: tasks[e] for e in wanted if e in tasks}

    def pull(self, project: str, cursor: Mapping[str, str]) -> Pull:
        p = self.projects[project]
        position = len(p.changes)
        if self.whole_project:
            return Pull(list(p.answers.values()), None, {"changes": str(position)})
        changed = dict.fromkeys(p.changes[int(cursor.get("changes", 0)):])
        items = [RemoteItem(t, p.items[t].external_id if t in p.items else None, p.updated_at[t]) for t in changed]
        answers = [a for a in p.answers.values() if a.item_remote_id in changed]
        return Pull(answers, items, {"changes": str(position)})

    def send_back(self, project: str, wanted: Sequence[tuple[str, int, str]]) -> int:
        """Recorded, not acted on: whoever plays the annotators answers unsettled items itself
        (without ``per_item_overlap``, like Argilla: nothing is sent)."""
        if not self.per_item_overlap:
            return 0
        self.projects[project].sent_back.extend(wanted)
        return len(wanted)

    def delete(self, project: str, remote_ids: Iterable[str]) -> int:
        p = self.projects[project]
        gone = {str(t) for t in remote_ids} & set(p.items)
        p.answers = {k: a for k, a in p.answers.items() if a.item_remote_id not in gone}
        for t in gone:
            p.items.pop(t, None)
        p.tasks = {it.external_id: t for t, it in p.items.items()}  # the newest left with each key
        return len(gone)

    def _create(self, project: str, items: list[PushItem]) -> dict[str, str]:
        """One create call: a new task per item (a key sent twice gets two tasks), or a queued fault."""
        p = self.projects[project]
        self.creates.append([it.external_id for it in items])
        fault = self.push_faults.pop(0) if self.push_faults else None
        if fault == "before_commit":
            raise httpx.ConnectError("offline: injected, nothing created")
        mapping = {}
        for it in items:
            self._tasks += 1
            task = mapping[it.external_id] = p.tasks[it.external_id] = f"task-{self._tasks}"
            p.items[task] = it
        if fault == "after_commit":
            raise httpx.ReadTimeout("offline: injected, the tasks were created but the answer was lost")
        return mapping

    # -- the annotators' side -----------------------------------------------------------------

    def annotate(self, project: str, external_id: str, annotator: str, value: list[str], *,
                 status: str = "submitted", lead_time: float | None = None,
                 extra: dict[str, Any] | None = None) -> str:
        """Write (or overwrite) ``annotator``'s answer to the item (``extra``: a review's correction,
        rating, comment); the answer's id."""
        p = self.projects[project]
        task = p.tasks[external_id]
        now = self._touch(p, task)
        answer = RemoteAnswer(remote_id=f"{task}/{annotator}", item_remote_id=task, external_id=external_id,
                              annotator=annotator, value=list(value), status=status, updated_at=now,
                              lead_time=lead_time, annotator_id=annotator, extra=extra)
        p.answers.pop(answer.remote_id, None)  # an edited answer moves to the end, as its time does
        p.answers[answer.remote_id] = answer
        return answer.remote_id

    def delete_answer(self, project: str, answer_id: str) -> None:
        """Remove one answer (its task counts as changed)."""
        p = self.projects[project]
        answer = p.answers.pop(answer_id)
        self._touch(p, answer.item_remote_id)

    @staticmethod
    def _touch(p: OfflineProject, task: str) -> str:
        now = datetime.now(UTC).isoformat()
        p.changes.append(task)
        p.updated_at[task] = now
        return now
