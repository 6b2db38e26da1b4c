"""What a simulation sweep reports: labels needed to reach an accuracy, and the HTML page."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hitl.simulate.loop import RunResult


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig: Any) -> str:
    """A figure as an embedded PNG ``<img>`` (base64), the figure closed."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def labels_to_reach(rounds: Sequence[dict[str, Any]], accuracy: float, *, key: str = "eval_accuracy") -> int | None:
    """Reviewed items from which on the evaluation accuracy stays at or above ``accuracy`` (the
    first point of the last run of rounds that all reach it; ``None`` if the last round does not).

    ``key``: ``eval_accuracy`` (the served model: what the loop delivers, promotion gate included)
    or ``eval_accuracy_newest`` (the model trained on every label so far: what the labels are worth)."""
    points = [p for p in rounds if p.get(key) is not None]
    need = None
    for point in reversed(points):
        if point[key] < accuracy - 1e-12:
            break
        need = int(point["reviewed"])
    return need


def stopping_text(r: RunResult) -> str:
    """Where the stopping rule fired, and the labels' accuracy there against the full budget's."""
    if r.stop_reviewed is None:
        return "did not fire"
    where = f"{r.stop_reviewed} reviewed ({100 * (r.stop_review_share or 0):.1f} %)"
    if r.stopped_early:
        return f"stopped at {where}: label accuracy {100 * (r.stop_label_accuracy or 0):.2f} %"
    return (f"stops at {where}: label accuracy {100 * (r.stop_label_accuracy or 0):.2f} % vs "
            f"{100 * r.label_accuracy:.2f} % at the full budget")


def write_html(results: Sequence[RunResult], path: Path, *, title: str) -> Path:
    """An HTML page: the figures table and plots (label accuracy against review share with the
    no-review level, the oracle and where the stopping rule fired; evaluation accuracy against
    labels, active learning against random)."""
    import html

    plt = pyplot()

    rows = "".join(
        f"<tr><td>{html.escape(r.strategy)}</td><td>{r.seed}</td><td>{r.items}</td><td>{r.reviewed} "
        f"({100 * r.review_share:.1f} %)</td><td>{r.answers} ({r.answers / max(r.reviewed, 1):.2f}/item)</td>"
        f"<td>{100 * r.label_accuracy:.2f} %</td><td>{100 * r.no_review_accuracy:.2f} %</td>"
        f"<td>{100 * r.oracle_accuracy:.2f} %</td><td>{r.auto_accepted}</td>"
        f"<td>{'-' if not r.threshold_certified else f'{r.threshold:.3f}'} ({r.threshold_evidence} random labels, "
        f"{r.audits} audits)</td>"
        f"<td>{'-' if r.auto_accept_error is None else f'{100 * r.auto_accept_error:.2f} %'} "
        f"(target {100 * r.target_error:.1f} %)</td><td>{r.ece_uncalibrated:.4f} → {r.ece_calibrated:.4f} "
        f"(T {r.temperature:.2f} on {r.calibration_labels} random labels)</td>"
        f"<td>{r.agreement.get('krippendorff_alpha') or 0:.3f}</td><td>{html.escape(stopping_text(r))}</td>"
        f"<td>{r.seconds:.0f} s</td></tr>" for r in results)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in results:
        pts = [p for p in r.rounds if "label_accuracy" in p]
        line, = ax.plot([100 * p["review_share"] for p in pts], [100 * p["label_accuracy"] for p in pts],
                        marker=".", label=f"{r.strategy} (seed {r.seed})")
        if r.stop_reviewed is not None:
            ax.plot([100 * (r.stop_review_share or 0)], [100 * (r.stop_label_accuracy or 0)], marker="v", ms=10,
                    ls="none", color=line.get_color(), label=f"stopping rule fires, {r.strategy} (seed {r.seed})")
        ax.plot([100 * p["review_share"] for p in pts],
                [100 * (1 - max(0, p["model_errors"] - p["reviewed"]) / r.items) for p in pts], ls=":",
                label=f"oracle, {r.strategy}'s model")
        ax.axhline(100 * r.no_review_accuracy, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("items reviewed by humans (%)")
    ax.set_ylabel("label accuracy (%)")
    ax.set_title("final labels: human where reviewed, model elsewhere (dashed: no review)")
    ax.legend(fontsize=8)
    parts = [png(fig)]
    if any("eval_accuracy" in p for r in results for p in r.rounds):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in results:
            pts = [p for p in r.rounds if "eval_accuracy" in p]
            line, = ax.plot([p["reviewed"] for p in pts], [100 * p["eval_accuracy"] for p in pts], marker=".",
                            label=f"{r.strategy} (seed {r.seed}), served")
            if all("eval_accuracy_newest" in p for p in pts):
                ax.plot([p["reviewed"] for p in pts], [100 * p["eval_accuracy_newest"] for p in pts], ls=":",
                        color=line.get_color(), label=f"{r.strategy} (seed {r.seed}), newest")
        ax.set_xlabel("items labelled")
        ax.set_ylabel("model accuracy on the held-out slice (%)")  # dotted: newest version, promoted or not
        ax.set_title("active learning against random picks")
        ax.legend(fontsize=8)
        parts.append(png(fig))
    head = ("<tr><th>strategy</th><th>seed</th><th>items</th><th>reviewed</th><th>human answers</th>"
            "<th>label accuracy</th><th>no review</th><th>oracle</th><th>auto-accepted</th><th>certified threshold</th>"
            "<th>auto-accept error</th>"
            "<th>ECE before → after</th><th>Krippendorff α</th><th>stopping rule</th><th>time</th></tr>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{head}{rows}</table>{''.join(parts)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
