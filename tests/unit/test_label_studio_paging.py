"""The Label Studio pull's keyset paging against a fake tasks API that honours the filters Label
Studio 1.23 applies (``updated_at`` greater/equal, ``id`` greater, one ordering key, ties in any
order): many tasks at one instant, more than a page, are each read once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from connector.tools.label_studio import LabelStudioTool

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class FakeTasks:
    def __init__(self, tasks: list[SimpleNamespace]) -> None:
        self.tasks = tasks
        self.calls = 0

    def list(self, *, project, page, page_size, fields, query):
        self.calls += 1
        q = json.loads(query)
        rows = list(self.tasks)
        for f in q["filters"]["items"]:
            key = f["filter"].rsplit(":", 1)[1]
            value = (datetime.strptime(f["value"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
                     if f["type"] == "Datetime" else float(f["value"]))
            test = {"greater": lambda v, x=value: v > x, "equal": lambda v, x=value: v == x}[f["operator"]]
            rows = [t for t in rows if test(getattr(t, key))]
        (order,) = q["ordering"]  # Label Studio honours the first key only; ties come in any order
        rows.sort(key=lambda t: (getattr(t, order.split(":")[1]), (t.id * 37 + self.calls * 11) % 13))
        return SimpleNamespace(items=rows[(page - 1) * page_size:page * page_size])


def test_more_tied_tasks_than_a_page_are_each_read_once_in_keyset_order():
    tasks = [SimpleNamespace(id=i, data={"hitl_id": f"e{i}"}, annotations=[],
                             updated_at=T0 + timedelta(seconds=0 if i <= 7 else i)) for i in range(1, 11)]
    tool = LabelStudioTool("http://127.0.0.1:1", "token", page_size=3)
    tool._ls = SimpleNamespace(tasks=FakeTasks(tasks))
    read = [item.external_id for item, _ in tool.changed_tasks(1, None)]
    assert sorted(read) == sorted(f"e{i}" for i in range(1, 11)) and len(read) == 10  # each once
    assert read[-3:] == ["e8", "e9", "e10"]
    since = (T0 + timedelta(seconds=8)).isoformat()
    assert [item.external_id for item, _ in tool.changed_tasks(1, since, overlap_s=0.0)] == ["e9", "e10"]
