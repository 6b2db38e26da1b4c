"""The auto-accept rule in force: one answer for the router, ``/metrics``, the report and ``hitl status``.

- ``certified``: ``[thresholds] adapt = true`` (the default) and the latest threshold review
  certified a threshold (``meets_target``): items at or above it are accepted, and the review's
  upper confidence bound on their error holds.
- ``off``: ``adapt = true`` and no review yet, or the latest certified nothing, or the spot checks
  paused it (``paused``: spot checks showed the accepted items' error over the target; it holds
  until a later review certifies a higher threshold, or a new model version is served): nothing is
  accepted; would-be accepted items wait as model suggestions (decision ``defer`` / ``uncertified``).
- ``uncertified``: ``adapt = false``: the task file's fixed ``accept_threshold`` applies, with no
  bound behind it; said so wherever it is shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from connector.snapshots import ChecksSnapshot, ThresholdsSnapshot, read_latest

if TYPE_CHECKING:
    from connector.store import StateStore
    from connector.task_spec import TaskSpec

State = Literal["certified", "uncertified", "off"]


@dataclass(frozen=True)
class AutoAccept:
    """What is accepted without a human: ``threshold`` (None when ``off``) and, when certified, the review."""

    state: State
    threshold: float | None
    review: ThresholdsSnapshot | None = None
    paused: bool = False  # off because the spot checks since the latest review failed

    @property
    def accepts(self) -> bool:
        return self.state != "off"

    @property
    def label_thresholds(self) -> dict[str, float] | None:
        """A label set's per-label thresholds, when the certified review chose them."""
        return self.review.label_thresholds if self.state == "certified" and self.review is not None else None

    def clears(self, score: float, *, probabilities: Mapping[str, float] | None = None,
               chosen: Iterable[str] | None = None) -> bool:
        """Whether an item is accepted by this rule (:func:`clears`)."""
        return self.accepts and clears(self.threshold, self.label_thresholds, score,
                                       probabilities=probabilities, chosen=chosen)


def label_confidences(probabilities: Mapping[str, float], chosen: Iterable[str]) -> dict[str, float]:
    """Per label, the calibrated confidence of a label set's decision on it: ``p`` when the label
    was chosen, ``1 - p`` when not."""
    picked = set(chosen)
    return {label: float(p) if label in picked else 1.0 - float(p) for label, p in probabilities.items()}


def clears(threshold: float | None, label_thresholds: Mapping[str, float] | None, score: float, *,
           probabilities: Mapping[str, float] | None = None, chosen: Iterable[str] | None = None) -> bool:
    """Whether an item clears an auto-accept rule: its task score at or over ``threshold`` (below
    1.0, which accepts nothing); with ``label_thresholds`` (a label set's certified rule) instead
    every label's decision confidence (:func:`label_confidences` of ``probabilities`` and the
    ``chosen`` labels) at or over its own threshold, a label the item lacks failing the rule."""
    if label_thresholds is None:
        return threshold is not None and threshold < 1.0 and score >= threshold
    if probabilities is None or chosen is None:
        raise ValueError("a per-label rule needs the item's label probabilities and chosen labels")
    conf = label_confidences(probabilities, chosen)
    return all(label in conf and conf[label] >= t and t <= 1.0 for label, t in label_thresholds.items())


def certifies(review: ThresholdsSnapshot | None) -> bool:
    """Whether a threshold review certified a threshold that accepts something."""
    return (review is not None and review.threshold is not None and bool(review.meets_target)
            and review.threshold <= 1.0)


def in_force(store: StateStore, spec: TaskSpec | None) -> AutoAccept:
    """The rule the router applies now. Without the task (``spec`` None), ``adapt = true`` is assumed."""
    latest = read_latest(store, ThresholdsSnapshot)
    review = latest.snapshot if latest is not None else None
    checks = read_latest(store, ChecksSnapshot)
    if checks is not None and checks.snapshot.paused and not _released(checks.snapshot, checks.at, latest):
        return AutoAccept("off", None, review, paused=True)
    if spec is not None and not spec.thresholds.adapt:
        fixed = float(spec.routing.get("accept_threshold", 0.95))
        return AutoAccept("uncertified", fixed if fixed < 1.0 else None)
    if certifies(review):
        assert review is not None and review.threshold is not None
        return AutoAccept("certified", float(review.threshold), review)
    return AutoAccept("off", None, review)


def _released(pause: ChecksSnapshot, paused_at: object, latest: object) -> bool:
    """A pause ends with a later review that certifies a threshold above the one that failed."""
    if latest is None or not latest.at > paused_at:  # type: ignore[attr-defined]
        return False
    review = latest.snapshot  # type: ignore[attr-defined]
    return certifies(review) and (pause.paused_threshold is None or review.threshold > pause.paused_threshold)
