"""Entity spans and label sets as an annotator sees and gives them, in a real browser on a real Label Studio.

An NER project (a span control as the only one) is fed by the sync with the model's spans as
pre-annotations, on texts where emoji and flags come before the entities (each a character outside
the BMP: two UTF-16 units, the classic cause of shifted offsets). Headless Chromium (Debian's, by
Playwright) opens each task: the highlighted regions are the model's spans, on the very words our
offsets name. The annotator accepts one task as it is, and on the other draws the entity the model
missed with the mouse; the answers pulled back hold offsets on our text (``text[start:end]`` is the
word highlighted) and settle into the labels table. A label set beside the spans shows the model's
set pre-checked; the annotator's changed set comes back. Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import json
import time

import pytest

from connector.store import StateStore
from connector.task_spec import TaskSpec
from connector.tools.label_studio import LabelStudioTool
from sync.jobs import JobContext, consolidate_job
from sync.service import SyncService
from tests.integration.test_browser import CHROMIUM_ARGS, ROUTING_WORDS, SUBMIT, chromium  # noqa: F401 (fixture)
from tests.support.credentials import LS_PASSWORD, LS_USERNAME

pytestmark = pytest.mark.slow

TEXTS = ["😀 Ada flew to Oslo with Bob.", "🇳🇴🎉 Meeting Chloé in Kyiv, then Paris!"]
ENTITIES = {"Ada": "PER", "Oslo": "LOC", "Bob": "PER", "Chloé": "PER", "Kyiv": "LOC", "Paris": "LOC"}
MISSED = "Paris"  # the model does not find it; the annotator draws it


def _spans(text: str, *, skip: str | None = None) -> list[list]:
    return sorted([text.index(w), text.index(w) + len(w), lab] for w, lab in ENTITIES.items()
                  if w in text and w != skip)


class ModelSpans:
    """``/v1/predict`` of a span model: every entity but :data:`MISSED`, each scored 0.7."""

    def predict(self, texts):
        return [{"label": None, "controls": {"entities": {
            "kind": "spans", "score": 0.7, "missed": 0.2, "model_version": "v1",
            "spans": [{"start": s, "end": e, "label": lab, "score": 0.7} for s, e, lab in _spans(t, skip=MISSED)]}}}
            for t in texts]


@pytest.fixture
def page(label_studio, chromium):  # noqa: F811
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{label_studio.url}/user/login")
        page.fill("input[name=email]", LS_USERNAME)
        page.fill("input[name=password]", LS_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(lambda u: "/user/login" not in u)
        yield page
        browser.close()


def _highlights(page) -> list[list]:
    """The regions on screen: ``[start, end, label, the highlighted text]``."""
    page.wait_for_selector(".htx-highlight")
    page.wait_for_timeout(1000)  # the editor settles
    shown = page.eval_on_selector_all(".htx-highlight", "els => els.map(e => [Number(e.dataset.start), "
                                      "Number(e.dataset.end), e.dataset.label.split(':').pop(), e.innerText])")
    return sorted(shown)


def _draw(page, word: str, label: str) -> None:
    """Choose ``label``, then select ``word`` in the text with the mouse, as a person does."""
    page.click(f".lsf-labels .lsf-label:has-text('{label}')")
    box = page.evaluate("""word => {
        const walker = document.createTreeWalker(document.querySelector('.lsf-richtext__line'), NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
            const i = n.data.indexOf(word);
            if (i >= 0) { const r = document.createRange(); r.setStart(n, i); r.setEnd(n, i + word.length);
                          const b = r.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; } }
        return null; }""", word)
    assert box is not None, f"{word!r} is not on screen"
    y = (box[1] + box[3]) / 2
    page.mouse.move(box[0] + 1, y)
    page.mouse.down()
    page.mouse.move(box[2] - 1, y, steps=5)
    page.mouse.up()


def _submit(page, task: str) -> None:
    with page.expect_response(lambda r: r.request.method == "POST" and f"/api/tasks/{task}/annotations" in r.url) \
            as created:
        page.click(SUBMIT)
    assert created.value.status == 201, created.value.text()


def test_span_pre_annotations_render_on_their_words_and_drawn_spans_come_back_on_our_offsets(
        page, label_studio, tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest([{"id": f"t{i}", "text": t} for i, t in enumerate(TEXTS)])
    spec = TaskSpec(name=f"ner browser {time.time_ns()}"[:50], show_suggestion="always",
                    routing={"accept_threshold": 0.99, "spot_check_rate": 0.0, "audit_share": 0.0},
                    controls=[{"name": "entities", "kind": "spans", "labels": ["PER", "LOC"]}])
    tool = LabelStudioTool(label_studio.url, label_studio.token)
    sync = SyncService(store, spec, tool, ModelSpans())
    sync.predict_pass()
    sync.route_pass()
    assert sync.push_pass().counts["pushed"] == 2
    tasks = tool.find(sync.project)
    for ext, task in sorted(tasks.items()):
        text = TEXTS[int(ext[1:])]
        page.goto(f"{label_studio.url}/projects/{sync.project}/data?task={task}")
        # what the annotator sees: the model's spans, each on the word our offsets name
        assert _highlights(page) == [[s, e, lab, text[s:e]] for s, e, lab in _spans(text, skip=MISSED)]
        assert not ROUTING_WORDS.findall(page.inner_text(".lsf-richtext"))
        if MISSED in text:
            _draw(page, MISSED, ENTITIES[MISSED])
            assert _highlights(page) == [[s, e, lab, text[s:e]] for s, e, lab in _spans(text)]
        page.screenshot(path=str(tmp_path / f"{ext}.png"))
        _submit(page, task)
    assert sync.pull_pass().counts["inserted"] == 2
    for a in store.annotations.list():
        text = store.items.get(a.item_id).text
        assert a.extra["controls"]["entities"] == _spans(text)  # the drawn one too, on code points
    ctx = JobContext(store, spec, None, make_sync=lambda: sync)  # type: ignore[arg-type]
    assert consolidate_job(ctx)["settled"] == 2
    for lb in store.labels.list():
        assert json.loads(lb.label) == _spans(store.items.get(lb.item_id).text)
    store.close()


class TopicsAndSpans(ModelSpans):
    """A multi-label ``topics`` model (travel, surely; sport, barely) beside the span model."""

    def predict(self, texts):
        out = super().predict(texts)
        for p in out:
            p["controls"]["topics"] = {"kind": "multi", "labels": ["sport", "travel"], "score": 0.55,
                                       "probabilities": {"travel": 0.9, "sport": 0.55, "politics": 0.1},
                                       "model_version": "v2"}
        return out


def test_a_label_set_is_pre_checked_beside_the_spans_and_a_changed_set_comes_back(page, label_studio, tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.items.ingest([{"id": "t0", "text": TEXTS[0]}])
    spec = TaskSpec(name=f"sets browser {time.time_ns()}"[:50], show_suggestion="always",
                    routing={"accept_threshold": 0.99, "spot_check_rate": 0.0, "audit_share": 0.0},
                    controls=[{"name": "topics", "labels": ["travel", "sport", "politics"], "multi_label": True},
                              {"name": "entities", "kind": "spans", "labels": ["PER", "LOC"]}])
    tool = LabelStudioTool(label_studio.url, label_studio.token)
    sync = SyncService(store, spec, tool, TopicsAndSpans())
    sync.predict_pass()
    sync.route_pass()
    assert sync.push_pass().counts["pushed"] == 1
    (task,) = tool.find(sync.project).values()
    page.goto(f"{label_studio.url}/projects/{sync.project}/data?task={task}")
    text = TEXTS[0]
    assert _highlights(page) == [[s, e, lab, text[s:e]] for s, e, lab in _spans(text, skip=MISSED)]
    checked = {t: page.is_checked(f'.lsf-choices input[name="{t}"]') for t in ("travel", "sport", "politics")}
    assert checked == {"travel": True, "sport": True, "politics": False}  # the model's set, pre-checked
    page.click('.lsf-choices input[name="sport"]')  # the annotator: not sport
    page.screenshot(path=str(tmp_path / "sets.png"))
    _submit(page, task)
    assert sync.pull_pass().counts["inserted"] == 1
    (a,) = store.annotations.list()
    assert sorted(a.value) == ["travel"] and a.extra["controls"]["entities"] == _spans(text, skip=MISSED)
    store.close()
