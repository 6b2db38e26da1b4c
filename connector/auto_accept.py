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
