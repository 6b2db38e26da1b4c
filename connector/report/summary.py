"""Section 1, the summary: items by state, routing decisions, human labels, the served model, the
auto-accept threshold and its error bound, the stopping rule, flagged annotators, and the job runs
with their failures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connector.auto_accept import AutoAccept
from connector.report.markup import esc, finite, or_dash, pct, stamp, table
from connector.report.thresholds import threshold_text
from connector.snapshots import ModelSnapshot, QualitySnapshot, StoppingSnapshot, ThresholdsSnapshot, read_latest
from connector.stopping import describe

if TYPE_CHECKING:
    from connector.model_store import ModelStore
    from connector.store import StateStore


def summary_section(store: StateStore, models: ModelStore, thresholds: ThresholdsSnapshot | None,
                    quality: QualitySnapshot | None, rule: AutoAccept | None = None) -> str:
    """The overview table, then one row per scheduled job; ``rule`` is the auto-accept rule in force."""
    states = store.items.counts_by_state()
    decisions = store.decisions.counts()
    labels = store.labels.list()
    routed = sum(decisions.values())
    by_method: dict[str, int] = {}
    for lb in labels:
        by_method[str(lb.method)] = by_method.get(str(lb.method), 0) + 1
    current = models.current()
    if current is None:
        model = read_latest(store, ModelSnapshot)
        current = model.snapshot.current if model else None
    flagged = quality.flagged if quality else []

    rows: list[tuple[str, str]] = [
        ("items by state", ", ".join(f"{esc(s)} {n}" for s, n in states.items()) + f" (total {sum(states.values())})"),
    ]
    if routed:
        review, auto = decisions.get("review", 0), decisions.get("auto_accept", 0)
        rows.append(("routing decisions", ", ".join(f"{esc(a)} {n}" for a, n in sorted(decisions.items()))
                     + f"; review rate {pct(review / routed)}, automation rate {pct(auto / routed)}"))
    else:
        rows.append(("routing decisions", "none yet"))
    rows.append(("human labels (settled)", f"{len(labels)}" + (
        " (" + ", ".join(f"{esc(m)} {n}" for m, n in sorted(by_method.items())) + ")" if by_method else "")))
    rows.append(("current model version", esc(current) if current else "none yet (`hitl train`)"))
    if rule is not None:
        rows.append(("auto-accept", _rule_text(rule)))
    if thresholds is not None:
        t = thresholds
        bound = (f"error ≤ {pct(t.error_ucb)} at {pct(1 - (finite(t.delta) or 0.05), 0)}"
                 f" confidence (target {pct(t.target_error)}, {'met' if t.meets_target else 'not met'}); "
                 f"{or_dash(t.errors)} wrong of {or_dash(t.n)} labeled items above it; "
                 f"review rate {pct(t.review_rate)}")
        rows.append(("auto-accept threshold", f"{esc(threshold_text(t))}; {esc(bound)}"))
    else:
        rows.append(("auto-accept threshold", "no threshold review yet"))
    rows.append(("stopping rule", _stopping_text(store)))
    rows.append(("flagged annotators", ", ".join(f'<span class="badge flagged">flagged</span> {esc(a)}'
                                                 for a in flagged) if flagged else "none"))
    return table(["what", "value"], [(f"<b>{esc(k)}</b>", v) for k, v in rows]) + _job_runs(store)


def _job_runs(store: StateStore) -> str:
    jobs = store.job_runs.summary()
    if not jobs:
        return '<p class="meta">No job runs yet (the scheduler, or `hitl scheduler once JOB`).</p>'
    job_rows, classes = [], []
    for job_id in sorted(jobs):
        s = jobs[job_id]
        last, err = s.get("last_run"), s.get("last_error")
        last_txt = f"{esc(stamp(last.started_at))} {esc(last.status)}" if last is not None else "–"
        err_txt = f"{esc(stamp(err.started_at))}: {esc((err.error or '')[:500])}" if err is not None else "–"
        job_rows.append((esc(job_id), str(s.get("runs", 0)), str(s.get("failures", 0)), last_txt, err_txt))
        classes.append("flagged" if last is not None and last.status == "failed" else "")
    return "<h3>Job runs</h3>" + table(["job", "runs", "failures", "last run", "last error"], job_rows,
                                       row_classes=classes, numeric=(1, 2))


def _stopping_text(store: StateStore) -> str:
    """The stopping rule after the latest retraining (:mod:`connector.stopping`), badged when it fired."""
    latest = read_latest(store, StoppingSnapshot)
    snapshot = None if latest is None else latest.snapshot
    text = esc(describe(snapshot))
    if snapshot is None:
        return text
    where = (f" (stop set of {len(snapshot.external_ids)} items; candidate {esc(snapshot.candidate or '–')}, "
             f"{snapshot.n_labels} labels; {esc(stamp(latest.at))})")
    return ('<span class="badge current">fired</span> ' if snapshot.fired else "") + text + where


def _rule_text(rule: AutoAccept) -> str:
    if rule.state == "certified":
        return f'<span class="badge">certified</span> confidence ≥ {rule.threshold:.4g} (the latest threshold review)'
    if rule.state == "uncertified":
        fixed = f"confidence ≥ {rule.threshold:.4g}" if rule.threshold is not None else "nothing"
        return (f'<span class="badge flagged">uncertified</span> {esc(fixed)}: a fixed threshold '
                "(<code>[thresholds] adapt = false</code>), with no bound on the error of what it accepts")
    return ('<span class="badge">off</span> nothing is auto-accepted until a threshold review certifies a '
            "threshold; confident items wait as model suggestions")
