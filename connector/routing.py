"""The router: decide, per scored item, whether a human sees it.

A :class:`RoutingPolicy` (pydantic, from the task file) configures a :class:`Router`; ``route(batch)``
returns one :class:`RoutingDecision` per item, each with the reason it was taken. For each item,
with ``label`` the top class and ``confidence`` its calibrated probability, the first rule that
applies wins:

1. ``review`` / ``forced:<field>`` -- a ``force_review`` rule fires on the item's metadata (the
   field of the first rule that fires is named). Forced items are never accepted, rejected or
   deferred.
2. ``auto_reject`` / ``reject_label`` -- moderation-style tasks: ``reject_label`` is set, the model
   predicts it, and ``confidence >= reject_threshold``.
3. ``auto_accept`` / ``confident`` -- ``confidence >=`` the label's threshold
   (``label_overrides[label]``, else ``accept_threshold``); a seeded Bernoulli draw with
   probability ``spot_check_rate`` turns it into ``review`` / ``spot_check`` instead. With
   ``auto_accept = False`` (no certified threshold yet) such an item is ``defer`` / ``uncertified``:
   it keeps the model's label as a suggestion only, and is routed again once a threshold is certified.
4. otherwise the item is uncertain: ``review`` / ``uncertain``. If ``review_budget`` is set, forced
   items and spot checks take their seats first; if the uncertain items do not fit in the seats
   left, the query strategy picks which go to ``review`` / ``active_learning`` (their strategy score
   is kept in ``score``) and the rest get ``defer`` / ``over_budget``.

Audits (``audit_share > 0``): before the strategy picks, ``round(audit_share * seats)`` items are
drawn uniformly at random from every item no rule above sends to a human (would-be accepted and
uncertain alike) and go to ``review`` / ``audit`` (without a budget, ``seats`` is the number of
uncertain items). Their human labels are an unbiased sample of the whole unreviewed pool, which is
what the threshold rule needs to certify an error rate among auto-accepted items: labels picked by
the strategy are the hardest items and say little about the confident ones.

Gold items (known answers, flagged ``is_gold: True`` in metadata) come from a separate pool given
to :meth:`Router.route`: ``round(gold_rate * number of batch items sent to review)`` of them, drawn
without replacement, are appended as ``review`` / ``gold``. They are not counted in the budget.

Priority (higher = annotate first) is the same formula for every decision::

    priority = (1 - confidence) + FORCED_BONUS * (a force_review rule fired)

with ``FORCED_BONUS = 1.0``: since ``1 - confidence < 1``, every forced item ranks above every
other item, and within each group the less confident item comes first.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from connector.strategies import QueryStrategy, make_strategy

__all__ = [
    "CHECK_REASONS",
    "FORCED_BONUS",
    "Action",
    "Batch",
    "Router",
    "RoutingDecision",
    "RoutingPolicy",
    "Rule",
]

FORCED_BONUS = 1.0
#: reasons of the items sent to a human to check the loop (gold answers, random audits, spot checks of
#: would-be auto-accepts): their answers must be independent of the model, so they carry no suggestion
CHECK_REASONS = frozenset({"gold", "audit", "spot_check"})

Action = Literal["auto_accept", "review", "auto_reject", "defer"]
Op = Literal["==", "!=", ">=", "<=", ">", "<", "in"]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "in": lambda a, b: a in b,
}

class Rule(BaseModel):
    """``metadata[field] <op> value``. A missing field, or values that cannot be compared, do not fire."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str
    op: Op
    value: Any

    @model_validator(mode="after")
    def _in_needs_collection(self) -> Rule:
        if self.op == "in" and not isinstance(self.value, list | tuple | set | frozenset):
            raise ValueError(f"rule on {self.field!r}: op 'in' needs a list value, got {self.value!r}")
        return self

    def fires(self, metadata: Mapping[str, Any]) -> bool:
        if self.field not in metadata:
            return False
        try:
            return bool(_OPS[self.op](metadata[self.field], self.value))
        except TypeError:
            return False


class RoutingPolicy(BaseModel):
    """Routing configuration (see the module docstring for how each field is applied).

    - ``accept_threshold``: auto-accept when confidence >= this (per label: ``label_overrides``);
      1.0 accepts nothing (a probability can round to exactly 1.0).
    - ``auto_accept``: False defers would-be accepted items (``uncertified``) instead of accepting them;
      the sync service sets it from the threshold review (nothing certified, nothing accepted).
    - ``reject_label`` / ``reject_threshold``: auto-reject when the model predicts ``reject_label``
      with confidence >= ``reject_threshold``; set both or neither; ``reject_threshold <=
      accept_threshold``.
    - ``force_review``: rules on item metadata that send the item to review whatever the model says.
    - ``spot_check_rate``: share of would-be auto-accepted items sent to review instead.
    - ``audit_share``: share of the review seats given to uniform random audits of the pool.
    - ``gold_rate``: gold items added, as a share of the batch items sent to review.
    - ``review_budget``: most batch items sent to review per batch (None: no limit).
    - ``strategy`` / ``random_share``: how over-budget uncertain items are picked; with
      ``random_share > 0``, that share of the picks is random.
    - ``seed``: all random draws (spot checks, gold, random picks) follow from it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    accept_threshold: float = Field(0.95, ge=0.0, le=1.0)
    auto_accept: bool = True
    reject_label: str | None = None
    reject_threshold: float | None = Field(None, ge=0.0, le=1.0)
    label_overrides: dict[str, float] = Field(default_factory=dict)
    force_review: list[Rule] = Field(default_factory=list)
    spot_check_rate: float = Field(0.05, ge=0.0, le=1.0)
    audit_share: float = Field(0.0, ge=0.0, le=1.0)
    gold_rate: float = Field(0.0, ge=0.0, le=1.0)
    review_budget: int | None = Field(None, ge=0)
    strategy: Literal["least_confidence", "margin", "entropy", "random"] = "least_confidence"
    random_share: float = Field(0.0, ge=0.0, le=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> RoutingPolicy:
        bad = {k: v for k, v in self.label_overrides.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"label_overrides thresholds must be in [0, 1], got {bad}")
        if (self.reject_label is None) != (self.reject_threshold is None):
            raise ValueError("reject_label and reject_threshold must be set together")
        if self.reject_threshold is not None and self.reject_threshold > self.accept_threshold:
            raise ValueError(
                f"reject_threshold ({self.reject_threshold}) must be <= accept_threshold ({self.accept_threshold})"
            )
        return self

    def threshold_for(self, label: str) -> float:
        return self.label_overrides.get(label, self.accept_threshold)


@dataclass(frozen=True)
class Batch:
    """Scored items: ``probs[i]`` (calibrated, columns named by ``labels``) belongs to ``item_ids[i]``.

    ``top_labels``: each row's label when it is not a column's name (a multi-label item: its label
    set, with ``probs`` the rows ``[score, 1 - score]`` of its task score); its confidence is still
    the row's largest probability. ``clears``: per row, whether the auto-accept rule in force
    accepts it, when that rule is not one threshold on the confidence (a label set's per-label
    thresholds, :func:`connector.auto_accept.clears`); the policy's threshold is then not read."""

    item_ids: Sequence[str]
    probs: np.ndarray
    labels: Sequence[str]
    metadata: Sequence[Mapping[str, Any]] | None = None
    top_labels: Sequence[str] | None = None
    clears: Sequence[bool] | None = None

    def __post_init__(self) -> None:
        probs = np.asarray(self.probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape != (len(self.item_ids), len(self.labels)):
            raise ValueError(
                f"probs must have shape (len(item_ids), len(labels)) = ({len(self.item_ids)}, {len(self.labels)}),"
                f" got {probs.shape}"
            )
        meta = [{}] * len(self.item_ids) if self.metadata is None else list(self.metadata)
        if len(meta) != len(self.item_ids):
            raise ValueError(f"metadata has {len(meta)} entries for {len(self.item_ids)} items")
        if self.top_labels is not None and len(self.top_labels) != len(self.item_ids):
            raise ValueError(f"top_labels has {len(self.top_labels)} entries for {len(self.item_ids)} items")
        if self.clears is not None and len(self.clears) != len(self.item_ids):
            raise ValueError(f"clears has {len(self.clears)} entries for {len(self.item_ids)} items")
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "metadata", meta)

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where one item goes and why.

    ``reason`` is one of ``confident``, ``uncertain``, ``forced:<field>``, ``spot_check``, ``audit``,
    ``gold``, ``active_learning``, ``over_budget``, ``reject_label``; ``label``/``confidence`` are the top class
    and its probability; ``score`` is the strategy's score when the strategy picked the item, else None.
    """

    item_id: str
    action: Action
    reason: str
    label: str
    confidence: float
    priority: float
    score: float | None = None


class Router:
    """Applies a :class:`RoutingPolicy` to batches. Deterministic given ``policy.seed`` and the
    sequence of batches (the generator advances across calls, so spot checks differ per batch)."""

    def __init__(self, policy: RoutingPolicy | Mapping[str, Any]) -> None:
        self.policy = policy if isinstance(policy, RoutingPolicy) else RoutingPolicy.model_validate(policy)
        draws_seed, strategy_seed = np.random.SeedSequence(self.policy.seed).spawn(2)
        self._rng = np.random.default_rng(draws_seed)
        self.strategy: QueryStrategy = make_strategy(
            self.policy.strategy,
            random_share=self.policy.random_share,
            seed=int(strategy_seed.generate_state(1)[0]),
        )

    def route(self, batch: Batch, *, gold_pool: Batch | None = None) -> list[RoutingDecision]:
        """Decisions for ``batch`` in its order, followed by the gold items drawn from ``gold_pool``."""
        pol = self.policy
        self._check_labels(batch.labels)
        n = len(batch)
        labels, conf = _top(batch)
        forced_by = [next((r.field for r in pol.force_review if r.fires(md)), None) for md in batch.metadata]
        forced = np.array([f is not None for f in forced_by], dtype=bool)
        spot_draw = self._rng.random(n)  # drawn for every item, so the stream does not depend on the batch

        rejected = ~forced & np.array([lab == pol.reject_label for lab in labels], dtype=bool)
        if pol.reject_threshold is not None:
            rejected &= conf >= pol.reject_threshold
        thresholds = np.array([pol.threshold_for(lab) for lab in labels])
        clear = (conf >= thresholds) & (thresholds < 1.0) if batch.clears is None \
            else np.asarray(batch.clears, dtype=bool)  # threshold 1.0: accept nothing
        accepted = ~forced & ~rejected & clear
        spot = accepted & (spot_draw < pol.spot_check_rate)
        uncertain = np.flatnonzero(~forced & ~rejected & ~accepted)

        audit = np.zeros(n, dtype=bool)
        if pol.audit_share > 0.0:
            seats = len(uncertain) if pol.review_budget is None else max(
                0, pol.review_budget - int(forced.sum()) - int(spot.sum()))
            pool = np.flatnonzero(~forced & ~rejected & ~spot)
            k = min(math.floor(pol.audit_share * seats + 0.5), len(pool))
            if k:
                audit[self._rng.choice(pool, size=k, replace=False)] = True
            uncertain = uncertain[~audit[uncertain]]

        picked: dict[int, float | None] = {int(i): None for i in uncertain}
        budget_binds = False
        if pol.review_budget is not None:
            seats = max(0, pol.review_budget - int(forced.sum()) - int(spot.sum()) - int(audit.sum()))
            if len(uncertain) > seats:
                budget_binds = True
                chosen = self.strategy.query(batch.probs, seats, candidates=uncertain)
                scores = self.strategy.last_scores
                picked = {int(i): float(scores[i]) if scores is not None else None for i in chosen}

        priority = (1.0 - conf) + FORCED_BONUS * forced
        decisions: list[RoutingDecision] = []
        for i in range(n):
            score = None
            if forced[i]:
                action, reason = "review", f"forced:{forced_by[i]}"
            elif rejected[i]:
                action, reason = "auto_reject", "reject_label"
            elif audit[i]:
                action, reason = "review", "audit"
            elif spot[i]:
                action, reason = "review", "spot_check"
            elif accepted[i]:
                action, reason = ("auto_accept", "confident") if pol.auto_accept else ("defer", "uncertified")
            elif i in picked:
                action = "review"
                reason = "active_learning" if budget_binds else "uncertain"
                score = picked[i]
            else:
                action, reason = "defer", "over_budget"
            decisions.append(
                RoutingDecision(str(batch.item_ids[i]), action, reason, labels[i], float(conf[i]),
                                float(priority[i]), score)
            )
        n_review = sum(d.action == "review" for d in decisions)
        decisions.extend(self._gold(gold_pool, n_review, set(map(str, batch.item_ids))))
        return decisions

    def _gold(self, pool: Batch | None, n_review: int, exclude: set[str]) -> list[RoutingDecision]:
        if pool is None or self.policy.gold_rate == 0.0 or n_review == 0:
            return []
        eligible = [
            i for i, (item_id, md) in enumerate(zip(pool.item_ids, pool.metadata))
            if md.get("is_gold") is True and str(item_id) not in exclude
        ]
        k = min(math.floor(self.policy.gold_rate * n_review + 0.5), len(eligible))
        if k == 0:
            return []
        labels, conf = _top(pool)
        chosen = self._rng.choice(np.array(eligible), size=k, replace=False)
        return [
            RoutingDecision(str(pool.item_ids[i]), "review", "gold", labels[i], float(conf[i]), float(1.0 - conf[i]))
            for i in chosen
        ]

    def _check_labels(self, labels: Sequence[str]) -> None:
        known = set(labels)
        unknown = set(self.policy.label_overrides) - known
        if self.policy.reject_label is not None and self.policy.reject_label not in known:
            unknown.add(self.policy.reject_label)
        if unknown:
            raise ValueError(f"policy names labels the batch does not have: {sorted(unknown)}; labels: {list(labels)}")


def _top(batch: Batch) -> tuple[list[str], np.ndarray]:
    """Top label per row and its probability (ties: the first column)."""
    top = batch.probs.argmax(axis=1)
    conf = batch.probs[np.arange(len(top)), top]
    if batch.top_labels is not None:
        return [str(label) for label in batch.top_labels], conf
    return [str(batch.labels[j]) for j in top], conf
