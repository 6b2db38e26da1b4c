"""Section 5, labels over time: settled labels per class, and the share routed to review, from the
metrics job's ``counts`` snapshots (a bar chart while there is only one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from connector.report.figures import embed
from connector.report.markup import NO_DATA, esc, mpl_text, naive_utc, nodata, stamp, table
from connector.snapshots import CountsSnapshot, read_history

if TYPE_CHECKING:
    from connector.store import StateStore


def labels_section(plt: Any, store: StateStore) -> str:
    """Settled labels per class over the metrics runs, with the latest counts as a table."""
    series = [(d.at, dict(d.snapshot.labels), d.snapshot.decisions) for d in read_history(store, CountsSnapshot)]
    series = [row for row in series if row[1]]
    if not series:
        return nodata(NO_DATA["counts"])
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
            ax.set_yticks(range(len(names)), [mpl_text(k) for k in names])
            ax.invert_yaxis()
            for i, v in enumerate(vals):
                ax.annotate(str(v), (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
            ax.set(xlabel="settled labels", title=f"Settled labels per class ({stamp(series[-1][0])})")
            return fig

        note = "Only one metrics run so far: the latest counts."
    else:
        times = [naive_utc(when) for when, _, _ in series]
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
                         labels=[mpl_text(k) for k in names], alpha=0.85)
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

        note = f"{len(series)} metrics runs, {stamp(series[0][0])} to {stamp(series[-1][0])}."
    rows = [(esc(k), str(latest.get(k, 0))) for k in names]
    return (f'<p class="meta">{esc(note)}</p>' + embed(plt, draw, "settled labels per class")
            + table(["label", "settled (latest)"], rows, numeric=(1,)))

