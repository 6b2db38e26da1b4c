"""One self-contained HTML report on the human-in-the-loop process, for the ML engineers watching it.

:func:`build_report` reads the state store (the snapshots the scheduler's jobs keep, the item and
routing counts, the job runs) and the model versions, and returns one HTML page: plain CSS, no
scripts, every plot a PNG drawn with matplotlib (Agg) and embedded as a ``data:`` URI, so the file
can be mailed or attached to a ticket as is. Sections, in order (:data:`SECTION_TITLES`):

1. Summary: items by state, routing decisions, human labels, the served model, the auto-accept
   threshold and its error bound, flagged annotators, job runs and failures.
2. Calibration: reliability diagram of the latest retraining's held-out predictions, before and
   after temperature scaling, with the ECE of each.
3. Accuracy vs review rate: what the final labels' accuracy would be if the least confident x% went
   to humans (:func:`accuracy_vs_review`), with the no-review level, the oracle and the current
   threshold's review rate.
4. Threshold review: the upper confidence bound on the error of auto-accepted items against the
   threshold, the target, the review rate, and the rule's note.
5. Labels over time: settled labels per class (and the share routed to review) from the metrics
   job's ``counts`` snapshots.
6. Annotator agreement: Cohen's kappa between annotator pairs; Fleiss' kappa, Krippendorff's alpha
   and percent agreement.
7. Annotator quality: gold accuracy and agreement with the consensus per annotator, flagged ones
   highlighted.
8. Model versions: one row per version with its held-out metrics and the promotion decision, and
   their trend.

A section without data says so ("no data yet: ...", naming what produces it), so the report
renders on an empty store. All text from the store is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from connector.calibration import expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from connector.model_store import ModelStore
    from connector.store import StateStore

#: the section headings, in order
SECTION_TITLES = ("Summary", "Calibration", "Accuracy vs review rate", "Threshold review", "Labels over time",
                  "Annotator agreement", "Annotator quality", "Model versions")
N_BINS = 15  # as in connector.calibration and the retraining's ECE

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;background:#fafafa;margin:0}
main{max-width:980px;margin:0 auto;padding:1.5em 2em 3em;background:#fff}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #e3e3e3;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}
nav ol{columns:2;font-size:.95em}nav a{color:#1f5fa8;text-decoration:none}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.current td{background:#eef6ee;font-weight:600}tr.flagged td{background:#fdecea}
.badge{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.8em;font-weight:600;color:#fff}
.badge.current{background:#2e7d32}.badge.flagged{background:#c62828}.badge.failed{background:#c62828}
.nodata{color:#777;font-style:italic}.meta{color:#666;font-size:.85em}
.note{background:#f6f8fa;border-left:3px solid #1f5fa8;padding:.5em .8em;font-size:.9em}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
"""

_NO_DATA = {
    "calibration": "the retrain job (`hitl scheduler once retrain`) keeps held-out predictions of each candidate",
    "accuracy": "the retrain job (`hitl scheduler once retrain`) keeps held-out predictions of each candidate",
    "thresholds": "the threshold review (`hitl scheduler once thresholds`, also run after each retraining)",
    "counts": "the metrics job (`hitl scheduler once metrics`) records label counts each run",
    "agreement": "the metrics job (`hitl scheduler once metrics`) once two annotators answered shared items",
    "quality": "the metrics job (`hitl scheduler once metrics`) once annotations came back",
    "versions": "`hitl train` or the retrain job saves model versions",
}


# ------------------------------------------------------------------------------------------------ pure helpers


def accuracy_vs_review(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy of the final labels when the least confident items go to human review.

    ``probs`` (n, k) are the model's probabilities, ``y`` (n,) the true class indices. Items are
    sorted by top-class confidence, ascending (ties in their given order); when the lowest ``m`` are
    reviewed (humans assumed right) and the rest keep the model's label, accuracy is
    ``(m + correct among the others) / n``. Returns ``(review_rates, accuracy)``, both of length
    ``n + 1`` for ``m = 0 .. n``: ``accuracy[0]`` is the model's accuracy, ``accuracy[-1]`` is 1.0.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if probs.ndim != 2 or y.ndim != 1 or len(probs) != len(y):
        raise ValueError(f"probs must be (n, k) and y (n,), got {probs.shape} and {y.shape}")
    n = len(y)
    if n == 0:
        raise ValueError("accuracy of an empty set is undefined")
    order = np.argsort(probs.max(axis=1), kind="stable")
    correct = (probs.argmax(axis=1) == y)[order]
    correct_after = np.concatenate([np.cumsum(correct[::-1])[::-1], [0]])  # correct among sorted[m:]
    m = np.arange(n + 1)
    return m / n, (m + correct_after) / n


def _f(value: Any) -> float | None:
    """A finite float, or ``None`` (for None, NaN, text...)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _num(value: Any, digits: int = 3) -> str:
    v = _f(value)
    return "–" if v is None else f"{v:.{digits}f}"


def _pct(value: Any, digits: int = 1) -> str:
    v = _f(value)
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _mpl(text: Any) -> str:
    """Text for matplotlib: a ``$`` would start mathtext."""
    return str(text).replace("$", r"\$")


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def _when(when: datetime | str | None) -> str:
    if when is None or when == "":
        return "–"
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when)
        except ValueError:
            return when
    return f"{_naive_utc(when):%Y-%m-%d %H:%M} UTC"


def _nodata(what: str) -> str:
    return f'<p class="nodata">no data yet: {_e(what)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, row_classes: Sequence[str] | None = None,
           numeric: Sequence[int] = ()) -> str:
    """A table from cells that are already HTML (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = row_classes[r] if row_classes else ""
        cells = "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ------------------------------------------------------------------------------------------------ plotting


@contextmanager
def _pyplot() -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"axes.spines.top": False, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
             "axes.titlesize": 10, "legend.fontsize": 8, "figure.dpi": 100}
    with plt.rc_context(style):
        yield plt


def _img(plt: Any, draw: Callable[[Any], Any], alt: str) -> str:
    """Run ``draw(plt)`` (it returns a figure), embed the figure as a PNG ``<img>``, and close it."""
    fig = None
    try:
        fig = draw(plt)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        if fig is not None:
            plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


# ------------------------------------------------------------------------------------------------ sections


def _payload(store: StateStore, kind: str) -> tuple[dict[str, Any], datetime | None]:
    snap = store.snapshots.latest(kind)
    if snap is None or not isinstance(snap.payload, Mapping):
        return {}, None
    return dict(snap.payload), snap.created_at


def _threshold_text(t: Mapping[str, Any]) -> str:
    threshold = _f(t.get("threshold"))
    if threshold is None:
        return "–"
    if threshold > 1.0:
        return "none: nothing is auto-accepted"
    return f"confidence ≥ {threshold:.4g}"


def _summary(store: StateStore, models: ModelStore, thresholds: Mapping[str, Any], quality: Mapping[str, Any]) -> str:
    states = store.items.counts_by_state()
    decisions = store.decisions.counts()
    labels = store.labels.list()
    routed = sum(decisions.values())
    by_method: dict[str, int] = {}
    for lb in labels:
        by_method[str(lb.method)] = by_method.get(str(lb.method), 0) + 1
    current = models.current()
    if current is None:
        current = _payload(store, "model")[0].get("current")
    flagged = [str(a) for a in quality.get("flagged") or []]

    rows: list[tuple[str, str]] = [
        ("items by state", ", ".join(f"{_e(s)} {n}" for s, n in states.items()) + f" (total {sum(states.values())})"),
    ]
    if routed:
        review, auto = decisions.get("review", 0), decisions.get("auto_accept", 0)
        rows.append(("routing decisions", ", ".join(f"{_e(a)} {n}" for a, n in sorted(decisions.items()))
                     + f"; review rate {_pct(review / routed)}, automation rate {_pct(auto / routed)}"))
    else:
        rows.append(("routing decisions", "none yet"))
    rows.append(("human labels (settled)", f"{len(labels)}" + (
        " (" + ", ".join(f"{_e(m)} {n}" for m, n in sorted(by_method.items())) + ")" if by_method else "")))
    rows.append(("current model version", _e(current) if current else "none yet (`hitl train`)"))
    if thresholds:
        bound = (f"error ≤ {_pct(thresholds.get('error_ucb'))} at {_pct(1 - (_f(thresholds.get('delta')) or 0.05), 0)}"
                 f" confidence (target {_pct(thresholds.get('target_error'))}, "
                 f"{'met' if thresholds.get('meets_target') else 'not met'}); "
                 f"{thresholds.get('errors', '–')} wrong of {thresholds.get('n', '–')} labeled items above it; "
                 f"review rate {_pct(thresholds.get('review_rate'))}")
        rows.append(("auto-accept threshold", f"{_e(_threshold_text(thresholds))}; {_e(bound)}"))
    else:
        rows.append(("auto-accept threshold", "no threshold review yet"))
    rows.append(("flagged annotators", ", ".join(f'<span class="badge flagged">flagged</span> {_e(a)}'
                                                 for a in flagged) if flagged else "none"))
    out = _table(["what", "value"], [(f"<b>{_e(k)}</b>", v) for k, v in rows])

    jobs = store.job_runs.summary()
    if jobs:
        job_rows, classes = [], []
        for job_id in sorted(jobs):
            s = jobs[job_id]
            last, err = s.get("last_run"), s.get("last_error")
            last_txt = f"{_e(_when(last.started_at))} {_e(last.status)}" if last is not None else "–"
            err_txt = f"{_e(_when(err.started_at))}: {_e((err.error or '')[:500])}" if err is not None else "–"
            job_rows.append((_e(job_id), str(s.get("runs", 0)), str(s.get("failures", 0)), last_txt, err_txt))
            classes.append("flagged" if last is not None and last.status == "failed" else "")
        out += "<h3>Job runs</h3>" + _table(["job", "runs", "failures", "last run", "last error"], job_rows,
                                            row_classes=classes, numeric=(1, 2))
    else:
        out += '<p class="meta">No job runs yet (the scheduler, or `hitl scheduler once JOB`).</p>'
    return out


def _reliability(retrain: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
    rel = retrain.get("reliability") or {}
    try:
        y = np.asarray(rel.get("y") or [], dtype=np.int64)
        cal = np.asarray(rel.get("calibrated") or [], dtype=np.float64)
        raw = np.asarray(rel.get("uncalibrated") or [], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if not len(y) or cal.ndim != 2 or cal.shape[0] != len(y):
        return None
    out = {"y": y, "calibrated": cal}
    if raw.ndim == 2 and raw.shape == cal.shape:
        out["uncalibrated"] = raw
    return out


def _calibration(plt: Any, retrain: Mapping[str, Any], when: datetime | None) -> str:
    rel = _reliability(retrain)
    if rel is None:
        return _nodata(_NO_DATA["calibration"])
    y = rel["y"]
    curves = [(name, rel[key]) for name, key in (("before calibration", "uncalibrated"),
                                                 ("after calibration", "calibrated")) if key in rel]

    def draw(plt: Any) -> Any:
        fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
        edges = np.linspace(0, 1, N_BINS + 1)
        for (name, probs), color in zip(curves, ("tab:orange", "tab:blue"), strict=False):
            b = reliability_bins(probs, y, n_bins=N_BINS)
            keep = b["count"] > 0
            ece = expected_calibration_error(probs, y, n_bins=N_BINS)
            ax.plot(b["confidence"][keep], b["accuracy"][keep], marker="o", color=color,
                    label=f"{name} (ECE {ece:.3f})")
            hist.hist(probs.max(axis=1), bins=edges, histtype="step", color=color, lw=1.5)
        ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
               title=f"Reliability on {len(y)} held-out labels ({N_BINS} bins)")
        ax.legend(loc="upper left")
        hist.set(xlabel="top-class confidence", ylabel="items")
        return fig

    img = _img(plt, draw, "reliability diagram before and after calibration")
    cm = retrain.get("candidate_metrics") or {}
    return (f'<p class="meta">Held-out labels of candidate {_e(retrain.get("candidate") or "–")} '
            f'(retraining of {_e(_when(when))}, {"promoted" if retrain.get("promoted") else "not promoted"}). '
            f"ECE {_num(cm.get('ece_uncalibrated'))} before and {_num(cm.get('ece'))} after temperature scaling.</p>"
            + img)


def _accuracy(plt: Any, retrain: Mapping[str, Any], thresholds: Mapping[str, Any]) -> str:
    rel = _reliability(retrain)
    if rel is None:
        return _nodata(_NO_DATA["accuracy"])
    probs, y = rel["calibrated"], rel["y"]
    rates, acc = accuracy_vs_review(probs, y)
    base = float(acc[0])
    current_rate = _f(thresholds.get("review_rate")) if thresholds else None
    threshold = _f(thresholds.get("threshold")) if thresholds else None

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        ax.plot(100 * rates, acc, color="tab:blue", lw=2, label="review the least confident first")
        ax.axhline(base, color="grey", ls="--", lw=1, label=f"no review ({base:.3f})")
        err = 1.0 - base
        ax.plot([0, 100 * err, 100], [base, 1.0, 1.0], color="tab:green", ls=":", lw=1.5,
                label=f"oracle: review exactly the errors ({100 * err:.1f}%)")
        if current_rate is not None:
            at = float(np.interp(current_rate, rates, acc))
            what = "nothing auto-accepted" if threshold is not None and threshold > 1 else f"threshold {threshold:.3g}"
            ax.axvline(100 * current_rate, color="tab:red", lw=1.2,
                       label=f"current {_mpl(what)}: review {100 * current_rate:.1f}% (acc. {at:.3f})")
        ax.set(xlabel="review rate (% of items sent to humans)", ylabel="accuracy of the final labels",
               xlim=(0, 100), ylim=(max(0.0, min(base, 1.0) - 0.03), 1.005),
               title=f"Accuracy vs review rate ({len(y)} held-out labels)")
        ax.legend(loc="lower right")
        return fig

    img = _img(plt, draw, "accuracy against review rate")
    text = (f"<p class=\"meta\">Held-out items sorted by calibrated confidence; the least confident x% are "
            f"reviewed by humans (taken as right), the rest keep the model's label. No review: {_num(base)}; "
            f"the oracle reaches 1.0 at the error rate {_pct(1 - base)}.")
    if current_rate is not None:
        text += (f" The current threshold reviews {_pct(current_rate)} of the pool, which on these items gives "
                 f"{_num(np.interp(current_rate, rates, acc))}.")
    return text + "</p>" + img


def _thresholds(plt: Any, t: Mapping[str, Any], when: datetime | None) -> str:
    if not t:
        return _nodata(_NO_DATA["thresholds"])
    rows = [("threshold", _e(_threshold_text(t))), ("error bound (UCB)", _pct(t.get("error_ucb"))),
            ("observed error", f"{_pct(t.get('error_rate'))} ({t.get('errors', '–')} of {t.get('n', '–')})"),
            ("target error / delta", f"{_pct(t.get('target_error'))} / {_num(t.get('delta'), 3)}"),
            ("review rate", _pct(t.get("review_rate"))),
            ("meets target / within band", f"{_e(t.get('meets_target'))} / {_e(t.get('within_band'))}"),
            ("applied automatically (adapt)", _e(t.get("adapt", "–")))]
    out = f'<p class="meta">Threshold review of {_e(_when(when))}.</p>' + _table(["what", "value"], rows)
    curve = [c for c in t.get("curve") or [] if isinstance(c, Mapping) and _f(c.get("threshold")) is not None]
    if curve:
        curve.sort(key=lambda c: float(c["threshold"]))
        x = np.array([float(c["threshold"]) for c in curve])
        ucb = np.array([_f(c.get("ucb")) or np.nan for c in curve])
        n = np.array([_f(c.get("n")) or np.nan for c in curve])
        err = np.array([_f(c.get("errors")) or 0.0 for c in curve]) / n
        review = np.array([_f(c.get("review_rate")) or np.nan for c in curve])
        target, chosen = _f(t.get("target_error")), _f(t.get("threshold"))

        def draw(plt: Any) -> Any:
            fig, ax = plt.subplots(figsize=(6.5, 4.2))
            ax.plot(x, ucb, color="tab:red", lw=2, label="error bound (UCB) of accepted items")
            ax.plot(x, err, color="tab:red", lw=1, ls=":", label="observed error of accepted items")
            if target is not None:
                ax.axhline(target, color="black", ls="--", lw=1, label=f"target {100 * target:.1f}%")
            if chosen is not None and chosen <= 1.0:
                ax.axvline(chosen, color="tab:green", lw=1.2, label=f"threshold {chosen:.3g}")
            ax.set(xlabel="auto-accept threshold (confidence ≥)", ylabel="error of auto-accepted items",
                   title="Threshold candidates tested (high to low)")
            ax.set_ylim(bottom=0)
            ax2 = ax.twinx()
            ax2.spines["right"].set_visible(True)
            ax2.plot(x, 100 * review, color="tab:blue", lw=1.5, label="review rate (pool)")
            ax2.set_ylabel("review rate (%)", color="tab:blue")
            ax2.set_ylim(0, 100)
            ax2.grid(False)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, loc="upper right")
            return fig

        out += _img(plt, draw, "error bound and review rate against the threshold")
    else:
        out += '<p class="meta">No threshold could be tested (too few labeled items): no curve.</p>'
    if t.get("note"):
        out += f'<p class="note">{_e(t["note"])}</p>'
    return out


def _labels_over_time(plt: Any, store: StateStore) -> str:
    snaps = [s for s in store.snapshots.list("counts") if isinstance(s.payload, Mapping)]
    series = [(s.created_at, {str(k): int(v) for k, v in (s.payload.get("labels") or {}).items()},
               s.payload.get("decisions") or {}) for s in snaps]
    series = [row for row in series if row[1]]
    if not series:
        return _nodata(_NO_DATA["counts"])
    totals: dict[str, int] = {}
    for _, counts, _ in series:
        for k, v in counts.items():
            totals[k] = max(totals.get(k, 0), v)
    names = sorted(totals, key=lambda k: (-series[-1][1].get(k, 0), k))
    latest = series[-1][1]
    if len(series) == 1:
        def draw(plt: Any) -> Any:
            fig, ax = plt.subplots(figsize=(6.5, max(2.5, 0.35 * len(names) + 1)))
            vals = [latest.get(k, 0) for k in names]
            ax.barh(range(len(names)), vals, color="tab:blue")
            ax.set_yticks(range(len(names)), [_mpl(k) for k in names])
            ax.invert_yaxis()
            for i, v in enumerate(vals):
                ax.annotate(str(v), (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
            ax.set(xlabel="settled labels", title=f"Settled labels per class ({_when(series[-1][0])})")
            return fig

        note = "Only one metrics run so far: the latest counts."
    else:
        times = [_naive_utc(when) for when, _, _ in series]
        rates = []
        for _, _, d in series:
            total = sum(int(v) for v in d.values())
            rates.append(int(d.get("review", 0)) / total if total else np.nan)

        def draw(plt: Any) -> Any:
            has_rate = bool(np.isfinite(rates).any())
            fig, axes = plt.subplots(2 if has_rate else 1, 1, figsize=(7, 5.8 if has_rate else 4), sharex=True,
                                     squeeze=False, gridspec_kw={"height_ratios": [3, 1.3] if has_rate else [1]})
            ax = axes[0, 0]
            ax.stackplot(times, [[c.get(k, 0) for _, c, _ in series] for k in names],
                         labels=[_mpl(k) for k in names], alpha=0.85)
            ax.set(ylabel="settled labels", title="Settled labels per class over time")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
            if has_rate:
                ax_r = axes[1, 0]
                ax_r.plot(times, 100 * np.array(rates), marker=".", color="tab:red")
                ax_r.set(ylabel="routed to review (%)", ylim=(0, 100))
            from matplotlib import dates as mdates

            locator = mdates.AutoDateLocator()
            axes[-1, 0].xaxis.set_major_locator(locator)
            axes[-1, 0].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            axes[-1, 0].set_xlabel("time (UTC)")
            return fig

        note = f"{len(series)} metrics runs, {_when(series[0][0])} to {_when(series[-1][0])}."
    rows = [(_e(k), str(latest.get(k, 0))) for k in names]
    return (f'<p class="meta">{_e(note)}</p>' + _img(plt, draw, "settled labels per class")
            + _table(["label", "settled (latest)"], rows, numeric=(1,)))


def _agreement(plt: Any, a: Mapping[str, Any], when: datetime | None) -> str:
    if not a or not a.get("n_items"):
        return _nodata(_NO_DATA["agreement"])
    names = [str(n) for n in a.get("annotators") or []]
    stats = [("items / annotators / answers", f"{a.get('n_items')} / {a.get('n_annotators')} / {a.get('n_answers', '–')}"),
             ("percent agreement", _pct(a.get("percent_agreement"))),
             ("Fleiss' kappa", _num(a.get("fleiss_kappa"))),
             ("Krippendorff's alpha (nominal)", _num(a.get("krippendorff_alpha"))),
             ("mean pairwise Cohen's kappa", _num(a.get("mean_cohen_kappa")))]
    out = f'<p class="meta">Metrics run of {_e(_when(when))}.</p>' + _table(["what", "value"], [(_e(k), _e(v)) for k, v in stats])
    try:
        K = np.array([[np.nan if v is None else float(v) for v in row] for row in a.get("cohen_kappa") or []])
        pairs = a.get("pair_counts")
        P = np.array(pairs, dtype=float) if pairs is not None else None
    except (TypeError, ValueError):
        K, P = np.zeros((0, 0)), None
    A = len(names)
    if A < 2 or K.shape != (A, A):
        return out + _nodata("a kappa matrix needs two annotators who answered the same items")
    if P is not None and P.shape != (A, A):
        P = None

    def draw(plt: Any) -> Any:
        size = min(11.0, max(4.5, 0.7 * A + 2))
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(np.ma.masked_invalid(K), cmap="RdYlGn", vmin=-1, vmax=1)
        ax.set_xticks(range(A), [_mpl(n) for n in names], rotation=45, ha="right")
        ax.set_yticks(range(A), [_mpl(n) for n in names])
        ax.grid(False)
        fs = 8 if A <= 10 else 6
        show_n = P is not None and A <= 12  # beyond that the cells are too small for two lines
        for i in range(A if A <= 30 else 0):
            for j in range(A):
                txt = "–" if not np.isfinite(K[i, j]) else f"{K[i, j]:.2f}"
                if show_n and i != j:
                    txt += f"\nn={int(P[i, j])}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=fs)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="Cohen's kappa")
        ax.set_title("Pairwise Cohen's kappa" + (" (n: items both answered)" if show_n else ""))
        return fig

    return out + _img(plt, draw, "Cohen's kappa between annotator pairs")


def _quality(plt: Any, q: Mapping[str, Any], when: datetime | None) -> str:
    rows = [r for r in q.get("annotators") or [] if isinstance(r, Mapping)] if q else []
    if not rows:
        return _nodata(_NO_DATA["quality"])
    flagged = {str(a) for a in q.get("flagged") or []}
    is_flagged = [bool(r.get("flagged")) or str(r.get("annotator")) in flagged for r in rows]
    names = [str(r.get("annotator")) for r in rows]
    gold = [_f(r.get("gold_accuracy")) for r in rows]
    cons = [_f(r.get("consensus_agreement")) for r in rows]

    def draw(plt: Any) -> Any:
        A = len(rows)
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.55 * A + 1.2)))
        pos = np.arange(A)
        h = 0.38
        for i in range(A):
            edge = "tab:red" if is_flagged[i] else "none"
            for off, val, color, n, label in ((-h / 2, gold[i], "tab:blue", rows[i].get("gold_n"), "gold accuracy"),
                                              (h / 2, cons[i], "tab:orange", rows[i].get("consensus_n"),
                                               "agreement with consensus")):
                ax.barh(pos[i] + off, val or 0.0, height=h, color=color, edgecolor=edge, linewidth=2,
                        hatch="//" if is_flagged[i] else None, label=label if i == 0 else None)
                txt = "n/a" if val is None else f"{val:.2f}"
                ax.annotate(f"{txt} (n={n if n is not None else 0})", (val or 0.0, pos[i] + off), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(pos, [_mpl(n) + ("  [flagged]" if f else "") for n, f in zip(names, is_flagged, strict=True)])
        for tick, f in zip(ax.get_yticklabels(), is_flagged, strict=True):
            if f:
                tick.set_color("tab:red")
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set(xlim=(0, 1.18), xlabel="share right", title="Annotator quality (flagged: low gold accuracy)")
        ax.legend(loc="lower right")
        return fig

    img = _img(plt, draw, "gold accuracy and agreement with the consensus per annotator")
    cells, classes = [], []
    for r, name, f in zip(rows, names, is_flagged, strict=True):
        mark = ' <span class="badge flagged">flagged</span>' if f else ""
        cells.append((_e(name) + mark, _e(r.get("answers", "–")), _e(r.get("gold_n", 0)), _e(r.get("gold_correct", 0)),
                      _num(r.get("gold_accuracy")), _e(r.get("consensus_n", 0)), _num(r.get("consensus_agreement"))))
        classes.append("flagged" if f else "")
    table = _table(["annotator", "answers", "gold n", "gold right", "gold accuracy", "consensus n",
                    "consensus agreement"], cells, row_classes=classes, numeric=(1, 2, 3, 4, 5, 6))
    return f'<p class="meta">Metrics run of {_e(_when(when))}.</p>' + img + table


def _held_out(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """A version's held-out metrics: the retraining's ``held_out``, else ``hitl train``'s top level."""
    held = metrics.get("held_out")
    return held if isinstance(held, Mapping) else metrics


def _versions(plt: Any, models: ModelStore, retrain: Mapping[str, Any], when: datetime | None) -> str:
    names = models.versions()
    if not names:
        return _nodata(_NO_DATA["versions"])
    current = models.current()
    metas: list[tuple[str, Any]] = []
    for v in names:
        try:
            metas.append((v, models.meta(v)))
        except (OSError, ValueError, TypeError):
            metas.append((v, None))
    rows, classes = [], []
    acc, ece = [], []
    for v, m in metas:
        metrics = (m.metrics if m is not None and isinstance(m.metrics, Mapping) else {})
        held = _held_out(metrics)
        promoted = metrics.get("promoted")
        acc.append(_f(held.get("accuracy")))
        ece.append(_f(held.get("ece")))
        mark = ' <span class="badge current">current</span>' if v == current else ""
        if m is None:
            rows.append((_e(v) + mark, "unreadable meta.json", "", "", "", "", "", "", ""))
        else:
            rows.append((_e(v) + mark, _e(_when(m.created_at)), _e(m.parent or "–"),
                         "–" if promoted is None else ("yes" if promoted else "no"),
                         _num(held.get("accuracy")), _num(held.get("macro_f1")), _num(held.get("ece")),
                         _num(held.get("log_loss")),
                         _e(metrics.get("decision") or (f"hitl train on {metrics['dataset']}"
                                                        if metrics.get("dataset") else "–"))))
        classes.append("current" if v == current else "")
    out = _table(["version", "created", "parent", "promoted", "held-out accuracy", "macro-F1", "ECE", "log loss",
                  "decision"], rows, row_classes=classes, numeric=(4, 5, 6, 7))
    if retrain:
        cm, cur = retrain.get("candidate_metrics") or {}, retrain.get("current_metrics") or {}
        out += (f"<p class=\"meta\">Latest retraining ({_e(_when(when))}): candidate "
                f"{_e(retrain.get('candidate') or '–')} vs current {_e(retrain.get('current') or '–')} on "
                f"{_e(retrain.get('n_test', '–'))} held-out labels ({_e(retrain.get('n_train', '–'))} trained on): "
                f"{'promoted' if retrain.get('promoted') else 'not promoted'}, {_e(retrain.get('reason') or '')}. "
                f"Accuracy {_num(cm.get('accuracy'))} vs {_num(cur.get('accuracy'))}, log loss "
                f"{_num(cm.get('log_loss'))} vs {_num(cur.get('log_loss'))}.</p>")
    if all(a is None for a in acc) and all(e is None for e in ece):
        return out + _nodata("held-out metrics: versions saved without an evaluation")
    x = np.arange(len(names))
    a_arr = np.array([np.nan if a is None else a for a in acc])
    e_arr = np.array([np.nan if e is None else e for e in ece])
    promoted = [bool((m.metrics or {}).get("promoted", True)) if m is not None else True for _, m in metas]

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(max(5.5, min(12.0, 0.5 * len(names) + 3)), 3.8))
        ok = np.isfinite(a_arr)
        ax.plot(x[ok], a_arr[ok], color="tab:blue", marker="o", label="held-out accuracy")
        rejected = ok & ~np.array(promoted)
        if rejected.any():
            ax.plot(x[rejected], a_arr[rejected], ls="none", marker="o", color="white", markeredgecolor="tab:blue",
                    label="candidate not promoted")
        ax.set_ylabel("accuracy", color="tab:blue")
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        ok_e = np.isfinite(e_arr)
        ax2.plot(x[ok_e], e_arr[ok_e], color="tab:orange", marker="s", ls="--", label="held-out ECE")
        ax2.set_ylabel("ECE", color="tab:orange")
        ax2.set_ylim(bottom=0)
        ax2.grid(False)
        if current in names:
            ax.axvline(names.index(current), color="tab:green", lw=6, alpha=0.2, label=f"current ({current})")
        ax.set_xticks(x, names, rotation=45 if len(names) > 12 else 0)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set(xlabel="model version", title="Held-out metrics per version (each on its own held-out split)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4, frameon=False)
        return fig

    return out + _img(plt, draw, "held-out accuracy and ECE per model version")


# ------------------------------------------------------------------------------------------------ public API


def build_report(store: StateStore, models: ModelStore, *, title: str = "hitl report") -> str:
    """The report as one HTML page (plots embedded as base64 PNGs; no scripts, no external files)."""
    retrain, retrain_at = _payload(store, "retrain")
    thresholds, thresholds_at = _payload(store, "thresholds")
    agreement, agreement_at = _payload(store, "agreement")
    quality, quality_at = _payload(store, "quality")
    with _pyplot() as plt:
        bodies = [
            _summary(store, models, thresholds, quality),
            _calibration(plt, retrain, retrain_at),
            _accuracy(plt, retrain, thresholds),
            _thresholds(plt, thresholds, thresholds_at),
            _labels_over_time(plt, store),
            _agreement(plt, agreement, agreement_at),
            _quality(plt, quality, quality_at),
            _versions(plt, models, retrain, retrain_at),
        ]
    anchors = [f"s{i + 1}" for i in range(len(SECTION_TITLES))]
    nav = "".join(f'<li><a href="#{a}">{_e(t)}</a></li>' for a, t in zip(anchors, SECTION_TITLES, strict=True))
    sections = "".join(f'<section id="{a}"><h2>{i + 1}. {_e(t)}</h2>{b}</section>'
                       for i, (a, t, b) in enumerate(zip(anchors, SECTION_TITLES, bodies, strict=True)))
    generated = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>"
            f"<h1>{_e(title)}</h1><p class=\"meta\">Generated {generated} from {_e(_store_name(store))} and "
            f"{_e(models.root)}.</p><nav><ol>{nav}</ol></nav>{sections}</main></body></html>\n")


def _store_name(store: StateStore) -> str:
    engine = getattr(store, "engine", None)
    return engine.url.render_as_string(hide_password=True) if engine is not None else repr(store)


def write_report(store: StateStore, models: ModelStore, path: str | Path, *, title: str = "hitl report") -> Path:
    """Write :func:`build_report` to ``path`` (UTF-8; parent folders created) and return the path."""
    path = Path(path)
    text = build_report(store, models, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
