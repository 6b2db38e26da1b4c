"""Section 8, model versions: one row per saved version with its held-out metrics and the
promotion decision, the latest retraining's comparison, and the trend of accuracy and ECE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from connector.report.figures import embed
from connector.report.markup import NO_DATA, esc, finite, nodata, num, or_dash, stamp, table
from connector.snapshots import Dated, HeldOutMetrics, RetrainSnapshot

if TYPE_CHECKING:
    from connector.model_store import ModelStore


def held_out(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    """A version's held-out metrics: the retraining's ``held_out``, else ``hitl train``'s top level."""
    held = metrics.get("held_out")
    return held if isinstance(held, Mapping) else metrics


def encoder_cell(encoder: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The version's encoder in words: frozen, or fine-tuned (how, in how long), with the choice."""
    info = encoder.get("finetune") or {}
    if not encoder.get("weights"):
        what = "frozen"
    elif info.get("reused_from"):
        what = f"fine-tuned, reused from {info['reused_from']}"
    else:
        tuned = info.get("finetune") or {}
        what = (f"fine-tuned ({info.get('method', '?')}, {tuned.get('steps_done', '?')} steps, "
                f"{float(info.get('seconds') or 0):.0f} s)")
    choice = metrics.get("choice")
    return f'<span title="{esc(choice)}">{esc(what)}</span>' if choice else esc(what)


def versions_section(plt: Any, models: ModelStore, retrain: Dated[RetrainSnapshot] | None) -> str:
    """The versions table (the current one marked), the latest retraining, and the metrics trend."""
    names = models.versions()
    if not names:
        return nodata(NO_DATA["versions"])
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
        held = held_out(metrics)
        promoted = metrics.get("promoted")
        acc.append(finite(held.get("accuracy")))
        ece.append(finite(held.get("ece")))
        mark = ' <span class="badge current">current</span>' if v == current else ""
        if m is None:
            rows.append((esc(v) + mark, "unreadable meta.json", "", "", "", "", "", "", "", ""))
        else:
            rows.append((esc(v) + mark, esc(stamp(m.created_at)), esc(m.parent or "–"),
                         "–" if promoted is None else ("yes" if promoted else "no"),
                         num(held.get("accuracy")), num(held.get("macro_f1")), num(held.get("ece")),
                         num(held.get("log_loss")), encoder_cell(m.encoder, metrics),
                         esc(metrics.get("decision") or (f"hitl train on {metrics['dataset']}"
                                                        if metrics.get("dataset") else "–"))))
        classes.append("current" if v == current else "")
    out = table(["version", "created", "parent", "promoted", "held-out accuracy", "macro-F1", "ECE", "log loss",
                  "encoder", "decision"], rows, row_classes=classes, numeric=(4, 5, 6, 7))
    if retrain is not None:
        r = retrain.snapshot
        cm, cur = r.candidate_metrics, r.current_metrics or HeldOutMetrics()
        out += (f"<p class=\"meta\">Latest retraining ({esc(stamp(retrain.at))}): candidate "
                f"{esc(r.candidate or '–')} vs current {esc(r.current or '–')} on "
                f"{esc(or_dash(r.n_test))} held-out labels ({esc(or_dash(r.n_train))} trained on): "
                f"{'promoted' if r.promoted else 'not promoted'}, {esc(r.reason or '')}. "
                f"Accuracy {num(cm.accuracy)} vs {num(cur.accuracy)}, log loss "
                f"{num(cm.log_loss)} vs {num(cur.log_loss)}.</p>")
    if all(a is None for a in acc) and all(e is None for e in ece):
        return out + nodata("held-out metrics: versions saved without an evaluation")
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

    return out + embed(plt, draw, "held-out accuracy and ECE per model version")

