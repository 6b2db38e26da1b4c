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

One module per section (or pair of sections reading the same snapshot): :mod:`.summary`,
:mod:`.calibration` (2 and 3), :mod:`.thresholds`, :mod:`.labels`, :mod:`.annotators` (6 and 7),
:mod:`.versions`; HTML helpers in :mod:`.markup`, matplotlib in :mod:`.figures`. The snapshots are
read as the typed models of :mod:`connector.snapshots`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from connector.auto_accept import in_force
from connector.report.annotators import agreement_section, quality_section
from connector.report.calibration import N_BINS, accuracy_section, accuracy_vs_review, calibration_section
from connector.report.figures import pyplot
from connector.report.labels import labels_section
from connector.report.markup import CSS, esc
from connector.report.summary import summary_section
from connector.report.thresholds import thresholds_section
from connector.report.versions import versions_section
from connector.snapshots import (
    AgreementSnapshot,
    ChecksSnapshot,
    Dated,
    QualitySnapshot,
    RetrainSnapshot,
    S,
    ThresholdsSnapshot,
    read_latest,
)

if TYPE_CHECKING:
    from connector.model_store import ModelStore
    from connector.store import StateStore
    from connector.task_spec import TaskSpec

__all__ = ["N_BINS", "SECTION_TITLES", "accuracy_vs_review", "build_report", "write_report"]

#: the section headings, in order
SECTION_TITLES = ("Summary", "Calibration", "Accuracy vs review rate", "Threshold review", "Labels over time",
                  "Annotator agreement", "Annotator quality", "Model versions")


def build_report(store: StateStore, models: ModelStore, *, title: str = "hitl report",
                 spec: TaskSpec | None = None) -> str:
    """The report as one HTML page (plots embedded as base64 PNGs; no scripts, no external files);
    with the task, the summary names the auto-accept rule in force (certified, off or uncertified)."""
    retrain = read_latest(store, RetrainSnapshot)
    thresholds = read_latest(store, ThresholdsSnapshot)
    quality = read_latest(store, QualitySnapshot)
    with pyplot() as plt:
        bodies = [
            summary_section(store, models, _latest(thresholds), _latest(quality),
                            in_force(store, spec) if spec is not None else None),
            calibration_section(plt, retrain),
            accuracy_section(plt, _latest(retrain), _latest(thresholds)),
            thresholds_section(plt, thresholds, read_latest(store, ChecksSnapshot)),
            labels_section(plt, store),
            agreement_section(plt, read_latest(store, AgreementSnapshot)),
            quality_section(plt, quality),
            versions_section(plt, models, retrain),
        ]
    anchors = [f"s{i + 1}" for i in range(len(SECTION_TITLES))]
    nav = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t in zip(anchors, SECTION_TITLES, strict=True))
    sections = "".join(f'<section id="{a}"><h2>{i + 1}. {esc(t)}</h2>{b}</section>'
                       for i, (a, t, b) in enumerate(zip(anchors, SECTION_TITLES, bodies, strict=True)))
    generated = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
            f"<h1>{esc(title)}</h1><p class=\"meta\">Generated {generated} from {esc(_store_name(store))} and "
            f"{esc(models.root)}.</p><nav><ol>{nav}</ol></nav>{sections}</main></body></html>\n")


def _store_name(store: StateStore) -> str:
    engine = getattr(store, "engine", None)
    return engine.url.render_as_string(hide_password=True) if engine is not None else repr(store)


def write_report(store: StateStore, models: ModelStore, path: str | Path, *, title: str = "hitl report",
                 spec: TaskSpec | None = None) -> Path:
    """Write :func:`build_report` to ``path`` (UTF-8; parent folders created) and return the path."""
    path = Path(path)
    text = build_report(store, models, title=title, spec=spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _latest(dated: Dated[S] | None) -> S | None:
    return None if dated is None else dated.snapshot
