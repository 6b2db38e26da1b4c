"""Section 4, the threshold review: the chosen auto-accept threshold, the upper confidence bound
on the error of the items it accepts, the target and the review rate, and the tested candidates;
then what the checks found (spot checks, audits, gold), with a pause of auto-accept said first."""

from __future__ import annotations

from typing import Any

import numpy as np

from connector.report.figures import embed
from connector.report.markup import NO_DATA, esc, finite, nodata, num, or_dash, pct, stamp, table
from connector.snapshots import ChecksSnapshot, Dated, ThresholdsSnapshot


def threshold_text(t: ThresholdsSnapshot) -> str:
    """The threshold in words (above 1.0 nothing is auto-accepted)."""
    threshold = finite(t.threshold)
    if threshold is None:
        return "–"
    if threshold > 1.0:
        return "none: nothing is auto-accepted"
    if t.label_thresholds:
        return (f"every label at or over its own threshold (path level {1.0 - threshold:.3g}): "
                + ", ".join(f"{label} ≥ {value:.4g}" for label, value in sorted(t.label_thresholds.items())))
    return f"confidence ≥ {threshold:.4g}"


def checks_table(checks: Dated[ChecksSnapshot] | None) -> str:
    """What the spot checks (the realized accuracy of auto-accepted items), audits and gold found, per
    model version (and per predicted label), with Clopper–Pearson intervals; a pause is said first."""
    if checks is None or not checks.snapshot.rows:
        return '<p class="meta">No answered spot check, audit or gold item yet.</p>'
    c = checks.snapshot
    head = (f'<p class="note"><span class="badge flagged">auto-accept paused</span> {esc(c.note)}</p>' if c.paused
            else f'<p class="meta">Checks read {esc(stamp(checks.at))}: {esc(c.note)}</p>')
    names = {"spot_check": "spot checks (auto-accepted items)", "audit": "audits (random)", "gold": "gold"}
    rows = [(esc(names.get(r.kind, r.kind)), esc(r.model_version), esc("all" if r.label == "*" else r.label),
             str(r.n), pct(r.accuracy), f"{pct(r.lower)} – {pct(r.upper)}") for r in c.rows]
    return head + table(["checks", "model version", "predicted label", "items", "realized accuracy",
                         "95 % interval (Clopper–Pearson)"], rows)


def thresholds_section(plt: Any, latest: Dated[ThresholdsSnapshot] | None,
                       checks: Dated[ChecksSnapshot] | None = None) -> str:
    """The latest review's numbers, its curve of tested candidates, and its note; then what the checks found."""
    if latest is None:
        return nodata(NO_DATA["thresholds"]) + checks_table(checks)
    t = latest.snapshot
    rows = [("threshold", esc(threshold_text(t))), ("error bound (UCB)", pct(t.error_ucb)),
            ("observed error", f"{pct(t.error_rate)} ({or_dash(t.errors)} of {or_dash(t.n)})"),
            ("target error / delta", f"{pct(t.target_error)} / {num(t.delta, 3)}"),
            ("review rate", pct(t.review_rate)),
            ("meets target / within band", f"{esc(t.meets_target)} / {esc(t.within_band)}"),
            ("applied automatically (adapt)", esc(or_dash(t.adapt)))]
    out = f'<p class="meta">Threshold review of {esc(stamp(latest.at))}.</p>' + table(["what", "value"], rows)
    curve = sorted((c for c in t.curve if finite(c.threshold) is not None), key=lambda c: float(c.threshold))
    if curve:
        x = np.array([float(c.threshold) for c in curve])
        ucb = np.array([finite(c.ucb) or np.nan for c in curve])
        n = np.array([finite(c.n) or np.nan for c in curve])
        err = np.array([finite(c.errors) or 0.0 for c in curve]) / n
        review = np.array([finite(c.review_rate) or np.nan for c in curve])
        target, chosen = finite(t.target_error), finite(t.threshold)

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

        out += embed(plt, draw, "error bound and review rate against the threshold")
    else:
        out += '<p class="meta">No threshold could be tested (too few labeled items): no curve.</p>'
    if t.note:
        out += f'<p class="note">{esc(t.note)}</p>'
    return out + checks_table(checks)

