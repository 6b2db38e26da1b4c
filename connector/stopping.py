"""Knowing when to stop labelling: stabilizing predictions (Bloodgood & Vijay-Shanker, 2009).

A fixed *stop set* of the project's items is chosen once, at the first retraining that has
unlabelled items: the ``stop_set_size`` current items without a human label whose content hash is
lowest (a draw that needs no random state and gives the same set on every run), recorded by their
external ids in the ``stopping`` snapshot and reused after. Every retraining's candidate (the model
trained on every training label so far, promoted or not) predicts the set, and Cohen's kappa
between its predictions and the previous candidate's says how much another round of labels moved
the model. The rule fires when the last ``window`` kappas are all at or above ``kappa``: more labels
are unlikely to change the model.

The set is not labelled and need not stay unlabelled: an item of the set that people label later
stays in it (its prediction is still the model's). Items ingested after the set was chosen do not
join it. A member whose text changed (a new version) is predicted on its new text, and one that is
no longer in the store leaves the set; either way the set's id changes (it covers each member's
external id and content hash, and the task's labels), and a set that changed restarts the count:
its first predictions have no predecessor to agree with.

Bloodgood & Vijay-Shanker stop when the *mean* of the last three kappas reaches 0.99; this rule asks
each of them to (stricter, and what a reader of "three in a row" expects). small-text's
``KappaAverage`` is another variant: it stops when the kappas themselves stop changing (the mean
absolute difference of successive kappas under ``1 - kappa``), which a run of equally low kappas
also satisfies.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from connector.agreement import cohen_kappa_matrix
from connector.snapshots import StoppingSnapshot


class StoppingPolicy(BaseModel):
    """The stopping rule (the task file's ``[stopping]`` table).

    - ``enabled``: predict the stop set at each retraining and keep a ``stopping`` snapshot.
    - ``stop_set_size``: items in the stop set (fewer when the unlabelled pool is smaller).
    - ``kappa``: the agreement between successive candidates that counts as stable (Bloodgood &
      Vijay-Shanker's 0.99: on 500 items of balanced classes, about two predictions in 500 changed).
    - ``window``: how many successive kappas in a row must reach it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    stop_set_size: int = Field(500, ge=10)
    kappa: float = Field(0.99, gt=0.0, le=1.0)
    window: int = Field(3, ge=1)


def cohen_kappa(a: Sequence[int], b: Sequence[int], *, n_classes: int) -> float:
    """Cohen's kappa between two prediction vectors of class codes in ``[0, n_classes)``.

    Equals scikit-learn's ``cohen_kappa_score`` except where that is undefined (both vectors one and
    the same class throughout, so that chance agreement is 1): identical predictions, so 1.0 here."""
    x, y = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if x.shape != y.shape or x.ndim != 1 or not x.size:
        raise ValueError(f"two non-empty prediction vectors of one length needed, got {x.shape} and {y.shape}")
    k = float(cohen_kappa_matrix(np.column_stack([x, y]), n_classes=n_classes)[0, 1])
    return 1.0 if np.isnan(k) else k


def choose_stop_set(pool: Iterable[tuple[str, str]], size: int) -> list[str]:
    """External ids of the ``size`` items of ``pool`` (``(external_id, content_hash)`` pairs) with the
    lowest content hash (ties by external id), in that order."""
    return [e for _, e in sorted((h, e) for e, h in pool)[:size]]


def stop_set_id(members: Sequence[tuple[str, str]], labels: Sequence[str]) -> str:
    """The set's id: a digest of its members (external id and content hash, in order) and the labels."""
    h = hashlib.sha256("\x1f".join(labels).encode())
    for external_id, content_hash in members:
        h.update(f"\x1e{external_id}\x1f{content_hash}".encode())
    return h.hexdigest()[:16]


def advance(previous: StoppingSnapshot | None, *, candidate: str | None, members: Sequence[tuple[str, str]],
            predictions: Sequence[int], labels: Sequence[str], policy: StoppingPolicy,
            n_labels: int = 0, label_sets: bool = False) -> StoppingSnapshot:
    """The rule after one more candidate predicted the stop set: kappa against the previous
    candidate's predictions of the same set (none when there is none, or the set changed), the
    recent kappas, how many in a row reach ``policy.kappa``, and whether ``policy.window`` do.

    ``label_sets``: each member's prediction is a label set, given as ``len(labels)`` 0/1 decisions
    (row after row, columns in ``labels`` order); the kappa is then pooled over every label decision."""
    per_item = len(labels) if label_sets else 1
    if len(predictions) != len(members) * per_item:
        raise ValueError(f"{len(predictions)} predictions for a stop set of {len(members)} items"
                         + (f" of {per_item} label decisions each" if label_sets else ""))
    set_id = stop_set_id(members, labels)
    kappa: float | None = None
    recent: list[float] = []
    run = 0
    if previous is not None and previous.set_id == set_id and len(previous.predictions) == len(predictions):
        kappa = cohen_kappa(previous.predictions, predictions, n_classes=2 if label_sets else len(labels))
        recent = [*previous.kappas, kappa][-policy.window:]
        run = previous.run + 1 if kappa >= policy.kappa else 0
    return StoppingSnapshot(candidate=candidate, set_id=set_id, external_ids=[e for e, _ in members],
                            labels=list(labels), predictions=[int(p) for p in predictions], kappa=kappa,
                            kappas=recent, run=run, fired=run >= policy.window, level=policy.kappa,
                            window=policy.window, n_labels=n_labels)


def describe(snapshot: StoppingSnapshot | None) -> str:
    """The rule's state in words (``hitl status``, the report)."""
    if snapshot is None:
        return "no retraining has predicted the stop set yet"
    level = snapshot.level if snapshot.level is not None else 0.99
    window = snapshot.window or 3
    shown = ", ".join(f"{k:.3f}" for k in snapshot.kappas)
    over = f"kappa {shown} over the last {len(snapshot.kappas)} retraining{'s' * (len(snapshot.kappas) != 1)}"
    if snapshot.fired:
        return f"{over}: more labels are unlikely to change the model"
    if not snapshot.kappas:
        return (f"not yet: the stop set ({len(snapshot.external_ids)} items) has been predicted once "
                f"(by {snapshot.candidate or '-'}); {window} kappas in a row at >= {level:g} needed")
    return f"not yet: {over}, {snapshot.run} in a row at >= {level:g} ({window} needed)"
