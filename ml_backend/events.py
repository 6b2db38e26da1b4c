"""Spool of webhook events for the scheduler: one JSON line each, appended under a lock.

Only the action, project id, ids of what changed and the time are kept; Label Studio's payloads
carry the project's API token and are never written or logged whole.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TRAINING_ACTIONS = frozenset({
    "START_TRAINING", "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED",
    "ANNOTATIONS_DELETED", "ANNOTATION_DELETED",
})


def _id(value: Any) -> int | str | None:
    """An id as Label Studio sends it (an integer, at times a string); anything else is dropped, so
    an attacker's nested structure is never written back (``json.dumps`` of JSON nested near the
    parser's limit overflows the stack: a 500)."""
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) else None


def summarize_event(payload: dict[str, Any]) -> dict[str, Any]:
    """The parts of a Label Studio webhook body worth keeping: the action, the project's id, the ids
    of the annotations and tasks it names (at most 1000), and when it came."""
    project = payload.get("project")
    project_id = _id(project.get("id") if isinstance(project, dict) else project)
    ids: list[dict[str, int | str | None]] = []
    for key in ("annotation", "task"):
        obj = payload.get(key)
        if isinstance(obj, dict) and "id" in obj:
            ids.append({key: _id(obj["id"])})
    for key in ("annotations", "tasks"):
        objs = payload.get(key)
        if isinstance(objs, list):
            ids.extend({key[:-1]: _id(o.get("id"))} for o in objs if isinstance(o, dict))
    return {
        "action": str(payload.get("action", "")),
        "project": project_id,
        "ids": ids[:1000],
        "received_at": datetime.now(UTC).isoformat(),
    }


class EventSpool:
    """Append-only JSONL file; ``append`` is quick enough for Label Studio's 1 s webhook timeout."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(x) for x in self.path.read_text(encoding="utf-8").splitlines() if x.strip()]
