"""Random SIGKILLs, 50 per tool and direction, PostgreSQL as the state store, counted in the tool.

``test_kill_points.py`` kills at chosen windows; here the kills land wherever they land, many times,
while the tool keeps changing:

- **push**: before each round a few new items are ingested, then ``hitl sync push`` (predict, route,
  push in batches of 3) is SIGKILLed at a random instant of its work. The tool is reached through a
  :class:`FaultProxy` that holds each create's answer 0.4 s after the server committed it, so some
  kills land with a batch in the tool and still pending in the store; the next run's reconcile must
  confirm it (and says so in its log: at least one such reconcile per tool is required).
- **pull**: while ``hitl sync pull`` runs, annotators answer new tasks and edit earlier answers in
  the tool, and more tasks change than one page holds (pages of 5); the pull is killed at random.

Each kill is real (SIGKILL of a forked child, :mod:`tests.support.fork_runner`: the children start
warm, so the instants fall in the work rather than in the imports). Then one clean pass, and the
tool is read whole through its own API: nothing doubled (each item once in the tool), nothing lost
(every answer in the tool is in the store once, with its latest value).
"""

from __future__ import annotations

import os
import random
import re
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import text

from connector.tools.base import item_key
from tests.support.fault_proxy import FaultProxy
from tests.support.fork_runner import ForkRunner
from tests.support.workspaces import KILLED, make_workspace

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("HITL_RANDOM_KILLS", "50"))
LOCKED = 75  # the sync lock was still held (a killed child's connection not yet gone): not a kill
RECONCILED = re.compile(r"reconciled \d+ pending pushes: \{[^}]*'confirmed': [1-9]")
CREATES = {"label_studio": ("POST", r"^/api/projects/\d+/import"),
           "argilla": ("PUT", r"^/api/v1/datasets/[^/]+/records/bulk")}


def _choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


@dataclass
class Killer:
    """Runs a command in forked children and SIGKILLs each at a random instant of its usual duration."""

    runner: ForkRunner
    logs: Path
    rng: random.Random
    durations: list[float] = field(default_factory=list)
    kills: int = 0
    rounds: int = 0

    def run(self, args: list[str]) -> int:
        """One run to its end (a clean pass); its exit code, its duration kept for the next delays."""
        t0 = time.monotonic()
        code = self.runner.wait(self.runner.start(args, self._log()))
        if code == 0:
            self.durations.append(time.monotonic() - t0)
        return code

    def clean(self, args: list[str]) -> None:
        for _ in range(20):
            code = self.run(args)
            if code != LOCKED:
                assert code == 0, self.output()[-3000:]
                return
            time.sleep(0.5)
        raise AssertionError("the sync lock stayed held")

    def round(self, args: list[str], during: Callable[[threading.Event], None] | None = None) -> int:
        """Start ``args``, run ``during`` beside it, SIGKILL it after a random part of its usual duration."""
        self.rounds += 1
        usual = statistics.median(self.durations[-9:])
        delay = self.rng.uniform(0.0, usual)
        stop = threading.Event()
        t0 = time.monotonic()
        pid = self.runner.start(args, self._log())
        side = threading.Thread(target=during, args=(stop,)) if during else None
        if side:
            side.start()
        code = None
        while code is None and time.monotonic() - t0 < delay:  # ended before its instant: a run, not a kill
            time.sleep(0.01)
            code = self.runner.poll(pid)
        if code is None:
            os.kill(pid, signal.SIGKILL)  # not reaped yet (at worst a zombie): never another process
            code = self.runner.wait(pid)
        elif code == 0:
            self.durations.append(time.monotonic() - t0)
        stop.set()
        if side:
            side.join(60)
        if code == KILLED:
            self.kills += 1
        else:
            assert code in (0, LOCKED), self.output()[-3000:]
        return code

    def _log(self) -> Path:
        return self.logs / f"run-{self.rounds:03d}-{uuid.uuid4().hex[:6]}.log"

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("run-*.log")))


def _kill_until_done(killer: Killer, args: list[str], before_round: Callable[[], None] | None = None,
                     during: Callable[[threading.Event], None] | None = None) -> None:
    while killer.kills < KILLS:
        assert killer.rounds < 4 * KILLS, f"only {killer.kills} kills in {killer.rounds} rounds"
        if before_round:
            before_round()
        killer.round(args, during)


# -- the tools, read through their own APIs -----------------------------------------------------------


class LabelStudioSide:
    def __init__(self, server, name: str) -> None:
        from connector.tools.label_studio import LabelStudioTool

        self.client = LabelStudioTool(server.url, server.token)
        self.name = name

    @property
    def project(self) -> str:
        return str(self.client.project_id(self.name, "<View/>"))

    def keys(self) -> list[str]:
        """Our key of every task in the project, duplicates kept."""
        return [t.data["hitl_id"] for t in self.client._iter_tasks(int(self.project), include="id,data")]

    def annotators(self, n: int) -> list:
        tag = uuid.uuid4().hex[:8]
        return [self.client._ls.users.create(username=f"rk-{k}-{tag}", email=f"rk-{k}-{tag}@example.com",
                                             password="pw-123456789") for k in range(n)]

    def tasks(self) -> list[str]:
        return sorted(self.client.find(self.project).values())

    def answer(self, task: str, user, label: str) -> str:
        return str(self.client.annotate(task, _choice(label), completed_by=user.id))

    def edit(self, answer_id: str, label: str) -> None:
        self.client._ls.annotations.update(id=int(answer_id), result=_choice(label))

    def answers(self) -> dict[str, tuple[str, ...]]:
        """Every annotation in the project: id -> chosen labels."""
        out = {}
        for t in self.client._iter_tasks(int(self.project), fields="all"):
            for a in t.annotations or []:
                a = a if isinstance(a, dict) else a.model_dump()
                out[str(a["id"])] = tuple(a["result"][0]["value"]["choices"])
        return out


class ArgillaSide:
    def __init__(self, server, name: str) -> None:
        from connector.tools.argilla import ArgillaTool

        self.server = server
        self.client = ArgillaTool(server.url, server.api_key)
        self.name = name
        self.project = name

    def _records(self, **kwargs) -> list:
        return list(self.client.dataset(self.name).records(**kwargs))

    def keys(self) -> list[str]:
        return [str(r.id) for r in self._records(with_suggestions=False, with_responses=False)]

    def annotators(self, n: int) -> list:
        from tests.integration.test_argilla_client import _annotator

        workspace = self.client.dataset(self.name).workspace.name
        tag = uuid.uuid4().hex[:8]
        return [_annotator(self.client, self.server.url, f"rk-{k}-{tag}", workspace) for k in range(n)]

    def tasks(self) -> list[str]:
        return sorted(self.client.find(self.name).values())

    def answer(self, task: str, user, label: str) -> str:
        from tests.integration.test_argilla_client import _submit

        annotator, rg_client = user
        return str(_submit(rg_client, task, label, annotator.id)["id"])

    def edit(self, answer_id: str, label: str) -> None:
        resp = self.client._rg.http_client.put(f"/api/v1/responses/{answer_id}",
                                               json={"values": {"label": {"value": label}}, "status": "submitted"})
        resp.raise_for_status()

    def answers(self) -> dict[str, tuple[str, ...]]:
        """Every response in the dataset, from its records list (the database, not the search engine
        our pull reads): id -> chosen labels."""
        dataset_id = self.client.dataset(self.name).id
        resp = self.client._rg.http_client.get(f"/api/v1/datasets/{dataset_id}/records",
                                               params={"include": "responses", "limit": 1000})
        resp.raise_for_status()
        records = resp.json()["items"]
        assert len(records) < 1000
        return {str(r["id"]): (r["values"]["label"]["value"],) for rec in records for r in rec.get("responses") or []}


def _side(tool: str, request, name: str):
    server = request.getfixturevalue(tool if tool == "label_studio" else "argilla")
    return server, (LabelStudioSide if tool == "label_studio" else ArgillaSide)(server, name)


def _key(server, tool: str) -> str:
    return server.token if tool == "label_studio" else server.api_key


# -- push ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["label_studio", "argilla"])
def test_push_killed_50_times_at_random_leaves_every_item_once_in_the_tool(
        tool, request, tmp_path, postgres_cluster, backend, rt_sample):
    server = request.getfixturevalue(tool if tool == "label_studio" else "argilla")
    texts = iter(rt_sample[0])
    with FaultProxy(server.url) as proxy:
        proxy.delay(*CREATES[tool], 0.4)  # the answer to a committed create comes late
        ws = make_workspace(tmp_path, postgres_cluster, backend, [next(texts) for _ in range(6)], tool=tool,
                            url=proxy.url, api_key=_key(server, tool), prefix=f"rk-push-{tool[:2]}", push_batch=3)
        _, side = _side(tool, request, ws.name)
        added = iter(range(6, 10_000))

        def new_items() -> None:
            with ws.store() as store:
                store.items.ingest([{"id": f"new-{next(added)}", "text": next(texts)} for _ in range(4)])

        with ForkRunner(ws.env) as runner:
            killer = Killer(runner, tmp_path, random.Random(f"push {tool}"))
            killer.clean(["sync", "push"])  # the usual duration, measured
            _kill_until_done(killer, ["sync", "push"], before_round=new_items)
            killer.clean(["sync", "push"])
        log = killer.output()

    in_tool = side.keys()  # counted in the tool
    with ws.store() as store:
        pushed = store.items.list(state="pushed")
        remote = store.pushes.remote_ids([it.id for it in pushed], tool, side.project)
        assert store.pushes.pending(tool, side.project) == []
        assert store.decisions.routed(action="review") == []
        n_items, states = len(store.items.list()), store.items.counts_by_state()
    dup = [k for k, n in Counter(in_tool).items() if n > 1]
    assert dup == [], f"{len(dup)} items twice in {tool}"  # nothing doubled
    assert sorted(in_tool) == sorted(item_key(it.external_id, it.version) for it in pushed)  # nothing lost
    assert len(pushed) == len(remote) and n_items >= 6 + 4 * KILLS
    assert states["ingested"] == states["predicted"] == 0  # every item routed: pushed, or auto-accepted
    assert len(pushed) > n_items / 2
    assert killer.kills == KILLS
    assert RECONCILED.search(log), "no reconcile confirmed an in-flight batch"


# -- pull ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["label_studio", "argilla"])
def test_pull_killed_50_times_at_random_while_answers_arrive_and_change_loses_and_doubles_nothing(
        tool, request, tmp_path, postgres_cluster, backend, rt_sample):
    server = request.getfixturevalue(tool if tool == "label_studio" else "argilla")
    ws = make_workspace(tmp_path, postgres_cluster, backend, rt_sample[0][100:140], tool=tool, url=server.url,
                        api_key=_key(server, tool), prefix=f"rk-pull-{tool[:2]}", push_batch=50)
    ws.hitl("sync", "push")
    _, side = _side(tool, request, ws.name)
    tasks = side.tasks()
    assert len(tasks) == 40
    users = side.annotators(2)
    rng = random.Random(f"pull {tool}")
    open_pairs = [(t, k) for t in tasks for k in range(2)]
    rng.shuffle(open_pairs)
    made: list[str] = []
    lock = threading.Lock()

    def annotators_at_work(stop: threading.Event) -> None:
        """New answers and edits of earlier ones, while the pull runs."""
        for _ in range(3):
            if stop.is_set():
                return
            with lock:
                if open_pairs and (not made or rng.random() < 0.6):
                    task, k = open_pairs.pop()
                    made.append(side.answer(task, users[k], rng.choice(["fresh", "rotten"])))
                else:
                    side.edit(rng.choice(made), rng.choice(["fresh", "rotten"]))
            time.sleep(rng.uniform(0.0, 0.2))

    for _ in range(12):  # more changed tasks than one page before the first pull
        annotators_at_work(threading.Event())
    pages = {"HITL_KILL_LS_PAGE_SIZE": "5", "HITL_KILL_ARGILLA_PAGE_SIZE": "5"}
    with ForkRunner({**ws.env, **pages}) as runner:
        killer = Killer(runner, tmp_path, random.Random(f"kills {tool}"))
        killer.clean(["sync", "pull"])
        _kill_until_done(killer, ["sync", "pull"], during=annotators_at_work)
        killer.clean(["sync", "pull"])

    in_tool = side.answers()  # counted in the tool
    with ws.store() as store:
        stored = store.annotations.list(tool=tool, project=side.project)
        with store.engine.connect() as conn:
            rows = conn.execute(text("SELECT count(*) FROM annotations")).scalar_one()
    assert killer.kills == KILLS and len(in_tool) >= 20  # answers on more than four pages
    assert rows == len(stored) == len(in_tool)  # each answer once
    assert {a.remote_id: tuple(a.value) for a in stored} == in_tool  # none lost, each with its latest value
    assert {a.status for a in stored} == {"submitted"}
