"""The labelled set's export with the task: :func:`connector.export.export_rows` given the task file
(label sets exported as lists) and its other controls' settled values, which settle from the stored
answers (:func:`sync.controls.settle_control`) by the task's consensus policy, as the consolidation
and the retraining settle them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connector.consolidation import ConsensusPolicy
from connector.export import ExportRow, Only, export_rows
from connector.store import StateStore
from connector.task_spec import TaskSpec
from sync.adjudication import split_answers
from sync.controls import settle_control
from sync.jobs import consensus_policy


def settled_controls(store: StateStore, spec: TaskSpec, policy: ConsensusPolicy | None = None
                     ) -> dict[int, dict[str, Any]]:
    """Item id -> {control name: its settled value} for the task's other controls (a label, a
    sorted list of labels, or spans ``[[start, end, label], ...]``); items with none left out. The
    adjudicators' answers are left out, as the consolidation of the other controls leaves them."""
    if spec.kind != "label" or not spec.secondary:
        return {}
    if policy is None:
        policy = consensus_policy(spec)
    ordinary, _ = split_answers(store, store.annotations.list())
    out: dict[int, dict[str, Any]] = {}
    for control in spec.secondary:
        for item_id, value in settle_control(ordinary, spec, control, policy).items():
            out.setdefault(item_id, {})[control.name] = sorted(value) if control.multi_label else value
    return out


def task_export_rows(store: StateStore, spec: TaskSpec | None, *, only: Only = "settled",
                     since: datetime | None = None) -> list[ExportRow]:
    """:func:`connector.export.export_rows` for the task ``spec`` (``None``: without a task file, as
    the export always was)."""
    if spec is None:
        return export_rows(store, only=only, since=since)
    return export_rows(store, only=only, since=since, spec=spec, controls=settled_controls(store, spec))
