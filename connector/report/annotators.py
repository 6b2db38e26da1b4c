"""Sections 6 and 7, from the metrics job's snapshots: agreement between annotators (Cohen's kappa
per pair, Fleiss' kappa, Krippendorff's alpha, percent agreement; for label sets Krippendorff's alpha
with the MASI distance and a per-label table; each other control's agreement, span F1 per label for
entity spans) and each annotator's quality (gold accuracy, agreement with the consensus), flagged
annotators highlighted."""

from __future__ import annotations

from typing import Any

import numpy as np

from connector.report.figures import embed
from connector.report.markup import NO_DATA, esc, finite, mpl_text, nodata, num, or_dash, pct, stamp, table
from connector.snapshots import AgreementSnapshot, ControlAgreement, Dated, LabelAgreement, QualitySnapshot

CONTROL_KINDS = {"labels": "one label", "sets": "label sets", "spans": "entity spans"}  # ControlAgreement.kind


def agreement_section(plt: Any, latest: Dated[AgreementSnapshot] | None) -> str:
    """The agreement statistics, then the pairwise kappa matrix (with the items each pair shares); for
    a label-set primary control its MASI alpha and a per-label table instead; then each other
    control's agreement."""
    if latest is None or not (latest.snapshot.n_items or any(c.n_items for c in latest.snapshot.controls.values())):
        return nodata(NO_DATA["agreement"])
    a = latest.snapshot
    out = f'<p class="meta">Metrics run of {esc(stamp(latest.at))}.</p>'
    if a.per_label:
        out += _set_agreement(a.n_items, a.n_annotators, a.n_answers, a.masi_alpha, a.exact_agreement, a.per_label)
    elif a.n_items:
        out += _one_label_agreement(plt, a)
    else:
        out += nodata(NO_DATA["agreement"])
    for name, control in a.controls.items():
        out += f"<h3>Control {esc(name)} ({esc(CONTROL_KINDS.get(control.kind, control.kind))})</h3>"
        out += _control_agreement(control)
    return out


def _counts(n_items: int, n_annotators: int, n_answers: int | None) -> tuple[str, str]:
    return "items / annotators / answers", f"{n_items} / {n_annotators} / {or_dash(n_answers)}"


def _set_agreement(n_items: int, n_annotators: int, n_answers: int | None, masi: float | None,
                   exact: float | None, per_label: list[LabelAgreement]) -> str:
    """Agreement on label sets: the counts, MASI alpha and exact agreement, then one row per label."""
    stats = [_counts(n_items, n_annotators, n_answers),
             ("Krippendorff's alpha (MASI distance, whole sets)", num(masi)),
             ("exact agreement (whole sets)", pct(exact))]
    rows = [(esc(p.label), esc(p.n_items), esc(p.n_yes), num(p.fleiss_kappa), num(p.mean_cohen_kappa),
             num(p.krippendorff_alpha), pct(p.percent_agreement)) for p in per_label]
    return (table(["what", "value"], [(esc(k), esc(v)) for k, v in stats])
            + table(["label (applies or not)", "items", "answers giving it", "Fleiss' kappa", "mean Cohen's kappa",
                     "Krippendorff's alpha", "percent agreement"], rows, numeric=(1, 2, 3, 4, 5, 6)))


def _control_agreement(c: ControlAgreement) -> str:
    """One other control's agreement: by its kind, the one-label statistics, the set agreement, or
    the span F1 per label."""
    if not c.n_items:
        return nodata("no answers to this control yet")
    if c.kind == "sets":
        return _set_agreement(c.n_items, c.n_annotators, c.n_answers, c.masi_alpha, c.exact_agreement, c.per_label)
    if c.kind == "spans":
        stats = [_counts(c.n_items, c.n_annotators, c.n_answers), ("annotator pairs with a shared item", or_dash(c.pairs))]
        rows = [(esc(label), num(f1)) for label, f1 in c.span_f1.items()]
        return (table(["what", "value"], [(esc(k), esc(v)) for k, v in stats])
                + table(["label", "mean pairwise span F1 (exact match)"], rows, numeric=(1,)))
    stats = [_counts(c.n_items, c.n_annotators, c.n_answers),
             ("percent agreement", pct(c.percent_agreement)),
             ("Fleiss' kappa", num(c.fleiss_kappa)),
             ("Krippendorff's alpha (nominal)", num(c.krippendorff_alpha)),
             ("mean pairwise Cohen's kappa", num(c.mean_cohen_kappa))]
    return table(["what", "value"], [(esc(k), esc(v)) for k, v in stats])


def _one_label_agreement(plt: Any, a: AgreementSnapshot) -> str:
    """The one-label statistics and the pairwise kappa matrix."""
    names = list(a.annotators)
    stats = [_counts(a.n_items, a.n_annotators, a.n_answers),
             ("percent agreement", pct(a.percent_agreement)),
             ("Fleiss' kappa", num(a.fleiss_kappa)),
             ("Krippendorff's alpha (nominal)", num(a.krippendorff_alpha)),
             ("mean pairwise Cohen's kappa", num(a.mean_cohen_kappa))]
    out = table(["what", "value"], [(esc(k), esc(v)) for k, v in stats])
    try:
        K = np.array([[np.nan if v is None else float(v) for v in row] for row in a.cohen_kappa])
        P = np.array(a.pair_counts, dtype=float) if a.pair_counts is not None else None
    except (TypeError, ValueError):
        K, P = np.zeros((0, 0)), None
    A = len(names)
    if A < 2 or K.shape != (A, A):
        return out + nodata("a kappa matrix needs two annotators who answered the same items")
    if P is not None and P.shape != (A, A):
        P = None

    def draw(plt: Any) -> Any:
        size = min(11.0, max(4.5, 0.7 * A + 2))
        fig, ax = plt.subplots(figsize=(size + 1, size))
        im = ax.imshow(np.ma.masked_invalid(K), cmap="RdYlGn", vmin=-1, vmax=1)
        ax.set_xticks(range(A), [mpl_text(n) for n in names], rotation=45, ha="right")
        ax.set_yticks(range(A), [mpl_text(n) for n in names])
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

    return out + embed(plt, draw, "Cohen's kappa between annotator pairs")


def quality_section(plt: Any, latest: Dated[QualitySnapshot] | None) -> str:
    """Gold accuracy and agreement with the consensus per annotator, as bars and as a table."""
    rows = latest.snapshot.annotators if latest else []
    if latest is None or not rows:
        return nodata(NO_DATA["quality"])
    flagged = set(latest.snapshot.flagged)
    is_flagged = [r.flagged or r.annotator in flagged for r in rows]
    names = [r.annotator for r in rows]
    gold = [finite(r.gold_accuracy) for r in rows]
    cons = [finite(r.consensus_agreement) for r in rows]

    def draw(plt: Any) -> Any:
        A = len(rows)
        fig, ax = plt.subplots(figsize=(7, max(2.5, 0.55 * A + 1.2)))
        pos = np.arange(A)
        h = 0.38
        for i in range(A):
            edge = "tab:red" if is_flagged[i] else "none"
            for off, val, color, n, label in ((-h / 2, gold[i], "tab:blue", rows[i].gold_n, "gold accuracy"),
                                              (h / 2, cons[i], "tab:orange", rows[i].consensus_n,
                                               "agreement with consensus")):
                ax.barh(pos[i] + off, val or 0.0, height=h, color=color, edgecolor=edge, linewidth=2,
                        hatch="//" if is_flagged[i] else None, label=label if i == 0 else None)
                txt = "n/a" if val is None else f"{val:.2f}"
                ax.annotate(f"{txt} (n={n if n is not None else 0})", (val or 0.0, pos[i] + off), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(pos, [mpl_text(n) + ("  [flagged]" if f else "") for n, f in zip(names, is_flagged, strict=True)])
        for tick, f in zip(ax.get_yticklabels(), is_flagged, strict=True):
            if f:
                tick.set_color("tab:red")
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set(xlim=(0, 1.18), xlabel="share right", title="Annotator quality (flagged: low gold accuracy)")
        ax.legend(loc="lower right")
        return fig

    img = embed(plt, draw, "gold accuracy and agreement with the consensus per annotator")
    cells, classes = [], []
    for r, name, f in zip(rows, names, is_flagged, strict=True):
        mark = ' <span class="badge flagged">flagged</span>' if f else ""
        cells.append((esc(name) + mark, esc(or_dash(r.answers)), esc(r.gold_n), esc(r.gold_correct),
                      num(r.gold_accuracy), esc(r.consensus_n), num(r.consensus_agreement)))
        classes.append("flagged" if f else "")
    rows_html = table(["annotator", "answers", "gold n", "gold right", "gold accuracy", "consensus n",
                       "consensus agreement"], cells, row_classes=classes, numeric=(1, 2, 3, 4, 5, 6))
    return f'<p class="meta">Metrics run of {esc(stamp(latest.at))}.</p>' + img + rows_html

