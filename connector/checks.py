"""What the checks found: spot checks, audits and gold items read against the model.

Each check item is scored by the model version that routed it (the decision's version) and answered
by people (its settled label; for gold, its known answer). Per kind, model version and predicted
label: items, correct, realized accuracy and its Clopper–Pearson interval at ``1 - delta``.

- ``spot_check``: a random draw among the items the router would have auto-accepted, so their
  accuracy is the *realized accuracy of auto-accepted items*. When the errors among the spot checks
  of the version in force show, with confidence, an error above the target (the interval's lower
  error bound over ``target_error``), :func:`assess` says ``pause``: the metrics job records it,
  auto-accept stops (:mod:`connector.auto_accept`) and a threshold review runs.
- ``audit``: uniform draws from the whole unreviewed pool: the model's accuracy on it.
- ``gold``: items with a known answer: the model's accuracy on them (people's is in the quality snapshot).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from scipy.stats import beta

if TYPE_CHECKING:
    from connector.store import StateStore

CHECK_KINDS = ("spot_check", "audit", "gold")
ALL = "*"  # the label (or version) of a row that sums the others


@dataclass(frozen=True)
class Outcome:
    """One answered check: the model's label against the people's."""

    item_id: int
    kind: str
    model_version: str
    predicted: str
    confidence: float
    truth: str
    decided_at: datetime

    @property
    def correct(self) -> bool:
        return self.predicted == self.truth


@dataclass(frozen=True)
class CheckRow:
    """Realized accuracy of one group of checks, with its Clopper–Pearson interval."""

    kind: str
    model_version: str
    label: str
    n: int
    correct: int
    lower: float
    upper: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact two-sided ``1 - alpha`` interval of a binomial proportion ``k / n``."""
    if n == 0:
        return 0.0, 1.0
    lower = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lower, upper


def outcomes(store: StateStore) -> list[Outcome]:
    """Every check item with a human answer (settled) or a known one (gold), scored by its routing version."""
    decisions = {i: d for i, d in store.decisions.latest().items() if d.reason in CHECK_KINDS}
    if not decisions:
        return []
    items = store.items.get_many(decisions)
    settled = {lb.item_id: lb.label for lb in store.labels.list(status="settled") if lb.method != "gold"}
    scored = {(p.item_id, p.model_version): p for p in store.predictions.list(decisions)}
    out = []
    for item_id, d in sorted(decisions.items()):
        item = items.get(item_id)
        truth = (item.meta or {}).get("gold_label") if d.reason == "gold" and item is not None else settled.get(item_id)
        pred = scored.get((item_id, d.model_version))
        if truth is None or pred is None:
            continue
        out.append(Outcome(item_id, d.reason, str(d.model_version), pred.label, float(pred.confidence), str(truth),
                           d.created_at))
    return out


def summarize(found: Iterable[Outcome], *, delta: float = 0.05) -> list[CheckRow]:
    """Rows per (kind, version, label), and per (kind, version) over every label (``label == "*"``)."""
    groups: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for o in found:
        groups[(o.kind, o.model_version, o.predicted)].append(o.correct)
        groups[(o.kind, o.model_version, ALL)].append(o.correct)
    rows = []
    for (kind, version, label), hits in sorted(groups.items()):
        k, n = sum(hits), len(hits)
        lower, upper = clopper_pearson(k, n, delta)
        rows.append(CheckRow(kind, version, label, n, k, lower, upper))
    return rows


@dataclass(frozen=True)
class Assessment:
    """Whether the spot checks of the version in force show auto-accepted error above the target."""

    pause: bool
    n: int
    errors: int
    error_lower: float  # the lower end of the error rate's interval
    note: str


def assess(rows: Iterable[CheckRow], version: str | None, *, target_error: float) -> Assessment:
    """``pause`` when the spot checks of ``version`` put the auto-accepted error above ``target_error``
    with confidence (the lower end of its Clopper–Pearson interval is over the target)."""
    row = next((r for r in rows if r.kind == "spot_check" and r.model_version == version and r.label == ALL), None)
    if row is None:
        return Assessment(False, 0, 0, 0.0, f"no answered spot check of {version or 'any version'} yet")
    errors, error_lower = row.n - row.correct, 1.0 - row.upper
    pause = error_lower > target_error
    verdict = "above" if pause else "not shown above"
    return Assessment(pause, row.n, errors, error_lower,
                      f"{errors} wrong of {row.n} spot checks of {version}: error ≥ {error_lower:.3f} with confidence, "
                      f"{verdict} the target {target_error:.3f}")
