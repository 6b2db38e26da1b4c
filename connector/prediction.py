"""Turn calibrated probability rows into prediction records, and into Label Studio results (one
result item per control, label sets included: :func:`choices_prediction`, :func:`ls_prediction`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from connector.labeling_config import ChoicesControl
from connector.uncertainty import entropy, margin


@dataclass(frozen=True)
class Prediction:
    """One text's prediction: top label, its calibrated probability, and uncertainty."""

    label: str
    confidence: float
    probabilities: dict[str, float]
    entropy: float
    margin: float
    model_version: str
    truncated: bool = False


def to_predictions(probs: np.ndarray, classes: list[str], model_version: str,
                   truncated: np.ndarray | None = None) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probs`` (columns in ``classes`` order)."""
    probs = np.asarray(probs, dtype=np.float64)
    top = probs.argmax(axis=1)
    ent, mar = entropy(probs), margin(probs)
    trunc = truncated if truncated is not None else np.zeros(len(probs), dtype=bool)
    return [
        Prediction(
            label=classes[top[i]],
            confidence=float(probs[i, top[i]]),
            probabilities={c: float(p) for c, p in zip(classes, probs[i])},
            entropy=float(ent[i]),
            margin=float(mar[i]),
            model_version=model_version,
            truncated=bool(trunc[i]),
        )
        for i in range(len(probs))
    ]


# -- Label Studio results: one per control, label sets included ---------------------------------

@dataclass(frozen=True)
class ControlPrediction:
    """A model's answer for one ``<Choices>`` control of a config: the labels ``chosen`` (config
    order), the ``probabilities`` of the control's labels the model knows, and ``score``, the
    confidence of the decision (one label: its probability; a set: the least confident label
    decision)."""

    control: ChoicesControl
    chosen: tuple[str, ...]
    probabilities: dict[str, float]
    score: float

    def result(self) -> dict[str, Any]:
        """One Label Studio result item: the control's ``choices`` result, with the decision's
        ``score`` and, under ``meta.scores``, each label's probability (Label Studio stores a
        result item's extra keys as they are, and its validation reads only ``from_name``,
        ``to_name``, ``type`` and ``value``)."""
        return {**self.control.result(list(self.chosen)), "score": self.score,
                "meta": {"scores": dict(self.probabilities)}}


def choices_prediction(control: ChoicesControl, probabilities: Mapping[str, float], *,
                       label_set: bool | None = None,
                       thresholds: float | Mapping[str, float] = 0.5) -> ControlPrediction:
    """What to pre-annotate for ``control`` from a model's ``probabilities`` (label -> probability;
    labels outside the control are ignored, control labels the model lacks are never chosen).

    ``label_set``: whether the probabilities are independent per label (a multi-label model);
    ``None``: they are when the control takes several choices. Independent probabilities choose
    every label at or over its threshold (``thresholds``: one for all, or label -> threshold,
    others 0.5), possibly none, scored by the least confident label decision; on a single-choice
    control only the most probable label is kept. A distribution (a single-label model) chooses its
    most probable label, scored by its probability; on a multiple-choice control also every other
    label at or over its threshold. Raises ``ValueError`` when the model knows none of the
    control's labels (say so: :func:`connector.labeling_config.coverage`)."""
    known = {label: float(probabilities[label]) for label in control.labels if label in probabilities}
    if not known:
        raise ValueError(f"the model knows none of the labels of <Choices name={control.from_name!r}>: "
                         f"{list(control.labels)}")
    independent = control.multiple if label_set is None else label_set

    def threshold(label: str) -> float:
        return float(thresholds.get(label, 0.5)) if isinstance(thresholds, Mapping) else float(thresholds)

    best = max(known, key=lambda label: known[label])
    if independent and control.multiple:
        chosen = tuple(label for label in known if known[label] >= threshold(label))
        decisions = [p if p >= threshold(label) else 1.0 - p for label, p in known.items()]
        return ControlPrediction(control, chosen, known, float(min(decisions)))
    if independent:  # a set model on a one-choice control: its most probable label
        return ControlPrediction(control, (best,), known, known[best])
    extra = tuple(label for label in known if label != best and known[label] >= threshold(label)) if control.multiple else ()
    chosen = tuple(label for label in known if label == best or label in extra)
    return ControlPrediction(control, chosen, known, known[best])


def ls_prediction(parts: Sequence[ControlPrediction], model_version: str, *,
                  keep_empty: bool = False) -> dict[str, Any]:
    """One Label Studio prediction for a task: a result item per control (in ``parts`` order) and
    the task ``score``, the least of the controls' scores (the task is as sure as its least sure
    control). A control that chose no label (a set model deciding that none applies) gets no result
    item unless ``keep_empty`` (an empty ``choices`` result, which Label Studio's validation
    accepts); its score still counts."""
    if not parts:
        raise ValueError("a prediction needs at least one control's answer")
    result = [p.result() for p in parts if p.chosen or keep_empty]
    return {"result": result, "score": float(min(p.score for p in parts)), "model_version": model_version}
