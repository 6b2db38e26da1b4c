"""``/metrics`` of on-line decisions, read from ``store.online`` at each scrape, and the alert rules
in ``deploy/prometheus-alerts.yml``: every metric an alert names is one the collector yields."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from connector.store import StateStore, online
from sync.metrics import SyncMetricsCollector
from sync.webhooks import PullRequests, create_webhook_app

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> Clock:
        self.now = T0 + timedelta(seconds=seconds)
        return self


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(online, "utcnow", c)  # every time store.online writes or reads
    return c


@pytest.fixture
def store(tmp_path):
    s = StateStore(f"sqlite:///{tmp_path}/db/s.db")
    s.migrate()
    yield s
    s.close()


def _scrape(store: StateStore) -> dict[tuple[str, tuple], float]:
    """``GET /metrics`` of the sync app, parsed: ``{(sample name, sorted label pairs): value}``."""
    client = TestClient(create_webhook_app(PullRequests(), secret="s", metrics=SyncMetricsCollector(store)))
    r = client.get("/metrics")
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _get(samples, name, default=None, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), default)


def _family(samples, name) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def _decide(store, key: str, status: str, rule: str, *, callback: bool = False, audit: bool = False):
    pending = status == "pending_review"
    row = {"idempotency_key": key, "kind": "label", "source": "caller:m1",
           "request": {"idempotency_key": key, "input": {"text": f"claim {key}"}},
           "output": {"label": "ok", "confidence": 0.9, "model": "m1"}, "status": status, "rule": rule,
           "reason": "audit" if audit else "test", "score": 0.9, "raw_score": 0.9, "audit": audit,
           "deadline_at": online.utcnow() + timedelta(hours=1) if pending else None,
           "callback_url": "http://127.0.0.1:1/cb" if callback else None,
           "decided_at": None if pending else online.utcnow()}
    item = {"text": f"claim {key}", "data": {}} if pending or audit else None
    made, created = store.online.create(row, item=item)
    assert created
    return made


def _settle(store, d, outcome: str, reviewer: str = "rev-1", **kw) -> None:
    assert store.online.settle(d.id, outcome=outcome, reviewer=reviewer, callback={"data": {"id": d.id}}, **kw)


def _attempts(store, d, *results: str) -> None:
    """Delivery attempts of ``d``'s callback: ``ok``, ``fail``, or ``give_up``."""
    cb = store.online.callback(d.id)
    for r in results:
        store.online.callback_attempted(cb.id, delivered=r == "ok", error=None if r == "ok" else "HTTP 503",
                                        give_up=r == "give_up")


def _fill(store, clock) -> None:
    """Decisions of every kind of fate, at known times; the scrape is at T0 + 60 s."""
    clock.at(-3 * 3600)
    old = _decide(store, "old", "pending_review", "threshold:certified")
    clock.at(-2 * 3600)
    _settle(store, old, "approve")  # waited an hour, two hours ago: outside the wait window
    clock.at(-600)
    escalated = _decide(store, "esc", "pending_review", "rule:big_amount")  # the oldest still pending
    assert store.online.escalate(escalated.id, deadline_at=T0 + timedelta(hours=1), boost=1.0)
    clock.at(0)
    _decide(store, "a1", "auto_approved", "threshold:certified")
    audited = _decide(store, "a2", "auto_approved", "threshold:certified", audit=True)
    _decide(store, "r1", "auto_rejected", "rule:banned")
    held = [_decide(store, f"p{k}", "pending_review", "threshold:certified" if k < 4 else "rule:big_amount",
                    callback=k < 4) for k in range(1, 6)]
    fallen = _decide(store, "f1", "pending_review", "threshold:off", callback=True)
    for k, (d, outcome) in enumerate(zip(held, ("approve", "approve", "correct", "reject", "approve"),
                                         strict=True), 1):
        clock.at(10 * k)  # waits 10, 20, 30, 40, 50 s
        _settle(store, d, outcome, corrected={"label": "fraud"} if outcome == "correct" else None)
    clock.at(52)
    assert store.online.settle(audited.id, outcome="reject", reviewer="rev-2")  # an audit: no wait, no callback
    clock.at(55)
    assert store.online.settle(fallen.id, outcome="reject", reviewer="timeout", comment="deadline passed",
                               callback={"data": {}}, fallback=True)  # not a person's wait
    clock.at(58)
    _decide(store, "q1", "pending_review", "threshold:off")
    _attempts(store, held[0], "fail", "fail", "ok")  # two failed attempts, then delivered
    _attempts(store, held[1], "fail", "fail", "give_up")  # three, given up
    _attempts(store, fallen, "fail")  # one, still pending; p3's callback not tried yet
    clock.at(60)


def test_the_decision_families_read_the_store(store, clock):
    _fill(store, clock)
    samples = _scrape(store)
    assert _get(samples, "hitl_store_up") == 1
    assert _get(samples, "hitl_decision_queue") == 2  # esc and q1
    assert _get(samples, "hitl_decision_queue_oldest_age_seconds") == pytest.approx(660)
    expected = np.quantile([10, 20, 30, 40, 50], [0.5, 0.9, 0.99])
    assert [_get(samples, "hitl_decision_wait_seconds", quantile=q) for q in ("0.5", "0.9", "0.99")] == \
        pytest.approx(expected.tolist())
    assert _family(samples, "hitl_decisions") == {
        (("rule", "threshold:certified"), ("status", "approved")): 3,  # old, p1, p2
        (("rule", "threshold:certified"), ("status", "corrected")): 1,
        (("rule", "rule:big_amount"), ("status", "rejected")): 1,
        (("rule", "rule:big_amount"), ("status", "approved")): 1,
        (("rule", "rule:big_amount"), ("status", "pending_review")): 1,
        (("rule", "threshold:certified"), ("status", "auto_approved")): 2,  # a1, and a2 audited: still automatic
        (("rule", "rule:banned"), ("status", "auto_rejected")): 1,
        (("rule", "threshold:off"), ("status", "rejected")): 1,  # f1, by its deadline
        (("rule", "threshold:off"), ("status", "pending_review")): 1,
    }
    assert _family(samples, "hitl_decision_fallbacks_total") == {
        (("outcome", "approve"),): 0, (("outcome", "reject"),): 1, (("outcome", "escalate"),): 1}
    assert _family(samples, "hitl_decision_callbacks") == {
        (("status", "pending"),): 2, (("status", "delivered"),): 1, (("status", "failed"),): 1}
    assert _get(samples, "hitl_decision_callback_failed_attempts_total") == 6


def test_failed_attempts_only_grow_when_a_retried_callback_is_delivered(store, clock):
    d = _decide(store, "k", "pending_review", "threshold:off", callback=True)
    _settle(store, d, "approve")
    _attempts(store, d, "fail", "fail")
    assert _get(_scrape(store), "hitl_decision_callback_failed_attempts_total") == 2
    _attempts(store, d, "ok")  # its last error is cleared: the two failures still count
    samples = _scrape(store)
    assert _get(samples, "hitl_decision_callback_failed_attempts_total") == 2
    assert _get(samples, "hitl_decision_callbacks", status="delivered") == 1


def test_an_empty_store_reports_an_empty_queue_and_zero_counters(store):
    samples = _scrape(store)
    assert _get(samples, "hitl_decision_queue") == 0 and _get(samples, "hitl_decision_queue_oldest_age_seconds") == 0
    assert _family(samples, "hitl_decision_wait_seconds") == {} and _family(samples, "hitl_decisions") == {}
    assert set(_family(samples, "hitl_decision_fallbacks_total").values()) == {0}
    assert set(_family(samples, "hitl_decision_callbacks").values()) == {0}
    assert _get(samples, "hitl_decision_callback_failed_attempts_total") == 0


def test_a_scrape_answers_when_the_decision_tables_fail(store, clock, caplog):
    _fill(store, clock)
    with store.engine.begin() as c:
        c.execute(text("DROP TABLE callback_deliveries"))
    samples = _scrape(store)
    assert _get(samples, "hitl_store_up") == 0 and "did not answer" in caplog.text
    assert _family(samples, "hitl_items")  # what came before the failing section is still there
    assert not any(name.startswith("hitl_decision") for name, _ in samples)


# ------------------------------------------------------------------------------------------------ alert rules

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "inf", "nan"}


def _expr_metrics(expr: str) -> list[tuple[str, dict[str, str]]]:
    """The metric selectors of a PromQL expression: ``(name, {label: value or regex})``."""
    found = []
    blank = re.sub(r'"[^"]*"', lambda m: '"' + " " * (len(m.group()) - 2) + '"', expr)  # strings blanked, in place
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?", blank):
        name, before, after = m.group(1), blank[:m.start(1)], blank[m.end(1):].lstrip()
        if name.lower() in PROMQL_WORDS or re.match(r"\d", name):
            continue  # a keyword
        if after.startswith("(") or re.match(r"(by|without)\s*\(", after):
            continue  # a function or an aggregation
        if re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$", before) or \
                re.search(r"\{[^}]*$", before) or re.search(r"\[[^\]]*$", before):
            continue  # a grouping label, a label inside a selector, a duration
        matchers = dict(re.findall(r'(\w+)\s*=~?\s*"([^"]*)"', expr[m.start(2):m.end(2)] if m.group(2) else ""))
        found.append((name, matchers))
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_alert_file_is_a_prometheus_rule_file():
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"} and doc["groups"]
    names = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"} and group["name"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert isinstance(rule["expr"], str) and rule["labels"]["severity"] in ("info", "warning", "critical")
            assert {"summary", "description"} <= set(rule["annotations"])
            assert re.fullmatch(r"\d+[smh]", rule.get("for", "0s")), rule
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    assert {"ReviewQueueBacklog", "DecisionCallbacksFailing", "DecisionDeadlineFallbacks"} <= set(names)


def test_every_metric_and_label_an_alert_names_is_one_the_collector_yields(store, clock):
    from sync.runner import triggers
    from sync.settings import SyncSettings

    _fill(store, clock)
    for job in triggers(SyncSettings()):  # a run of every scheduled job, so each one's series exists
        store.job_runs.finish(store.job_runs.claim(job, "slot", "host"), "ok")
    store.snapshots.add("checks", {"rows": [], "model_version": "v1", "paused": True})
    samples = _scrape(store)
    labels: dict[str, dict[str, set[str]]] = {}
    for name, pairs in samples:
        for k, v in pairs:
            labels.setdefault(name, {}).setdefault(k, set()).add(v)
        labels.setdefault(name, {})
    seen = []
    for rule in _rules():
        for name, matchers in _expr_metrics(rule["expr"]):
            assert name in labels, f"{rule['alert']}: {name} is no metric the collector yields"
            for key, value in matchers.items():
                assert key in labels[name], f"{rule['alert']}: {name} has no label {key}"
                for alternative in value.split("|"):  # an equality, or a regex of plain alternatives
                    assert alternative in labels[name][key], f"{rule['alert']}: {name}{{{key}={alternative!r}}}"
            seen.append(name)
    assert {"hitl_decision_queue", "hitl_decision_callback_failed_attempts_total",
            "hitl_decision_fallbacks_total", "hitl_store_up"} <= set(seen)


def test_the_selector_reader_finds_names_and_leaves_out_functions_and_groupings():
    expr = ('sum by (outcome) (increase(hitl_decision_fallbacks_total{outcome=~"approve|reject"}[1h])) '
            '/ on() clamp_min(sum(delta(hitl_decisions{status="approved"}[1h])), 1) > 0.05 and hitl_store_up == 1')
    assert _expr_metrics(expr) == [("hitl_decision_fallbacks_total", {"outcome": "approve|reject"}),
                                   ("hitl_decisions", {"status": "approved"}), ("hitl_store_up", {})]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_accepts_the_rule_file():
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (Debian: prometheus)")
def test_the_alert_expressions_fire_on_the_series_they_are_meant_for(tmp_path):
    """Each expression evaluated by promtool on made-up series: where it fires, with what value."""
    exprs = {r["alert"]: r["expr"] for r in _rules()}

    def case(series: dict[str, str], alert: str, at: str, expected: list[tuple[str, float]],
             wrap: str = "{}") -> dict[str, Any]:
        return {"interval": "1m", "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [{"expr": wrap.format(f"({exprs[alert]})"), "eval_time": at,
                                      "exp_samples": [{"labels": k, "value": v} for k, v in expected]}]}

    fallbacks, decided = 'hitl_decision_fallbacks_total{outcome="reject"}', \
        'hitl_decisions{status="rejected",rule="threshold:off"}'
    given_up = 'hitl_decision_callbacks{status="failed"}'
    tests = [
        case({"hitl_decision_queue": "150x30"}, "ReviewQueueBacklog", "20m", [("hitl_decision_queue", 150)]),
        case({"hitl_decision_queue": "80x30"}, "ReviewQueueBacklog", "20m", []),
        # 10 of 20 held decisions ended by the deadline: half
        case({fallbacks: "5+1x10 15x50", decided: "100+2x10 120x50"}, "DecisionDeadlineFallbacks", "30m",
             [("{}", 0.5)]),
        # one fallback of two: too few to page on
        case({fallbacks: "5 6x59", decided: "100 102x59"}, "DecisionDeadlineFallbacks", "30m", []),
        # 3 fallbacks among 600 decisions: 0.5 %
        case({fallbacks: "5+1x3 8x56", decided: "100+200x3 700x56"}, "DecisionDeadlineFallbacks", "30m", []),
        # one callback given up 10 minutes ago; none for an hour
        case({given_up: "0x20 1x20"}, "DecisionCallbacksGivenUp", "30m", [('{status="failed"}', 1)],
             wrap="{} > bool 0"),
        case({given_up: "1x80"}, "DecisionCallbacksGivenUp", "70m", []),
        case({"hitl_decision_callback_failed_attempts_total": "0+1x40"}, "DecisionCallbacksFailing", "30m",
             [("{}", 1)], wrap="{} > bool 0"),
        case({"hitl_decision_callback_failed_attempts_total": "3x40"}, "DecisionCallbacksFailing", "30m", []),
        case({"hitl_decision_queue_oldest_age_seconds": "0+60x40"}, "ReviewQueueOldestWaiting", "31m",
             [("hitl_decision_queue_oldest_age_seconds", 1860)]),
    ]
    path = tmp_path / "alerts-test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    done = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
