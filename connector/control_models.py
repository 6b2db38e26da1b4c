"""The models of a task's controls on disk, and the one loader both the ML backend and the retraining use.

Layout under a model root (``HITL_MODEL_ROOT``)::

    versions/ ... current              a single-label task with one control: as it always was
                                       (:class:`~connector.model_store.ModelStore`)
    controls/<name>/versions/v1/ ...   any other control (a multi-label one, the second control of a
    controls/<name>/current            task, ...): a ModelStore of its own, ``<name>`` the Label
                                       Studio ``from_name`` / Argilla question name

A version's ``meta.json`` says its ``kind``: ``single`` (absent: a softmax head,
``head.safetensors``, loaded by ``ModelStore.load``), ``multi`` (a
:class:`~connector.multilabel.MultiLabelClassifier` written by
:func:`~connector.multilabel.save_multilabel` into the version directory) or ``spans`` (a
:class:`~connector.span_model.SpanTagger` or a Hugging Face token classifier, saved by its own
``save`` into the version directory). :func:`load_version` dispatches on it;
:func:`save_multilabel_version` and :func:`save_span_version` write a version the way
``ModelStore.save`` writes a single one (a temporary directory renamed when complete).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from connector.labeling_config import CONTROL_NAME_RE as _NAME_RE
from connector.labeling_config import Head, check_control_name
from connector.model_store import ModelStore, ModelVersion
from connector.multilabel import MultiLabelClassifier, load_multilabel, save_multilabel

CONTROLS_DIR = "controls"
KINDS = ("single", "multi", "spans")
HF_SPANS = "huggingface"  # a span version's ``encoder.weights``: a token classifier with a network of its own

__all__ = ["CONTROLS_DIR", "KINDS", "LoadedModel", "check_control_name", "control_names", "control_store",
           "load_version", "same_encoder", "save_multilabel_version", "save_span_version"]


def control_store(model_root: str | os.PathLike, name: str) -> ModelStore:
    """The model versions of control ``name``: ``<model_root>/controls/<name>``."""
    return ModelStore(Path(model_root) / CONTROLS_DIR / check_control_name(name))


def control_names(model_root: str | os.PathLike) -> list[str]:
    """The controls under ``model_root`` that hold at least one version, sorted."""
    base = Path(model_root) / CONTROLS_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and _NAME_RE.match(p.name) and ModelStore(p).current() is not None)


@dataclass(frozen=True)
class LoadedModel:
    """One loaded version of any kind: ``model`` is a :class:`~connector.classifier.TextClassifier`
    (``single``) or a :class:`MultiLabelClassifier` (``multi``)."""

    kind: str
    model: Any
    meta: ModelVersion

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def encoder(self) -> Any:
        """The text encoder it embeds with (``None`` for a span model with a network of its own)."""
        return getattr(self.model, "encoder", None)

    @property
    def labels(self) -> list[str]:
        if self.kind == "spans":
            return [str(c) for c in self.model.labels]
        return [str(c) for c in self.model.classes_]

    @property
    def label_set(self) -> bool:
        """Whether its probabilities are independent per label (a set model)."""
        return self.kind == "multi"

    def thresholds(self) -> dict[str, float]:
        """Label -> the threshold a label is chosen at (a set model's; 0.5 for a single-label one)."""
        if self.kind == "multi":
            return {label: float(t) for label, t in zip(self.labels, self.model.thresholds_)}
        return {label: 0.5 for label in self.labels}

    def head(self) -> Head:
        """What it predicts, for :func:`connector.labeling_config.coverage`."""
        kind = {"multi": "multilabel", "spans": "spans"}.get(self.kind, "choices")
        return Head(kind, tuple(self.labels))

    def predict_proba_from_embeddings(self, x: np.ndarray, *, texts: list[str] | None = None) -> np.ndarray:
        """``(n, k)`` calibrated probabilities, columns in ``labels`` order."""
        return self.model.predict_proba_from_embeddings(x, texts=texts)

    def task_scores(self, probs: np.ndarray) -> np.ndarray:
        """Per row, the confidence of the decision: the most probable label's probability (single),
        the least confident label decision (multi)."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.kind == "multi":
            return self.model.task_score(probs)
        return probs.max(axis=1)


def _encoder_meta(encoder: Any, encoder_ref: str | None) -> dict[str, Any]:
    meta = {"model": encoder_ref or (str(encoder.model_path) if encoder is not None else "default"),
            "max_length": getattr(encoder, "max_length", None), "pooling": "mean",
            "normalize": getattr(encoder, "normalize", True)}
    if encoder is not None and getattr(encoder, "chunk", False):
        meta["chunk"] = True
    return meta


def save_multilabel_version(store: ModelStore, clf: MultiLabelClassifier, *, metrics: dict[str, Any] | None = None,
                            encoder_ref: str | None = None, parent: str | None = None, promote: bool = False,
                            trained_on: list[str] | None = None) -> ModelVersion:
    """Write a fitted ``clf`` as the store's next version (``kind: multi``); promote it if asked."""
    state = clf.state()
    return _save_version(store, "multi", [str(c) for c in clf.classes_], _encoder_meta(clf.encoder, encoder_ref),
                         lambda d: save_multilabel(state, d), hyperparameters=state.hyperparameters,
                         metrics=metrics, parent=parent, promote=promote, trained_on=trained_on)


def save_span_version(store: ModelStore, model: Any, *, metrics: dict[str, Any] | None = None,
                      encoder_ref: str | None = None, parent: str | None = None, promote: bool = False,
                      trained_on: list[str] | None = None) -> ModelVersion:
    """Write a fitted span model (:class:`~connector.span_model.SpanTagger`, or a Hugging Face one)
    as the store's next version (``kind: spans``); promote it if asked."""
    encoder = getattr(model, "encoder", None)
    enc = _encoder_meta(encoder, encoder_ref) if encoder is not None else {"model": None, "weights": HF_SPANS}
    return _save_version(store, "spans", [str(c) for c in model.labels], enc, model.save, hyperparameters={},
                         metrics=metrics, parent=parent, promote=promote, trained_on=trained_on)


def _save_version(store: ModelStore, kind: str, labels: list[str], encoder: dict[str, Any], write: Any, *,
                  hyperparameters: dict[str, Any], metrics: dict[str, Any] | None, parent: str | None,
                  promote: bool, trained_on: list[str] | None) -> ModelVersion:
    from connector.model_store import _VERSION_RE, _atomic_write, _remove_stale_tmp

    existing = store.versions()
    n = int(_VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1
    name = f"v{n}"
    meta = ModelVersion(version=name, labels=labels, temperature=1.0, encoder=encoder, metrics=metrics or {},
                        hyperparameters=hyperparameters, created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                        parent=parent, kind=kind)
    store.versions_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(store.versions_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=store.versions_dir))
    try:
        write(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2))
        if trained_on is not None:
            (tmp / "trained_on.json").write_text(json.dumps(sorted(trained_on)))
        tmp.rename(store.versions_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if promote:
        _atomic_write(store.root / "current", name + "\n")
    return meta


def load_version(store: ModelStore, version: str | None = None, *, encoder: Any = None,
                 **encoder_kwargs: Any) -> LoadedModel:
    """Load ``version`` (default: the current one) of any kind. ``encoder`` is reused when given (a
    version with its own fine-tuned encoder loads that one)."""
    from connector.encoder import TextEncoder

    version = version or store.current()
    if version is None:
        raise FileNotFoundError(f"no model version under {store.root}")
    meta = store.meta(version)
    if meta.kind == "single":
        clf, meta = store.load(version, encoder=encoder, **encoder_kwargs)
        return LoadedModel("single", clf, meta)
    if meta.kind not in ("multi", "spans"):
        raise ValueError(f"version {version} under {store.root} is a {meta.kind!r} model, which this release "
                         f"does not serve (kinds: {', '.join(KINDS)})")
    if meta.kind == "spans" and meta.encoder.get("weights") == HF_SPANS:  # a network of its own
        from connector.span_model import load_span_model

        return LoadedModel("spans", load_span_model(store.path(version)), meta)
    if encoder is None:
        ref = meta.encoder.get("model")
        encoder = TextEncoder(None if ref in (None, "default") else ref, max_length=meta.encoder.get("max_length"),
                              normalize=meta.encoder.get("normalize", True),
                              chunk=bool(meta.encoder.get("chunk", False)), **encoder_kwargs)
    if meta.kind == "spans":
        from connector.span_model import load_span_model

        return LoadedModel("spans", load_span_model(store.path(version), encoder=encoder), meta)
    state = load_multilabel(store.path(version))
    if state.coef.shape[1] != encoder.dim:
        raise ValueError(f"version {version} under {store.root}: head width {state.coef.shape[1]} does not fit "
                         f"encoder dim {encoder.dim}")
    return LoadedModel("multi", MultiLabelClassifier.from_state(state, encoder), meta)


def same_encoder(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two versions' encoder records name the same base encoder, none fine-tuned (so one
    loaded encoder, and one embedding, serves both)."""
    if a.get("weights") or b.get("weights"):
        return False
    keys = ("model", "max_length", "normalize", "chunk")
    norm = [{k: (x.get(k) or ("default" if k == "model" else None)) for k in keys} for x in (a, b)]
    norm[0]["chunk"], norm[1]["chunk"] = bool(norm[0]["chunk"]), bool(norm[1]["chunk"])
    return norm[0] == norm[1]
