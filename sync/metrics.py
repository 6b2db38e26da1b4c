"""Prometheus metrics of the loop, read from the state store at each scrape.

:class:`SyncMetricsCollector` asks the store at every scrape (nothing is kept in memory, so
several sync processes or a restart report the same numbers) and yields:

- ``hitl_items{state}``: current items in each state
- ``hitl_review_queue``: items routed to review and not yet pushed
- ``hitl_routing_decisions{action}``: items whose latest routing decision is ``action``
- ``hitl_review_rate`` / ``hitl_automation_rate``: the share of those items sent to review, and
  decided without a human (``auto_accept`` + ``auto_reject``); 0 when no item has a decision
- ``hitl_fleiss_kappa``, ``hitl_krippendorff_alpha``, ``hitl_percent_agreement``: from the latest
  ``agreement`` snapshot (each left out when missing)
- ``hitl_agreement_masi_alpha{control}`` and ``hitl_agreement_label_fleiss_kappa{control,label}``: a
  label-set control's agreement (the primary one's or another's: Krippendorff's alpha with the MASI
  distance, Fleiss' kappa per label); ``hitl_agreement_fleiss_kappa{control}`` and
  ``hitl_agreement_krippendorff_alpha{control}``: another one-label control's;
  ``hitl_agreement_span_f1{control,label}``: a span control's mean pairwise span F1 per label and
  ``label="micro"``; all from the latest ``agreement`` snapshot, each left out when undefined
- ``hitl_model_info{version}``: 1, from the latest ``model`` snapshot's ``current``
- ``hitl_auto_accept{state}``: 1 for the auto-accept rule in force (``certified``: a threshold the
  latest review certified; ``off``: none certified, nothing accepted; ``uncertified``: the task
  file's fixed threshold with ``adapt = false``), 0 for the others
- ``hitl_accept_threshold``: the threshold in force (left out when nothing is accepted)
- ``hitl_auto_accept_paused``: 1 while failing spot checks hold auto-accept off
- ``hitl_stopping_kappa``: Cohen's kappa between the last two retrainings' candidates on the stop
  set, and ``hitl_stopping_fired``: 1 when the stopping rule fired (the last ``window`` kappas at or
  above the level: more labels are unlikely to change the model), from the latest ``stopping``
  snapshot (:mod:`connector.stopping`); both left out before any, the kappa also after a set change
- ``hitl_check_items{kind,model_version,label}``, ``hitl_check_accuracy{...}`` and its Clopper–Pearson
  bounds ``hitl_check_accuracy_lower{...}`` / ``_upper{...}``: the latest ``checks`` snapshot (spot
  checks: the realized accuracy of auto-accepted items; audits; gold), ``label="*"`` over all labels
- ``hitl_job_runs_total{job}``, ``hitl_job_failures_total{job}`` and
  ``hitl_job_last_success_timestamp_seconds{job}`` (when a run of the job succeeded)
- ``hitl_decision_queue``: on-line decisions waiting for a person (``pending_review``);
  ``hitl_decision_queue_oldest_age_seconds``: how long the oldest of them has waited (0 when none)
- ``hitl_decision_wait_seconds{quantile="0.5"|"0.9"|"0.99"}``: created to decided by a person, over
  the decisions a person decided in the last hour (deadline fallbacks left out; left out when
  none). A gauge of quantiles, not a histogram: the store is read at each scrape and nothing is
  kept in memory, so a histogram's buckets would be counts over every decision ever reviewed
  (a growing scan, and time arithmetic each database spells its own way) to be turned back into
  the quantiles that are read here directly
- ``hitl_decisions{status,rule}``: decisions by status and the rule that decided them
- ``hitl_decision_fallbacks_total{outcome}``: deadline fallbacks (``approve`` / ``reject``, reviewer
  ``timeout``) and ``escalate`` (moved up the queue once)
- ``hitl_decision_callbacks{status}``: callbacks ``pending`` / ``delivered`` / ``failed`` (given up);
  ``hitl_decision_callback_failed_attempts_total``: delivery attempts that failed
- ``hitl_store_up``: 1 when every query answered, 0 when the store failed; a scrape never fails
  because of the store: it logs and yields what it got before the failure
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.auto_accept import in_force
from connector.snapshots import AgreementSnapshot, ChecksSnapshot, ModelSnapshot, StoppingSnapshot, read_latest
from connector.store import StateStore
from connector.store.database import read_only
from connector.store.models import CALLBACK_STATUSES, Item, RoutingDecision
from connector.task_spec import TaskSpec

log = logging.getLogger(__name__)

#: fields of :class:`AgreementSnapshot` exported as ``hitl_<field>``
AGREEMENT_KEYS = {
    "fleiss_kappa": "Fleiss' kappa of the latest agreement snapshot.",
    "krippendorff_alpha": "Krippendorff's alpha of the latest agreement snapshot.",
    "percent_agreement": "Share of agreeing annotator pairs in the latest agreement snapshot.",
}
AUTOMATED_ACTIONS = ("auto_accept", "auto_reject")
WAIT_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"))
FALLBACK_OUTCOMES = ("approve", "reject", "escalate")
SUCCESS_LOOKBACK = 100  # newest runs of a job searched for its last success when the newest one failed


class SyncMetricsCollector(Collector):
    """A Prometheus collector over a :class:`StateStore`; register it in a ``CollectorRegistry``."""

    def __init__(self, store: StateStore, spec: TaskSpec | None = None) -> None:
        self.store = store
        self.spec = spec  # the task (for its [thresholds] adapt); without it adapt = true is assumed

    def describe(self) -> Iterable[Metric]:
        return ()  # never query the store when registered

    def collect(self) -> Iterator[Metric]:
        sections: tuple[Callable[[], list[Metric]], ...] = (
            self._items, self._decisions, self._snapshots, self._jobs, self._online)
        up = 1
        for section in sections:
            try:
                families = section()
            except Exception:  # a scrape must answer while the database is away
                log.warning("metrics: the state store did not answer (%s); left out the rest", section.__name__,
                            exc_info=True)
                up = 0
                break  # an unreachable database would make every other query wait its timeout too
            yield from families
        yield GaugeMetricFamily("hitl_store_up", "1 when the state store answered the scrape, else 0.", value=up)

    # ---------------------------------------------------------------- sections

    def _items(self) -> list[Metric]:
        items = GaugeMetricFamily("hitl_items", "Current items in each state.", labels=["state"])
        for state, n in self.store.items.counts_by_state().items():
            items.add_metric([state], n)
        queue = GaugeMetricFamily("hitl_review_queue", "Items routed to review, waiting to be pushed.",
                                  value=self._review_queue())
        return [items, queue]

    def _review_queue(self) -> int:
        """``len(store.decisions.routed(action="review"))`` as one count query."""
        latest = (select(RoutingDecision.item_id, func.max(RoutingDecision.id).label("id"))
                  .group_by(RoutingDecision.item_id).subquery())
        stmt = (select(func.count()).select_from(Item).join(latest, latest.c.item_id == Item.id)
                .join(RoutingDecision, RoutingDecision.id == latest.c.id)
                .where(Item.is_current, Item.state == "routed", RoutingDecision.action == "review"))
        with Session(read_only(self.store.engine)) as s:
            return int(s.scalar(stmt) or 0)

    def _decisions(self) -> list[Metric]:
        counts = self.store.decisions.counts()
        decisions = GaugeMetricFamily("hitl_routing_decisions", "Items whose latest routing decision is each action.",
                                      labels=["action"])
        for action, n in sorted(counts.items()):
            decisions.add_metric([action], n)
        total = sum(counts.values())
        review = counts.get("review", 0) / total if total else 0.0
        automated = sum(counts.get(a, 0) for a in AUTOMATED_ACTIONS) / total if total else 0.0
        return [decisions,
                GaugeMetricFamily("hitl_review_rate", "Share of decided items routed to human review.", value=review),
                GaugeMetricFamily("hitl_automation_rate", "Share of decided items auto-accepted or auto-rejected.",
                                  value=automated)]

    def _snapshots(self) -> list[Metric]:
        out: list[Metric] = []
        agreement = read_latest(self.store, AgreementSnapshot)
        for key, doc in AGREEMENT_KEYS.items():
            value = _number(getattr(agreement.snapshot, key)) if agreement else None
            if value is not None:
                out.append(GaugeMetricFamily(f"hitl_{key}", doc, value=value))
        if agreement is not None:
            out.extend(_control_agreement(agreement.snapshot))
        model = read_latest(self.store, ModelSnapshot)
        if model is not None and model.snapshot.current is not None:
            info = GaugeMetricFamily("hitl_model_info", "The promoted model version (value 1).", labels=["version"])
            info.add_metric([model.snapshot.current], 1)
            out.append(info)
        rule = in_force(self.store, self.spec)
        state = GaugeMetricFamily("hitl_auto_accept", "The auto-accept rule in force (1) and the others (0).",
                                  labels=["state"])
        for name in ("certified", "off", "uncertified"):
            state.add_metric([name], 1.0 if rule.state == name else 0.0)
        out.append(state)
        threshold = _number(rule.threshold)
        if threshold is not None:
            out.append(GaugeMetricFamily("hitl_accept_threshold", "Confidence from which a prediction is auto-accepted.",
                                         value=threshold))
        out.append(GaugeMetricFamily("hitl_auto_accept_paused", "1 while failing spot checks hold auto-accept off.",
                                     value=1.0 if rule.paused else 0.0))
        return out + self._stopping() + self._checks()

    def _stopping(self) -> list[Metric]:
        stopping = read_latest(self.store, StoppingSnapshot)
        if stopping is None:
            return []
        out: list[Metric] = []
        kappa = _number(stopping.snapshot.kappa)
        if kappa is not None:
            out.append(GaugeMetricFamily("hitl_stopping_kappa", "Cohen's kappa between the last two retrainings' "
                                         "candidates' predictions on the stop set.", value=kappa))
        out.append(GaugeMetricFamily("hitl_stopping_fired", "1 when the stopping rule fired: more labels are "
                                     "unlikely to change the model.", value=1.0 if stopping.snapshot.fired else 0.0))
        return out

    def _checks(self) -> list[Metric]:
        checks = read_latest(self.store, ChecksSnapshot)
        names = ("kind", "model_version", "label")
        families = {key: GaugeMetricFamily(f"hitl_check_{key}", doc, labels=list(names)) for key, doc in (
            ("items", "Answered checks (spot_check, audit, gold) per model version and predicted label."),
            ("accuracy", "Realized accuracy of the model on answered checks."),
            ("accuracy_lower", "Lower Clopper-Pearson bound of that accuracy."),
            ("accuracy_upper", "Upper Clopper-Pearson bound of that accuracy."))}
        for row in checks.snapshot.rows if checks else []:
            key = [row.kind, row.model_version, row.label]
            families["items"].add_metric(key, row.n)
            for name, value in (("accuracy", row.accuracy), ("accuracy_lower", row.lower),
                                ("accuracy_upper", row.upper)):
                if _number(value) is not None:
                    families[name].add_metric(key, float(value))
        return list(families.values())

    def _jobs(self) -> list[Metric]:
        runs = CounterMetricFamily("hitl_job_runs", "Runs of each scheduled job.", labels=["job"])
        failures = CounterMetricFamily("hitl_job_failures", "Failed runs of each scheduled job.", labels=["job"])
        success = GaugeMetricFamily("hitl_job_last_success_timestamp_seconds",
                                    "When the job's last successful run finished (Unix time).", labels=["job"])
        for job, entry in sorted(self.store.job_runs.summary().items()):
            runs.add_metric([job], entry["runs"])
            failures.add_metric([job], entry["failures"])
            finished = self._last_success(job, entry)
            if finished is not None:
                success.add_metric([job], _timestamp(finished))
        return [runs, failures, success]

    def _online(self) -> list[Metric]:
        stats = self.store.online.stats()
        queue = GaugeMetricFamily("hitl_decision_queue", "On-line decisions waiting for a person.",
                                  value=stats["queue"])
        oldest = GaugeMetricFamily("hitl_decision_queue_oldest_age_seconds",
                                   "Seconds the oldest decision waiting for a person has waited (0 when none).",
                                   value=stats["oldest_pending_s"])
        wait = GaugeMetricFamily("hitl_decision_wait_seconds",
                                 "Seconds from a decision's request to a person's outcome, quantiles over the "
                                 "last hour's reviewed decisions.", labels=["quantile"])
        for q, key in WAIT_QUANTILES:
            value = _number(stats["wait_s"][key])
            if value is not None:
                wait.add_metric([q], value)
        decisions = GaugeMetricFamily("hitl_decisions", "On-line decisions by status and the rule that decided.",
                                      labels=["status", "rule"])
        for (status, rule), n in sorted(stats["by_status_rule"].items()):
            decisions.add_metric([status, rule], n)
        fallbacks = CounterMetricFamily("hitl_decision_fallbacks",
                                        "Deadline fallbacks by outcome (approve, reject: reviewer timeout; "
                                        "escalate: moved up the queue).", labels=["outcome"])
        for outcome in FALLBACK_OUTCOMES:
            fallbacks.add_metric([outcome], stats["fallbacks_by_outcome"].get(outcome, 0))
        callbacks = GaugeMetricFamily("hitl_decision_callbacks", "Outcome callbacks by delivery status.",
                                      labels=["status"])
        for status in CALLBACK_STATUSES:
            callbacks.add_metric([status], stats["callbacks"].get(status, 0))
        failed = CounterMetricFamily("hitl_decision_callback_failed_attempts",
                                     "Callback delivery attempts that failed (non-2xx or no answer).",
                                     value=stats["callback_failed_attempts"])
        return [queue, oldest, wait, decisions, fallbacks, callbacks, failed]

    def _last_success(self, job: str, entry: dict[str, Any]) -> datetime | None:
        last_run = entry.get("last_run")
        if last_run is not None and last_run.status == "ok":
            return last_run.finished_at
        if entry["runs"] == entry["failures"]:
            return None  # every run failed: no query
        for run in self.store.job_runs.list(job, limit=SUCCESS_LOOKBACK):
            if run.status == "ok" and run.finished_at is not None:
                return run.finished_at
        return None


def _control_agreement(a: AgreementSnapshot) -> list[Metric]:
    """The label-set and per-control families of an agreement snapshot (only those with a value)."""
    masi = GaugeMetricFamily("hitl_agreement_masi_alpha", "Krippendorff's alpha with the MASI distance of a "
                             "label-set control in the latest agreement snapshot.", labels=["control"])
    per_label = GaugeMetricFamily("hitl_agreement_label_fleiss_kappa", "Fleiss' kappa of one label of a label-set "
                                  "control (does it apply?) in the latest agreement snapshot.",
                                  labels=["control", "label"])
    fleiss = GaugeMetricFamily("hitl_agreement_fleiss_kappa", "Fleiss' kappa of another one-label control in the "
                               "latest agreement snapshot.", labels=["control"])
    alpha = GaugeMetricFamily("hitl_agreement_krippendorff_alpha", "Krippendorff's alpha (nominal) of another "
                              "one-label control in the latest agreement snapshot.", labels=["control"])
    span_f1 = GaugeMetricFamily("hitl_agreement_span_f1", "Mean pairwise span F1 (exact match) of a span control "
                                "per label (micro: all labels) in the latest agreement snapshot.",
                                labels=["control", "label"])
    sets = [(a.control or "", a.masi_alpha, a.per_label)] if a.per_label else []
    sets += [(name, c.masi_alpha, c.per_label) for name, c in a.controls.items() if c.kind == "sets"]
    for name, value, labels in sets:
        _add(masi, [name], value)
        for part in labels:
            _add(per_label, [name, part.label], part.fleiss_kappa)
    for name, c in a.controls.items():
        if c.kind == "labels":
            _add(fleiss, [name], c.fleiss_kappa)
            _add(alpha, [name], c.krippendorff_alpha)
        elif c.kind == "spans":
            for label, f1 in c.span_f1.items():
                _add(span_f1, [name, label], f1)
    return [f for f in (masi, per_label, fleiss, alpha, span_f1) if f.samples]


def _add(family: GaugeMetricFamily, labels: list[str], value: Any) -> None:
    if (number := _number(value)) is not None:
        family.add_metric(labels, number)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _timestamp(value: datetime) -> float:
    # SQLite hands back naive datetimes; the store writes UTC
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).timestamp()
