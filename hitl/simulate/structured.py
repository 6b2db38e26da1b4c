"""``hitl simulate`` on the multi-label and the entity set: the runs, the rich tables, the HTML page.

``hitl simulate wnut16_types`` (label sets: :mod:`hitl.simulate.sets`) and ``hitl simulate wnut16``
(entity spans: :mod:`hitl.simulate.spans`) come here from :func:`hitl.cli.simulate`. Each seed runs
active learning (for sets: the least confident label and the mean binary entropy; for spans: the
lowest task score) and, with ``compare_random``, random picks, on the same pool and seed set.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from hitl.simulate.report import labels_to_reach, png, pyplot
from hitl.simulate.sets import SetRunResult, SetSimulationConfig, run_sets
from hitl.simulate.spans import SpanRunResult, SpanSimulationConfig, run_spans, token_features

#: data set name -> kind
DATASETS = {"wnut16_types": "sets", "wnut16": "spans"}
#: per kind: the headline figure of the final labels, the second one, the held-out figure of the model
KEYS = {"sets": ("exact_match", "micro_f1", "eval_micro_f1"), "spans": ("f1_exact", "f1_overlap", "eval_f1_exact")}
NAMES = {"exact_match": "exact-match accuracy", "micro_f1": "micro F1", "eval_micro_f1": "micro F1",
         "f1_exact": "span F1 (exact)", "f1_overlap": "span F1 (overlap)", "eval_f1_exact": "span F1 (exact)"}

Result = SetRunResult | SpanRunResult


def load(name: str, limit: int | None = None, seed: int = 0) -> Any:
    """The data set by name, at most ``limit`` items (a random subset, fixed by ``seed``)."""
    from connector.datasets import EntityTexts, LabelSets, wnut16, wnut16_entity_types

    ds = wnut16_entity_types() if DATASETS[name] == "sets" else wnut16()
    if not limit or limit >= len(ds.texts):
        return ds
    keep = np.sort(np.random.default_rng(seed).permutation(len(ds.texts))[:limit])
    if isinstance(ds, LabelSets):
        return LabelSets(ds.name, [ds.texts[i] for i in keep], [ds.labels[i] for i in keep], ds.classes)
    return EntityTexts(ds.name, [ds.texts[i] for i in keep], [ds.spans[i] for i in keep], ds.labels)


def simulate_structured(name: str, *, console: Console, encoder: Any, cache_store: Any, budget: float, batch: int,
                        seed_size: int, overlap: int, seeds: int, first_seed: int, compare_random: bool,
                        eval_fraction: float, limit: int | None, label_error: float, span_drop: float,
                        span_shift: float, span_relabel: float, out: Path) -> list[Result]:
    """Run the sweep, print the tables and write ``out`` (HTML) and its ``.json``; returns the runs."""
    from rich.progress import Progress

    from connector.model_store import model_ref
    from connector.retraining import EmbeddingCache, encoder_key

    kind = DATASETS[name]
    ds = load(name, limit)
    eval_fraction = max(eval_fraction, 0.2) if compare_random else eval_fraction
    strategies = ["least_confidence", "entropy"] if kind == "sets" else ["least_confidence"]
    strategies += ["random"] if compare_random else []
    results: list[Result] = []
    features = None
    if kind == "spans":
        with console.status(f"token states of {len(ds.texts)} texts"):
            features = token_features(encoder, ds, context=SpanSimulationConfig().context)
    cache = EmbeddingCache(cache_store, encoder, encoder_key({"model": model_ref(encoder), "max_length": encoder.max_length,
                                                              "normalize": encoder.normalize,
                                                              "chunk": getattr(encoder, "chunk", False)}))
    with Progress(console=console, transient=True) as progress, one_torch_thread():
        for seed in range(first_seed, first_seed + seeds):
            for strategy in strategies:
                task = progress.add_task(f"{ds.name} {strategy} seed {seed}", total=budget)

                def tick(p: dict[str, Any], t: Any = task) -> None:
                    progress.update(t, completed=p.get("review_share", 0))

                common = {"budget": budget, "batch": batch, "seed_size": seed_size, "overlap": overlap,
                          "strategy": strategy, "eval_fraction": eval_fraction, "seed": seed}
                if kind == "sets":
                    results.append(run_sets(ds, SetSimulationConfig(**common, label_error=label_error), cache=cache,
                                            progress=tick))
                else:
                    cfg = SpanSimulationConfig(**common, drop=span_drop, shift=span_shift, relabel=span_relabel)
                    results.append(run_spans(ds, cfg, encoder=encoder, features=features, progress=tick))
                out.parent.mkdir(parents=True, exist_ok=True)  # figures so far, should a long sweep stop
                out.with_suffix(".json").write_text(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    errors = (f"each label flipped with probability {label_error:.0%}" if kind == "sets" else
              f"spans dropped {span_drop:.0%}, boundary shifted {span_shift:.0%}, type changed {span_relabel:.0%}")
    title = f"simulation: {ds.name}, {len(ds.texts)} items, annotators: {errors} (figures in %)"
    console.print(sets_table(results, title) if kind == "sets" else spans_table(results, title))
    for line in summary(results, kind):
        console.print(line, highlight=False, soft_wrap=True)
    write_html(results, out, title=f"hitl simulate: {ds.name}", kind=kind)
    out.with_suffix(".json").write_text(json.dumps([r.to_dict() for r in results], indent=1, default=str))
    console.print(f"report: {out} (figures: {out.with_suffix('.json')})")
    return results


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one intra-op thread meanwhile: the heads are small, and the threads' barriers cost
    more than they gain (the span head's fits took 4.5x longer on two threads of a busy 2-core machine)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def _num(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def sets_table(results: Sequence[SetRunResult], title: str) -> Table:
    """One row per run: review share against the final labels' exact match and F1 (%), the seed
    model alone, the oracle, and the final model's mean per-label ECE before and after calibration."""
    table = Table(title=title)
    for col in ("strategy", "seed", "reviewed", "exact", "micro F1", "macro F1", "no review exact / µF1", "oracle exact",
                "ECE raw → cal"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r.strategy, str(r.seed), f"{r.reviewed} ({r.review_share:.0%})", _num(r.labels["exact_match"]),
                      _num(r.labels["micro_f1"]), _num(r.labels["macro_f1"]),
                      f"{_num(r.no_review['exact_match'])} / {_num(r.no_review['micro_f1'])}",
                      _num(r.oracle_exact_match), f"{r.ece_uncalibrated:.3f} → {r.ece_calibrated:.3f}")
    return table


def spans_table(results: Sequence[SpanRunResult], title: str) -> Table:
    """One row per run: review share against the final spans' F1 and items all right (%), the seed
    model alone, and the final model's span-score and missed-entity ECE."""
    table = Table(title=title)
    for col in ("strategy", "seed", "reviewed", "F1 exact", "F1 overlap", "macro F1", "items right", "no review F1",
                "span ECE", "missed ECE"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(r.strategy, str(r.seed), f"{r.reviewed} ({r.review_share:.0%})", _num(r.labels["f1_exact"]),
                      _num(r.labels["f1_overlap"]), _num(r.labels["macro_f1_exact"]), _num(r.labels["item_accuracy"]),
                      _num(r.no_review["f1_exact"]), f"{r.span_ece:.3f}", f"{r.missed_ece:.3f}")
    return table


def summary(results: Sequence[Result], kind: str) -> list[str]:
    """Active learning against random picks, seed by seed and on average, and the calibration lines."""
    head, second, held = KEYS[kind]
    lines = []
    seeds = sorted({r.seed for r in results})
    for strategy in sorted({r.strategy for r in results} - {"random"}):
        gains, saved = [], []
        for seed in seeds:
            al = next((r for r in results if r.seed == seed and r.strategy == strategy), None)
            rnd = next((r for r in results if r.seed == seed and r.strategy == "random"), None)
            if al is None or rnd is None:
                continue
            gains.append((al.labels[head] - rnd.labels[head], al.labels[second] - rnd.labels[second]))
            line = (f"seed {seed}, {strategy} against random at {al.review_share:.1%} reviewed: {NAMES[head]} "
                    f"{_pct(al.labels[head])} vs {_pct(rnd.labels[head])}, {NAMES[second]} {_pct(al.labels[second])} "
                    f"vs {_pct(rnd.labels[second])}")
            if rnd.rounds and held in rnd.rounds[-1]:
                goal = rnd.rounds[-1][held]
                need = labels_to_reach(al.rounds, goal, key=held)
                saved.append(None if need is None else 1 - need / rnd.reviewed)
                line += (f"; the model's held-out {NAMES[held]} {_pct(al.rounds[-1][held])} vs {_pct(goal)} ("
                         f"{'random’s never reached' if need is None else f'random’s reached with {need} vs {rnd.reviewed} labels'})")
            lines.append(line)
        if len(gains) > 1:
            g = np.array(gains)
            lines.append(f"{strategy} over {len(gains)} seeds: {NAMES[head]} {100 * g[:, 0].mean():+.1f} points, "
                         f"{NAMES[second]} {100 * g[:, 1].mean():+.1f} points against random"
                         + (_reached(saved) if saved else ""))
    for r in results:
        if isinstance(r, SetRunResult):
            worst = max(r.per_label_ece.items(), key=lambda kv: kv[1]) if r.per_label_ece else ("-", 0.0)
            lines.append(f"{r.strategy} seed {r.seed}: {r.answers / max(r.reviewed, 1):.2f} answers per reviewed item, "
                         f"Krippendorff's alpha (MASI) {r.agreement.get('krippendorff_alpha_masi') or 0:.3f}; per-label ECE {r.ece_uncalibrated:.4f} → {r.ece_calibrated:.4f} "
                         f"(mean over {len(r.per_label_ece)} labels; worst {worst[0]} {worst[1]:.4f}; calibrated on "
                         f"{r.calibration_labels} random labels); human labels exact on "
                         f"{_pct(r.reviewed_exact_match)} of the reviewed items")
        else:
            lines.append(f"{r.strategy} seed {r.seed}: {r.answers / max(r.reviewed, 1):.2f} answers per reviewed item, "
                         f"pairwise span F1 {r.agreement.get('pairwise_f1_exact') or 0:.3f} (overlap "
                         f"{r.agreement.get('pairwise_f1_overlap') or 0:.3f}); span score {r.mean_span_score or 0:.3f} on average against "
                         f"{_pct(r.span_right_rate)} of the spans exactly right (ECE {r.span_ece:.4f}); missed-entity "
                         f"chance {r.mean_missed_score:.3f} against {_pct(r.missed_rate)} of the items missing one "
                         f"(ECE {r.missed_ece:.4f}); human spans F1 {_pct(r.reviewed_figures['f1_exact'])} on the reviewed items")
    return lines


def _reached(saved: list[float | None]) -> str:
    """How often active learning reached random's final held-out figure, and with how many fewer labels."""
    got = [x for x in saved if x is not None]
    text = f"; its model reached random's final held-out figure in {len(got)} of {len(saved)} seeds"
    return text + (f" ({np.mean(got):.0%} fewer labels on average there)" if got else "")


def write_html(results: Sequence[Result], path: Path, *, title: str, kind: str) -> Path:
    """An HTML page: the figures table and a curve per strategy (the final labels' headline and
    second figure against review share, with the no-review level dashed and the oracle dotted; the
    model's held-out figure against labels, active learning against random)."""
    import html

    plt = pyplot()

    head, second, held = KEYS[kind]
    parts = []
    for key in (head, second):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in results:
            pts = r.rounds
            line, = ax.plot([100 * p["review_share"] for p in pts], [100 * p[key] for p in pts], marker=".",
                            label=f"{r.strategy} (seed {r.seed})")
            ax.axhline(100 * r.no_review[key], color="grey", lw=0.8, ls="--")
            if key == head and kind == "sets":
                ax.plot([100 * p["review_share"] for p in pts],
                        [100 * (1 - max(0, p["model_errors"] - p["reviewed"]) / r.items) for p in pts], ls=":",
                        color=line.get_color())
        ax.set_xlabel("items reviewed by humans (%)")
        ax.set_ylabel(f"{NAMES[key]} (%)")
        ax.set_title(f"final labels: human where reviewed, model elsewhere (dashed: no review"
                     f"{'; dotted: oracle' if key == head and kind == 'sets' else ''})", fontsize=9)
        ax.legend(fontsize=8)
        parts.append(png(fig))
    if any(held in p for r in results for p in r.rounds):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in results:
            pts = [p for p in r.rounds if held in p]
            ax.plot([p["reviewed"] for p in pts], [100 * p[held] for p in pts], marker=".",
                    label=f"{r.strategy} (seed {r.seed})")
        ax.set_xlabel("items labelled")
        ax.set_ylabel(f"model's {NAMES[held]} on the held-out slice (%)")
        ax.set_title("active learning against random picks")
        ax.legend(fontsize=8)
        parts.append(png(fig))
    if kind == "sets":
        cols = ("strategy", "seed", "items", "reviewed", "answers", "exact match", "micro F1", "macro F1",
                "no review exact / micro F1", "oracle exact", "model on the rest (exact / micro F1)",
                "per-label ECE before → after", "per-label ECE (calibrated)", "α (MASI)", "time")
        rows = [(r.strategy, r.seed, r.items, f"{r.reviewed} ({100 * r.review_share:.1f} %)", r.answers,
                 _pct(r.labels["exact_match"]), _pct(r.labels["micro_f1"]), _pct(r.labels["macro_f1"]),
                 f"{_pct(r.no_review['exact_match'])} / {_pct(r.no_review['micro_f1'])}", _pct(r.oracle_exact_match),
                 f"{_pct(r.model['exact_match'])} / {_pct(r.model['micro_f1'])}",
                 f"{r.ece_uncalibrated:.4f} → {r.ece_calibrated:.4f}",
                 ", ".join(f"{k} {v:.3f}" for k, v in r.per_label_ece.items()),
                 f"{r.agreement.get('krippendorff_alpha_masi') or 0:.3f}", f"{r.seconds:.0f} s")
                for r in results if isinstance(r, SetRunResult)]
    else:
        cols = ("strategy", "seed", "items", "reviewed", "answers", "span F1 exact", "overlap", "macro",
                "items all right", "no review (F1 exact)", "oracle items", "model on the rest (F1 exact)",
                "span ECE", "missed ECE", "pairwise F1 (exact / overlap)", "time")
        rows = [(r.strategy, r.seed, r.items, f"{r.reviewed} ({100 * r.review_share:.1f} %)", r.answers,
                 _pct(r.labels["f1_exact"]), _pct(r.labels["f1_overlap"]), _pct(r.labels["macro_f1_exact"]),
                 _pct(r.labels["item_accuracy"]), _pct(r.no_review["f1_exact"]), _pct(r.oracle_item_accuracy),
                 _pct(r.model["f1_exact"]), f"{r.span_ece:.4f}", f"{r.missed_ece:.4f}",
                 f"{r.agreement.get('pairwise_f1_exact') or 0:.3f} / {r.agreement.get('pairwise_f1_overlap') or 0:.3f}",
                 f"{r.seconds:.0f} s") for r in results if isinstance(r, SpanRunResult)]
    table = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><table>{table}</table>{''.join(parts)}</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
