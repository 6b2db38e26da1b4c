"""The checks are read: realized accuracy per kind, version and label with its Clopper–Pearson
interval, and auto-accept paused when the spot checks show the accepted error above the target."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from connector.auto_accept import in_force
from connector.checks import ALL, clopper_pearson, outcomes, summarize
from connector.snapshots import ChecksSnapshot, ThresholdsSnapshot, read_latest, write_snapshot
from connector.task_spec import TaskSpec
from sync.jobs import JobContext, read_checks

SPEC = TaskSpec(name="t", labels=["a", "b"], thresholds={"target_error": 0.05, "delta": 0.05})


class _Served:
    """The model store's one question here: which version is served."""

    def __init__(self, version: str) -> None:
        self.version = version

    def current(self) -> str:
        return self.version


def test_clopper_pearson_matches_statsmodels_exact_interval():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 400))
        k = int(rng.integers(0, n + 1))
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        expected = proportion_confint(k, n, alpha=alpha, method="beta")
        assert clopper_pearson(k, n, alpha) == pytest.approx(expected, abs=1e-9)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def _checked(store, plan: list[tuple[str, str, str]], version: str = "v1") -> dict[str, int]:
    """``plan``: (kind, model label, human label) per item; gold items carry their answer."""
    store.items.ingest([{"id": f"c{i}", "text": f"text {i}", "is_gold": kind == "gold",
                         **({"gold_label": truth} if kind == "gold" else {})} for i, (kind, _, truth) in enumerate(plan)])
    ids = {it.external_id: it.id for it in store.items.list()}
    store.predictions.record([{"item_id": ids[f"c{i}"], "model_version": version, "label": pred, "confidence": 0.97,
                               "probabilities": {pred: 0.97, "b" if pred == "a" else "a": 0.03}}
                              for i, (_, pred, _) in enumerate(plan)])
    store.decisions.record([{"item_id": ids[f"c{i}"], "model_version": version, "action": "review", "reason": kind,
                             "priority": 0.1} for i, (kind, _, _) in enumerate(plan)])
    store.labels.save([{"item_id": ids[f"c{i}"], "label": truth, "status": "settled", "method": "majority",
                        "confidence": None, "agreement": 1.0, "n_answers": 2, "reason": "settled"}
                       for i, (kind, _, truth) in enumerate(plan) if kind != "gold"])
    return ids


def test_every_answered_check_is_read_per_kind_version_and_label(empty_store):
    empty_store.migrate()
    plan = ([("spot_check", "a", "a")] * 18 + [("spot_check", "a", "b")] * 2 + [("spot_check", "b", "b")] * 5
            + [("audit", "a", "a")] * 7 + [("audit", "b", "a")] * 3 + [("gold", "a", "a"), ("gold", "b", "a")])
    _checked(empty_store, plan)
    found = outcomes(empty_store)
    assert len(found) == len(plan)
    rows = {(r.kind, r.label): r for r in summarize(found, delta=0.05)}
    spot = rows[("spot_check", ALL)]
    assert (spot.n, spot.correct) == (25, 23) and spot.accuracy == pytest.approx(0.92)
    assert (spot.lower, spot.upper) == pytest.approx(clopper_pearson(23, 25, 0.05))
    assert (rows[("spot_check", "a")].n, rows[("spot_check", "a")].correct) == (20, 18)
    assert (rows[("audit", ALL)].n, rows[("audit", ALL)].correct) == (10, 7)
    assert (rows[("gold", ALL)].n, rows[("gold", ALL)].correct) == (2, 1)  # against the known answers


def _certify(store, threshold: float) -> None:
    write_snapshot(store, ThresholdsSnapshot(threshold=threshold, meets_target=True, error_ucb=0.04, n=80))


def test_failing_spot_checks_pause_auto_accept_until_a_review_certifies_a_higher_threshold(empty_store, monkeypatch):
    import sync.jobs

    reviews = []
    review = sync.jobs.threshold_job
    monkeypatch.setattr(sync.jobs, "threshold_job", lambda ctx: reviews.append(review(ctx)))
    store = empty_store
    store.migrate()
    _certify(store, 0.9)
    ctx = JobContext(store, SPEC, _Served("v1"))  # type: ignore[arg-type]
    assert in_force(store, SPEC).state == "certified"
    _checked(store, [("spot_check", "a", "a")] * 30 + [("spot_check", "a", "b")] * 10)  # 25 % wrong
    snapshot = read_checks(ctx)
    assert snapshot.paused and snapshot.paused_threshold == pytest.approx(0.9)
    assert len(reviews) == 1  # the pause ran a threshold review at once (here: too little evidence to move)
    rule = in_force(store, SPEC)
    assert rule.state == "off" and rule.paused  # nothing is auto-accepted
    assert read_checks(ctx).paused and len(reviews) == 1  # the pause holds, run after run
    _certify(store, 0.9)  # a review certifying the same threshold does not lift it
    assert in_force(store, SPEC).paused
    _certify(store, 0.95)  # a higher one does: the spot checks under it are read afresh
    assert in_force(store, SPEC).state == "certified"
    assert not read_checks(ctx).paused and in_force(store, SPEC).threshold == pytest.approx(0.95)


def test_a_few_errors_within_the_target_do_not_pause(empty_store):
    store = empty_store
    store.migrate()
    _certify(store, 0.9)
    _checked(store, [("spot_check", "a", "a")] * 58 + [("spot_check", "a", "b")] * 2)  # 3 %: under 5 %
    snapshot = read_checks(JobContext(store, SPEC, _Served("v1")))  # type: ignore[arg-type]
    assert not snapshot.paused and "not shown above" in snapshot.note
    assert read_latest(store, ChecksSnapshot).snapshot.rows  # the reading is kept


def test_hitl_status_says_the_rule_in_force_and_the_checks(tmp_path):
    from typer.testing import CliRunner

    from connector.store import StateStore
    from hitl.cli import app

    (tmp_path / "task.toml").write_text('name = "t"\nlabels = ["a", "b"]\n')
    env = {"HITL_DB_URL": f"sqlite:///{tmp_path}/s.db", "HITL_TASK": str(tmp_path / "task.toml")}
    with StateStore(env["HITL_DB_URL"]) as store:
        store.migrate()
        _checked(store, [("spot_check", "a", "a")] * 3 + [("audit", "b", "a")])
        write_snapshot(store, ChecksSnapshot(rows=[dict(vars(r), accuracy=r.accuracy)
                                                   for r in summarize(outcomes(store))], model_version="v1"))
    result = CliRunner().invoke(app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert "auto-accept: off: no certified threshold yet" in result.output
    assert "spot_check" in result.output and "100.0%" in result.output and "audit" in result.output
