"""The dated snapshots the scheduler's jobs keep, one pydantic model per kind, and typed access.

A snapshot is a row of the state store's ``snapshots`` table: a ``kind`` and a JSON payload. Each
kind below is written by one job of :mod:`sync.jobs` and read by the report, the Prometheus
collector, the simulator and the sync service:

- ``agreement`` (:class:`AgreementSnapshot`): inter-annotator agreement, from the metrics job
- ``quality`` (:class:`QualitySnapshot`): gold accuracy and consensus agreement per annotator
- ``counts`` (:class:`CountsSnapshot`): items by state, routing decisions, settled labels per class
- ``model`` (:class:`ModelSnapshot`): the served model version (metrics and retrain jobs)
- ``retrain`` (:class:`RetrainSnapshot`): one retraining's decision, metrics and honest predictions
- ``thresholds`` (:class:`ThresholdsSnapshot`): the auto-accept threshold review
- ``checks`` (:class:`ChecksSnapshot`): what spot checks, audits and gold found, and whether
  auto-accept is paused for it (metrics job)
- ``stopping`` (:class:`StoppingSnapshot`): the stopping rule after one retraining (retrain job)

The payload on disk is the model's ``model_dump()``, the same keys the jobs wrote as dicts before
these models existed. Reading is lenient so old databases read back: a field an older payload
lacks takes its default (``None`` for a measurement, empty for a collection), unknown keys are
ignored, and a payload that does not validate at all (not an object, a list where a number
belongs) is logged and treated as absent, the way the readers treated a non-dict payload.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from connector.store import StateStore

log = logging.getLogger(__name__)


class SnapshotModel(BaseModel):
    """Base of the snapshot kinds: ``kind`` names the store's snapshot kind of the subclass."""

    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)

    kind: ClassVar[str]


class _Part(BaseModel):
    """Base of the nested parts of a payload (same leniency as :class:`SnapshotModel`)."""

    model_config = ConfigDict(extra="ignore", frozen=True, coerce_numbers_to_str=True)


S = TypeVar("S", bound=SnapshotModel)


# ------------------------------------------------------------------------------------------------ metrics job


class LabelAgreement(_Part):
    """One label of a label-set control, as the yes/no question "does it apply?"
    (:func:`connector.agreement_sets.per_label_agreement`): ``n_items`` are the items with two
    answers or more, ``n_yes`` the answers giving the label."""

    label: str
    fleiss_kappa: float | None = None
    mean_cohen_kappa: float | None = None
    krippendorff_alpha: float | None = None
    percent_agreement: float | None = None
    n_items: int = 0
    n_yes: int = 0


class ControlAgreement(_Part):
    """Agreement on one of the task's other controls (``kind``: ``labels`` one label per answer,
    ``sets`` a label set, ``spans`` entity spans). ``n_items``: the items answered; ``n_pairable_items``
    those with two answers or more. ``labels``: the one-label statistics of
    :func:`connector.agreement.agreement_report`; ``sets``: ``masi_alpha`` (Krippendorff's alpha,
    MASI distance), ``exact_agreement`` (agreeing pairs, whole sets) and ``per_label``; ``spans``:
    ``span_f1`` (label and ``micro`` -> mean pairwise span F1, exact match,
    :func:`connector.span_consensus.pairwise_span_agreement`) and ``pairs`` (annotator pairs with a
    shared item)."""

    kind: str
    n_items: int = 0
    n_annotators: int = 0
    n_answers: int | None = None
    n_pairable_items: int | None = None
    percent_agreement: float | None = None
    fleiss_kappa: float | None = None
    krippendorff_alpha: float | None = None
    mean_cohen_kappa: float | None = None
    masi_alpha: float | None = None
    exact_agreement: float | None = None
    per_label: list[LabelAgreement] = []
    span_f1: dict[str, float | None] = {}
    pairs: int | None = None


class AgreementSnapshot(SnapshotModel):
    """:func:`connector.consolidation.agreement_snapshot`: agreement over the submitted answers.

    An empty answer table writes only ``n_items``/``n_annotators`` (0), ``annotators`` and ``labels``;
    a statistic that is undefined (NaN) is ``None``. ``cohen_kappa`` and ``pair_counts`` are
    annotator × annotator matrices in the order of ``annotators``.

    A label-set primary control (``multi_label``) fills ``masi_alpha``, ``exact_agreement`` and
    ``per_label`` instead of the one-label statistics (those stay ``None``/empty); ``control`` names
    the primary control; ``controls`` holds the task's other controls' agreement by name (see
    :mod:`sync.control_agreement`). Snapshots older than these fields read with them empty."""

    kind: ClassVar[str] = "agreement"

    n_items: int = 0
    n_annotators: int = 0
    n_classes: int | None = None
    n_answers: int | None = None
    n_pairable_items: int | None = None
    annotators: list[str] = []
    labels: list[str] = []
    percent_agreement: float | None = None
    fleiss_kappa: float | None = None
    krippendorff_alpha: float | None = None
    cohen_kappa: list[list[float | None]] = []
    mean_cohen_kappa: float | None = None
    pair_counts: list[list[int]] | None = None
    control: str | None = None
    masi_alpha: float | None = None
    exact_agreement: float | None = None
    per_label: list[LabelAgreement] = []
    controls: dict[str, ControlAgreement] = {}


class AnnotatorQuality(_Part):
    """One row of :func:`connector.consolidation.annotator_quality` (shares are ``None`` without answers)."""

    annotator: str
    answers: int | None = None
    gold_n: int = 0
    gold_correct: int = 0
    gold_accuracy: float | None = None
    consensus_n: int = 0
    consensus_agreement: float | None = None
    flagged: bool = False


class QualitySnapshot(SnapshotModel):
    """Annotator quality, and the names of the flagged annotators."""

    kind: ClassVar[str] = "quality"

    annotators: list[AnnotatorQuality] = []
    flagged: list[str] = []


class CountsSnapshot(SnapshotModel):
    """Items by state, current items by latest routing action, settled labels per class."""

    kind: ClassVar[str] = "counts"

    states: dict[str, int] = {}
    decisions: dict[str, int] = {}
    labels: dict[str, int] = {}
    human_labels: int = 0


class ModelSnapshot(SnapshotModel):
    """The promoted model version when the job ran (``None``: none yet)."""

    kind: ClassVar[str] = "model"

    current: str | None = None


# ------------------------------------------------------------------------------------------------ retrain job


class HeldOutMetrics(_Part):
    """:func:`connector.retraining.evaluate` on the held-out split (plus the candidate's ECE before
    temperature scaling)."""

    accuracy: float | None = None
    macro_f1: float | None = None
    ece: float | None = None
    log_loss: float | None = None
    n: int | None = None
    ece_uncalibrated: float | None = None


class Evidence(_Part):
    """Honest predictions on human labels (held-out, and the promoted candidate's out-of-fold ones):
    top-class confidence, 1.0/0.0 for right/wrong, and each item's external id (older payloads
    lack the ids)."""

    confidence: list[float] = []
    correct: list[float] = []
    external_id: list[str] = []
    # a label set's: per item, each label's decision confidence (columns in ``labels`` order)
    labels: list[str] = []
    label_confidence: list[list[float]] = []


class Reliability(_Part):
    """The held-out labels (class codes) and the candidate's probabilities before and after scaling."""

    y: list[int] = []
    uncalibrated: list[list[float]] = []
    calibrated: list[list[float]] = []


class RetrainSnapshot(SnapshotModel):
    """:class:`connector.retraining.RetrainResult` and the number of training labels it used."""

    kind: ClassVar[str] = "retrain"

    candidate: str | None = None
    current: str | None = None
    promoted: bool = False
    reason: str = ""
    n_train: int | None = None
    n_test: int | None = None
    encoded: int | None = None
    candidate_metrics: HeldOutMetrics = HeldOutMetrics()
    current_metrics: HeldOutMetrics | None = None
    evidence: Evidence = Evidence()
    reliability: Reliability = Reliability()
    n_labels: int = 0
    stop_predictions: list[int] | None = None  # the candidate's labels of the stop set (see StoppingSnapshot)
    stop_encoded: int = 0


class StoppingSnapshot(SnapshotModel):
    """The stopping rule after one retraining (:func:`connector.stopping.advance`).

    ``candidate``: the version that predicted the stop set (promoted or not); ``set_id``: the stop
    set's id (its members' external ids and content hashes, and the labels); ``external_ids`` the
    members, ``predictions`` the candidate's label for each, as indices into ``labels``; ``kappa``:
    Cohen's kappa against the previous candidate's predictions of the same set (``None`` for the
    first predictions of a set); ``kappas``: the last ``window`` of them; ``run``: how many in a row
    reach ``level``; ``fired``: ``run >= window``; ``n_labels``: the settled labels at the time."""

    kind: ClassVar[str] = "stopping"

    candidate: str | None = None
    set_id: str | None = None
    external_ids: list[str] = []
    labels: list[str] = []
    predictions: list[int] = []
    kappa: float | None = None
    kappas: list[float] = []
    run: int = 0
    fired: bool = False
    level: float | None = None
    window: int | None = None
    n_labels: int = 0


# ------------------------------------------------------------------------------------------------ threshold review


class ThresholdPoint(_Part):
    """One tested candidate threshold of the review's curve."""

    threshold: float | None = None
    n: int | None = None
    errors: int | None = None
    ucb: float | None = None
    review_rate: float | None = None
    passed: bool | None = None


class ThresholdsSnapshot(SnapshotModel):
    """:class:`connector.thresholds.ThresholdChoice` and the policy it was chosen under.

    ``threshold`` above 1.0 accepts nothing; ``evidence`` is the policy's evidence kind
    (``random``/``all``) and ``n_evidence`` the labeled predictions it used."""

    kind: ClassVar[str] = "thresholds"

    threshold: float | None = None
    error_ucb: float | None = None
    error_rate: float | None = None
    n: int | None = None
    errors: int | None = None
    review_rate: float | None = None
    meets_target: bool | None = None
    within_band: bool | None = None
    note: str = ""
    curve: list[ThresholdPoint] = []
    safe_threshold: float | None = None
    adapt: bool | None = None
    target_error: float | None = None
    delta: float | None = None
    evidence: str | None = None
    n_evidence: int | None = None
    # a label set's rule: each label's decision confidence at or over its own threshold
    # (:mod:`connector.thresholds_sets`); ``threshold`` is then the rule's level on its path
    label_thresholds: dict[str, float] | None = None


class CheckPart(_Part):
    """One group of answered checks (:class:`connector.checks.CheckRow`)."""

    kind: str
    model_version: str
    label: str
    n: int
    correct: int
    accuracy: float | None = None
    lower: float | None = None
    upper: float | None = None


class ChecksSnapshot(SnapshotModel):
    """The metrics job's reading of the checks; ``paused``: the spot checks of ``model_version`` show
    the auto-accepted error above the target, so nothing is auto-accepted until a later review."""

    kind: ClassVar[str] = "checks"

    rows: list[CheckPart] = []
    model_version: str | None = None
    paused: bool = False
    paused_threshold: float | None = None  # the threshold the failing spot checks were accepted under
    note: str = ""


# ------------------------------------------------------------------------------------------------ store access


class Dated(NamedTuple, Generic[S]):
    """A snapshot read back, with when the job wrote it."""

    snapshot: S
    at: datetime


def write_snapshot(store: StateStore, snapshot: SnapshotModel) -> int:
    """Keep ``snapshot`` as a new dated row of its kind; returns the row id.

    A threshold review whose threshold differs from the previous review's (the first review
    included) is on record in the store's history as ``threshold_changed``, in the same transaction."""
    changes = _threshold_changes if isinstance(snapshot, ThresholdsSnapshot) else None
    return store.snapshots.add(snapshot.kind, snapshot.model_dump(), changes=changes)


_REVIEW_DETAIL = ("adapt", "target_error", "delta", "evidence", "n_evidence", "error_ucb", "review_rate",
                  "meets_target", "within_band", "note")


def _threshold_changes(previous: Any, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """``threshold_changed`` when the review's threshold is not the previous review's."""
    old = previous.get("threshold") if isinstance(previous, dict) else None
    new = payload.get("threshold")
    if old == new:
        return []
    return [{"kind": "threshold_changed", "item_id": None, "actor": "scheduler",
             "detail": {"old": old, "new": new, **{k: payload.get(k) for k in _REVIEW_DETAIL}}}]


def read_latest(store: StateStore, model: type[S]) -> Dated[S] | None:
    """The newest snapshot of ``model``'s kind, or ``None`` (none yet, or it does not validate)."""
    row = store.snapshots.latest(model.kind)
    return None if row is None else _parse(model, row)


def read_history(store: StateStore, model: type[S], *, limit: int | None = None) -> list[Dated[S]]:
    """Snapshots of ``model``'s kind, oldest first (the newest ``limit`` when given); rows that do
    not validate are left out."""
    parsed = (_parse(model, row) for row in store.snapshots.list(model.kind, limit=limit))
    return [d for d in parsed if d is not None]


def _parse(model: type[S], row: Any) -> Dated[S] | None:
    try:
        return Dated(model.model_validate(row.payload), row.created_at)
    except ValidationError as exc:
        log.warning("%s snapshot %s does not read as %s, left out: %s", model.kind, row.id, model.__name__,
                    exc.errors(include_url=False)[:3])
        return None
