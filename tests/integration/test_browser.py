"""What an annotator sees and does, in a real browser, on the Label Studio that ``hitl up`` started.

Headless Chromium (Debian's ``chromium``, driven by Playwright with ``executable_path``: no browser
download) logs in with the stack's credentials, works through the labelling stream and opens a gold
item from the Data Manager. Asserted as a person sees it: the text; the model's label pre-selected
on an item shown with a suggestion, nothing pre-selected on the others (a gold item above all, also
where Label Studio would otherwise ask the registered ML backend for one); no word of why an item
was sent; and each submitted answer in our store within one sync interval (the scheduler's pull,
no manual ``hitl sync pull``). Screenshots of each view go to the test's tmp dir.

The gold item is ingested (``hitl ingest``, ``is_gold``/``gold_label``) before ``hitl up``, with
``gold_rate`` in the demo's task file, so the router draws it into the first batch as it would in
production: no push by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.label_studio import LabelStudioTool
from hitl.local import stack
from hitl.local.processes import free_port
from sync.service import SyncService
from tests.integration.test_make_up import ROOT, _hitl, _wait

pytestmark = pytest.mark.slow

SYNC_INTERVAL_S = 5.0
MARGIN_S = 10.0  # one sync pass (route, push the next batch, pull) on a busy 2-core machine
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# why an item was sent, as the store names it or as a person would write it: never on screen
ROUTING_WORDS = re.compile(r"reason|audit|gold|priority|active.learning|spot.check|uncertain|over.budget|"
                           r"is_gold|hitl_id", re.IGNORECASE)
GOLD = {"id": "rt-90001", "text": "A warm, funny and beautifully acted film that earns every one of its tears.",
        "is_gold": True, "gold_label": "fresh"}
SUBMIT = "button[aria-label='Submit current annotation']"


@dataclass
class Stack:
    url: str
    username: str
    password: str
    project: int
    db: Path
    spec: TaskSpec
    tool: LabelStudioTool


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium; fails (never skips) when it is missing: CI installs it."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)", pytrace=False)
    return path


@pytest.fixture(scope="module")
def demo(chromium, tmp_path_factory):
    """``hitl up`` on free ports in a temporary var dir, with one gold item among the demo's snippets."""
    base = tmp_path_factory.mktemp("browser")
    var = base / "var"
    var.mkdir()
    ports = {"HITL_LS_PORT": free_port(), "HITL_BACKEND_PORT": free_port(), "HITL_SYNC_PORT": free_port()}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HITL_VAR_DIR": str(var), "HITL_BATCH": "10",
           "HITL_SYNC_INTERVAL_S": str(SYNC_INTERVAL_S), **{k: str(v) for k, v in ports.items()}}
    env.pop("HITL_DB_URL", None)
    task = var / "task.toml"  # the demo's own task file (`hitl up` keeps it), gold mixed into each batch
    task.write_text(stack.TASK_TOML.format(title=stack.DEMO_TITLE, tool="label_studio", ls_port=ports["HITL_LS_PORT"],
                                           argilla_port=free_port(), batch=10, min_new_labels=20)
                    .replace("[routing]\n", "[routing]\ngold_rate = 0.1\n"))
    (base / "gold.jsonl").write_text(json.dumps(GOLD) + "\n")
    db = var / "state.db"
    ingest = _hitl(["ingest", str(base / "gold.jsonl")],
                   {**env, "HITL_TASK": str(task), "HITL_DB_URL": f"sqlite:///{db}"}, base, timeout=120)
    assert ingest.returncode == 0 and "added 1" in ingest.stdout, ingest.stdout + ingest.stderr
    started = time.monotonic()
    try:
        up = _hitl(["up"], env, base, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        print(f"\nhitl up: {time.monotonic() - started:.0f} s")
        creds = json.loads((var / "credentials.json").read_text())
        spec = TaskSpec.load(task)
        tool = LabelStudioTool(spec.label_studio.url, creds["token"])
        project = int(re.search(r"/projects/(\d+)/data", up.stdout)[1])
        yield Stack(spec.label_studio.url, creds["username"], creds["password"], project, db, spec, tool)
    finally:
        down = _hitl(["down"], env, base, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:  # a fresh temporary profile per launch
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, demo):
    """A new browser session, logged in at /user/login as the stack's user."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{demo.url}/user/login")
    page.fill("input[name=email]", demo.username)
    page.fill("input[name=password]", demo.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/user/login" not in u)
    yield page
    context.close()


def _store(demo: Stack) -> StateStore:
    return StateStore(f"sqlite:///{demo.db}")


def _shown_task_id(page) -> int:
    return int(page.eval_on_selector(".lsf-current-task__task-id", "e => e.firstChild.textContent"))


def _shows_text(page, text: str) -> None:
    """The item's text is on screen; a second more for the editor to settle (as a person would look)."""
    from playwright.sync_api import expect

    expect(page.locator(".lsf-richtext")).to_have_text(text)
    page.wait_for_timeout(1000)


def _checked(page, labels: list[str]) -> dict[str, bool]:
    return {label: page.is_checked(f'.lsf-choices input[name="{label}"]') for label in labels}


def _words_on_screen(page, item_texts: list[str]) -> list[str]:
    """Routing words a person can read on the page, outside the items' own texts."""
    shown = page.inner_text("body")
    for text in sorted(item_texts, key=len, reverse=True):
        shown = shown.replace(text, " ")
    return ROUTING_WORDS.findall(shown)


def _submit(page, label: str, task_id: int) -> float:
    """Choose ``label`` and submit; the time Label Studio confirmed the annotation."""
    page.click(f'.lsf-choices input[name="{label}"]')
    assert _checked(page, [label])[label]
    with page.expect_response(lambda r: r.request.method == "POST"
                              and f"/api/tasks/{task_id}/annotations" in r.url) as created:
        page.click(SUBMIT)
    assert created.value.status == 201, created.value.text()
    return time.monotonic()


def _answer_arrives(demo: Stack, item_id: int, label: str, submitted: float) -> float:
    """Seconds from Label Studio's confirmation until the answer is in our store (polled)."""
    limit = SYNC_INTERVAL_S + MARGIN_S
    with _store(demo) as store:
        _wait(f"the answer to item {item_id} in the store", lambda: any(
            a.value == [label] and a.status == "submitted" for a in store.annotations.list([item_id])),
            timeout=limit + 30)
    took = time.monotonic() - submitted
    assert took <= limit, f"the answer took {took:.1f} s to reach the store (sync interval {SYNC_INTERVAL_S} s)"
    return took


def test_gold_item_opened_from_the_data_manager_shows_no_suggestion_and_its_answer_comes_back(page, demo, tmp_path):
    with _store(demo) as store:
        sync = SyncService(store, demo.spec, demo.tool)
        gold = next(it for it in store.items.list() if it.external_id == GOLD["id"])
        assert store.decisions.latest([gold.id])[gold.id].reason == "gold"  # drawn by the router
        task_id = int(store.pushes.remote_ids([gold.id], "label_studio", sync.project)[gold.id])
        texts = [it.text for it in store.items.list()]
    started = time.monotonic()
    page.goto(f"{demo.url}/projects/{demo.project}/data?task={task_id}")
    page.wait_for_selector(".lsf-choices input[type=radio]")
    _shows_text(page, GOLD["text"])
    page.screenshot(path=tmp_path / "gold-task.png")
    print(f"\nscreenshot: {tmp_path / 'gold-task.png'}")
    assert _checked(page, demo.spec.labels) == {"fresh": False, "rotten": False}  # no suggestion
    assert _words_on_screen(page, texts) == []
    assert not re.search(r"\d+(\.\d+)?\s*%", page.inner_text(".lsf-editor"))  # no model score either
    # Label Studio asked no ML backend for a label of it: its only prediction is our empty one
    predictions = [p if isinstance(p, dict) else p.model_dump() for p in demo.tool._ls.tasks.get(id=task_id).predictions]
    assert [p["result"] for p in predictions] == [[]], predictions

    submitted = _submit(page, "rotten", task_id)  # an answer of its own (not the gold label)
    took = _answer_arrives(demo, gold.id, "rotten", submitted)
    print(f"gold task viewed and answered in {submitted - started:.1f} s; in the store {took:.1f} s later")


def test_annotator_works_the_labelling_stream_and_the_answers_reach_the_store(page, demo, tmp_path):
    with _store(demo) as store:
        sync = SyncService(store, demo.spec, demo.tool)
        items = {it.id: it for it in store.items.list()}
        texts = [it.text for it in items.values()]
    started = time.monotonic()
    page.goto(f"{demo.url}/projects/{demo.project}/data?labeling=1")
    seen: list[tuple[int, bool]] = []
    page.wait_for_selector(".lsf-choices input[type=radio]")
    while not any(suggested for _, suggested in seen):
        assert len(seen) < 11, f"no task of the first batch was shown with a suggestion: {seen}"
        task_id = _shown_task_id(page)
        with _store(demo) as store:
            item = items[store.pushes.find("label_studio", sync.project, task_id).item_id]
            decision = store.decisions.latest([item.id])[item.id]
            suggestion = store.predictions.list([item.id])[-1].label
        suggested = sync.shows_suggestion(item, decision)
        _shows_text(page, item.text)
        page.screenshot(path=tmp_path / f"stream-{len(seen) + 1}-{'suggested' if suggested else 'blind'}.png")
        checked = _checked(page, demo.spec.labels)
        assert checked == {label: suggested and label == suggestion for label in demo.spec.labels}, \
            (task_id, decision.reason, suggestion, checked)
        assert _words_on_screen(page, texts) == [], task_id
        # the human's own answer: the other label where the model's is pre-selected
        label = next(lb for lb in demo.spec.labels if lb != suggestion) if suggested else demo.spec.labels[0]
        submitted = _submit(page, label, task_id)
        seen.append((task_id, suggested))
        if suggested:
            took = _answer_arrives(demo, item.id, label, submitted)
        else:
            page.wait_for_function("id => { const e = document.querySelector('.lsf-current-task__task-id');"
                                   " return !!e?.firstChild && e.firstChild.textContent !== id }", arg=str(task_id))
            page.wait_for_selector(".lsf-choices input[type=radio]")
    print(f"\nstream: {len(seen)} tasks ({sum(s for _, s in seen)} with a suggestion) answered in "
          f"{submitted - started:.1f} s; the suggested one's answer in the store {took:.1f} s later; "
          f"screenshots in {tmp_path}")
    with _store(demo) as store:  # every answer given in the stream came back, none twice
        answered = [a for a in store.annotations.list(status="submitted") if a.annotator == demo.username]
        ids = {int(store.pushes.remote_ids([a.item_id], "label_studio", sync.project)[a.item_id]) for a in answered}
    assert {t for t, _ in seen} <= ids
