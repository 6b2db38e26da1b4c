"""The models of the backend: loaded at start-up, served through one micro-batcher.

The main model (``model_root``: a single-label head, today's layout) serves a config's first
``<Choices>`` that has no model of its own; every control with a model of its own
(``model_root/controls/<name>``, :mod:`connector.control_models`: a multi-label control, a task's
other controls) serves the ``<Choices>`` of that name. A text is embedded once per distinct
encoder, whatever the number of heads.

On an empty model root (a fresh deployment's volume) the service starts without a model and waits:
``ready`` is false, ``predict``/``setup`` raise :class:`NoModelYet` (HTTP 503), and the version
poll loads the first version promoted. No model is invented: a random head would route items.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from connector.batching import MicroBatcher
from connector.classifier import TextClassifier
from connector.control_models import LoadedModel, control_names, control_store, load_version, same_encoder
from connector.labeling_config import (
    ChoicesControl,
    ConfigCache,
    Coverage,
    Head,
    LabelingConfig,
    LabelsControl,
    coverage,
)
from connector.model_store import ModelStore, ModelVersion
from connector.prediction import ControlPrediction, Prediction, choices_prediction, to_predictions
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    clf: TextClassifier
    meta: ModelVersion


@dataclass(frozen=True)
class ServedControl:
    """One ``<Choices>`` or ``<Labels>`` of a config and the model that serves it (``source``:
    ``"main"`` or the control's own model, by name)."""

    control: ChoicesControl | LabelsControl
    source: str
    label_set: bool
    thresholds: dict[str, float]

    @property
    def spans(self) -> bool:
        return isinstance(self.control, LabelsControl)


@dataclass(frozen=True)
class ProjectSetup:
    """A labeling config checked against the models: what each control gets (``served``) and
    the whole :class:`~connector.labeling_config.Coverage`."""

    config: LabelingConfig
    coverage: Coverage
    served: tuple[ServedControl, ...]

    @property
    def control(self) -> ChoicesControl:
        """The first served control (a one-control config's only one)."""
        return self.served[0].control

    @property
    def usable(self) -> tuple[str, ...]:
        """The first served control's labels a model knows."""
        first = self.served[0].control.from_name
        return next(c.labels for c in self.coverage.predicted if c.name == first)

    def warnings(self) -> list[str]:
        return self.coverage.warnings()


@dataclass(frozen=True)
class TextOutput:
    """What the models say about one text: ``main`` (the main model's prediction, ``None`` without
    one), ``controls`` (control name -> calibrated probabilities, by label), which version said it
    and whether the text was cut."""

    main: Prediction | None
    controls: dict[str, dict[str, float]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    models: dict[str, LoadedModel] = field(default_factory=dict)
    truncated: bool = False
    spans: dict[str, Any] = field(default_factory=dict)  # control name -> SpanPrediction


class SetupError(ValueError):
    """The labeling config cannot be served by the current model."""


class NoModelYet(RuntimeError):
    """The model root holds no version yet; the service waits for the first one (HTTP 503)."""


def _on_gpu(device: str | None) -> bool:
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"


class ModelService:
    """Loads the current model versions once and predicts through a :class:`MicroBatcher`.

    Large requests are cut into batches of ``max_batch_size`` with at most ``workers`` of them queued
    at a time, so other requests interleave instead of waiting behind them.
    """

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_root)
        self.configs = ConfigCache()
        self._loaded: _Loaded | None = None
        self._controls: dict[str, LoadedModel] = {}
        if settings.model_version or self.store.current() is not None:
            self._loaded = _Loaded(*self.store.load(settings.model_version, device=settings.device))
        self._controls = self._load_controls({})
        if self._loaded is None and not self._controls:
            if settings.reload_interval_s <= 0:
                raise FileNotFoundError(f"no model version under {settings.model_root} and HITL_RELOAD_INTERVAL_S=0: "
                                        "train one with `hitl train`, or set an interval to wait for one")
            log.warning("no model version under %s yet: waiting for one (checked every %.0f s); "
                        "train one with `hitl train`", settings.model_root, settings.reload_interval_s)
        self._swap_lock = threading.Lock()
        cores = os.cpu_count() or 1
        first = self._any_encoder()
        on_gpu = (first.device.type == "cuda") if first is not None else _on_gpu(settings.device)
        self.workers = settings.inference_workers or (1 if on_gpu else min(cores, 4))
        self.torch_threads = settings.torch_threads or max(1, cores // self.workers)
        self.batcher: MicroBatcher[str] = MicroBatcher(
            self._run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue, on_start=self._on_worker_start, name="inference", workers=self.workers)
        if self._loaded:
            meta, clf = self._loaded.meta, self._loaded.clf
            log.info("serving model version %s (labels %s, T=%.3f) on %s, %d inference worker(s) x %d torch thread(s)",
                     meta.version, meta.labels, meta.temperature, clf.encoder.device, self.workers, self.torch_threads)
        for name, m in self._controls.items():
            log.info("serving control %r: %s model version %s (labels %s)", name, m.kind, m.version, m.labels)

    # -- model --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """A model version is loaded (false while waiting for the first one)."""
        return self._loaded is not None or bool(self._controls)

    def _current(self) -> _Loaded | None:
        """The main model (``None`` when only controls have models); raises :class:`NoModelYet`
        when nothing is loaded."""
        loaded = self._loaded
        if loaded is None and not self._controls:
            raise NoModelYet(f"no model version yet under {self.settings.model_root}: waiting for the first one "
                             "(train one with `hitl train`, or let the scheduler's retraining promote one)")
        return loaded

    def _any_encoder(self) -> object | None:
        if self._loaded is not None:
            return self._loaded.clf.encoder
        return next((m.encoder for m in self._controls.values() if m.encoder is not None), None)

    @property
    def model_version(self) -> str | None:
        """The served version: the main model's, else (only controls have models) each control's as
        ``name:version`` joined by ``+``; ``None`` while waiting for the first one."""
        if self._loaded is not None:
            return self._loaded.meta.version
        if self._controls:
            return "+".join(f"{n}:{m.version}" for n, m in sorted(self._controls.items()))
        return None

    @property
    def main_version(self) -> str | None:
        """The main model's served version (``None`` without one)."""
        return self._loaded.meta.version if self._loaded is not None else None

    @property
    def control_versions(self) -> dict[str, str]:
        """Control name -> the version of its own model that is served."""
        return {n: m.version for n, m in self._controls.items()}

    @property
    def max_length(self) -> int:
        self._current()
        encoder = self._any_encoder()
        return encoder.max_length if encoder is not None else 512

    @property
    def labels(self) -> list[str]:
        loaded = self._current()
        return list(loaded.meta.labels) if loaded is not None else []

    def _on_worker_start(self) -> None:
        import torch

        # a per-thread setting: the main thread's count does not carry over to this thread
        torch.set_num_threads(self.torch_threads)

    def _run_batch(self, texts: list[str]) -> list[TextOutput]:
        main, controls = self._loaded, self._controls  # one set of versions per batch, even during a swap
        if main is None and not controls:
            raise NoModelYet(f"no model version yet under {self.settings.model_root}")
        embedded: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def embed(encoder: object) -> tuple[np.ndarray, np.ndarray]:
            if id(encoder) not in embedded:
                x, cut = encoder.encode(texts, return_truncated=True)
                embedded[id(encoder)] = (x, np.asarray(cut, dtype=bool))
            return embedded[id(encoder)]

        truncated = np.zeros(len(texts), dtype=bool)
        preds: list[Prediction | None] = [None] * len(texts)
        if main is not None:
            x, cut = embed(main.clf.encoder)
            truncated |= cut
            probs = main.clf.predict_proba_from_embeddings(x, texts=texts)
            # columns follow classes_ (sorted), which may differ from the order meta.json lists
            preds = to_predictions(probs, main.clf.classes_.tolist(), main.meta.version, cut)
        per_control: dict[str, np.ndarray] = {}
        spans: dict[str, list[Any]] = {}
        for name, m in controls.items():
            if m.kind == "spans":  # token windows over the whole text: nothing is cut
                spans[name] = m.model.predict(texts)
                continue
            x, cut = embed(m.encoder)
            truncated |= cut
            per_control[name] = m.predict_proba_from_embeddings(x, texts=texts)
        versions = {n: m.version for n, m in controls.items()}
        return [TextOutput(preds[i], {n: {label: float(p) for label, p in zip(controls[n].labels, per_control[n][i])}
                                      for n in per_control}, versions, controls, bool(truncated[i]),
                           {n: spans[n][i] for n in spans})
                for i in range(len(texts))]

    def _load_controls(self, old: dict[str, LoadedModel]) -> dict[str, LoadedModel]:
        """Every control's current version under the model root: an unchanged one kept, a new one
        loaded sharing an encoder already loaded when it names the same base encoder."""
        out: dict[str, LoadedModel] = {}
        for name in control_names(self.settings.model_root):
            store = control_store(self.settings.model_root, name)
            target = store.current()
            if name in old and old[name].version == target:
                out[name] = old[name]
                continue
            meta = store.meta(target)
            loaded = [m for m in (*old.values(), *out.values()) if m.encoder is not None]
            shared = next((m.encoder for m in loaded if same_encoder(m.meta.encoder, meta.encoder)), None)
            if shared is None and self._loaded is not None and same_encoder(self._loaded.meta.encoder, meta.encoder):
                shared = self._loaded.clf.encoder
            try:
                out[name] = load_version(store, target, encoder=shared,
                                         **({} if shared is not None else {"device": self.settings.device}))
            except Exception:
                log.exception("could not load control %r version %s; it is not served", name, target)
                if name in old:
                    out[name] = old[name]
        return out

    def reload_if_changed(self) -> str | None:
        """Switch to the promoted versions if any changed; returns what changed in words, or ``None``."""
        changed = []
        if not self.settings.model_version:
            target = self.store.current()
            if target is not None and target != (self._loaded.meta.version if self._loaded else None):
                changed.append(self.activate(target))
        with self._swap_lock:
            controls = self._load_controls(self._controls)
            if {n: m.version for n, m in controls.items()} != self.control_versions:
                log.info("controls served: %s", {n: m.version for n, m in controls.items()} or "none")
                changed.extend(f"{n}:{m.version}" for n, m in controls.items()
                               if self._controls.get(n) is None or self._controls[n].version != m.version)
                self._controls = controls
        return ", ".join(changed) or None

    def activate(self, version: str) -> str:
        """Load ``version`` beside the running one (sharing its encoder) and switch atomically."""
        with self._swap_lock:
            old = self._loaded
            meta = self.store.meta(version)
            same_encoder_ = old is not None and (
                (meta.encoder.get("model") or "default") == (old.meta.encoder.get("model") or "default"))
            clf, meta = self.store.load(version, encoder=old.clf.encoder if same_encoder_ else None,
                                        device=self.settings.device)
            self._loaded = _Loaded(clf, meta)
            log.info("switched model version %s -> %s", old.meta.version if old else "(none)", version)
            return version

    # -- prediction ---------------------------------------------------------------------------

    async def predict_all(self, texts: Sequence[str]) -> list[TextOutput]:
        """What every loaded model says about each text (in order)."""
        self._current()
        size, window = self.batcher.max_batch_size, self.workers
        chunks = [list(texts[i:i + size]) for i in range(0, len(texts), size)]
        rows: list[TextOutput] = []
        for start in range(0, len(chunks), window):
            futures = [asyncio.wrap_future(self.batcher.submit(c)) for c in chunks[start:start + window]]
            for part in await asyncio.gather(*futures):
                rows.extend(part)
        return rows

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """The main model's predictions (:class:`NoModelYet` when only controls have models)."""
        if self._current() is None:
            raise NoModelYet(f"no main model version under {self.settings.model_root}: only controls have "
                             f"models ({', '.join(self._controls)})")
        rows = await self.predict_all(texts)
        if any(r.main is None for r in rows):  # the main model went away during the request
            raise NoModelYet(f"no main model version under {self.settings.model_root}")
        return [r.main for r in rows]

    def setup(self, label_config: str) -> ProjectSetup:
        """Check a labeling config against the models, control by control; raises
        :class:`SetupError` (saying why) when nothing in it can be predicted."""
        main = self._current()  # raises NoModelYet first: without a model no config can be checked
        controls = self._controls
        parsed = self.configs.get_config(label_config)
        heads: dict[str, Head] = {name: m.head() for name, m in controls.items()}
        sources = {name: name for name in controls}
        main_for = None
        if main is not None:
            main_for = next((c.from_name for c in parsed.choices if c.from_name not in controls), None)
            if main_for is not None:
                heads[main_for] = Head("choices", tuple(str(c) for c in main.clf.classes_))
                sources[main_for] = "main"
        cov = coverage(parsed, heads)
        if not cov.ok:
            only_main = main_for is not None and len(parsed.choices) == 1 and not parsed.spans and not controls
            if only_main:
                control = parsed.choices[0]
                raise SetupError(f"none of the config's labels {list(control.labels)} is known to model version "
                                 f"{self.model_version} (it knows {self.labels})")
            raise SetupError(f"unsupported labeling config: {cov.summary()}")
        predicted = {c.name for c in cov.predicted}
        served = []
        for control in (*parsed.choices, *parsed.spans):
            if control.from_name not in predicted:
                continue
            source = sources[control.from_name]
            if source == "main":
                served.append(ServedControl(control, "main", False, {}))
            else:
                m = controls[source]
                served.append(ServedControl(control, source, m.label_set, m.thresholds()))
        return ProjectSetup(parsed, cov, tuple(served))

    def ls_result(self, setup: ProjectSetup, output: TextOutput, text: str) -> tuple[list[dict[str, Any]], float]:
        """One task's Label Studio result items (a ``choices`` item per served ``<Choices>``, a
        ``labels`` item per span of a served ``<Labels>``, offsets on ``text``) and its score, the
        least of its controls' (a span control's: ``min(least confident span, 1 - missed)``)."""
        from connector.spans import to_label_studio

        items: list[dict[str, Any]] = []
        scores: list[float] = []
        choices = iter(self.control_predictions(setup, output))
        for served in setup.served:
            if not served.spans:
                part = next(choices)
                items.append(part.result())
                scores.append(part.score)
                continue
            pred = output.spans[served.source]
            known = set(served.control.labels)
            items.extend(to_label_studio(text, [s for s in pred.spans if s.label in known],
                                         from_name=served.control.from_name, to_name=served.control.to_name))
            scores.append(pred.score)
        return items, float(min(scores))

    def control_predictions(self, setup: ProjectSetup, output: TextOutput) -> list[ControlPrediction]:
        """One :class:`~connector.prediction.ControlPrediction` per served ``<Choices>`` of ``setup``."""
        parts = []
        for served in setup.served:
            if served.spans:
                continue
            if served.source == "main":
                if output.main is None:
                    raise NoModelYet("the main model went away during the request")
                probs, label_set = output.main.probabilities, False
                thresholds: float | dict[str, float] = self.settings.multi_label_threshold
            else:
                probs, label_set, thresholds = output.controls[served.source], served.label_set, served.thresholds
            parts.append(choices_prediction(served.control, probs, label_set=label_set, thresholds=thresholds))
        return parts

    def close(self) -> None:
        self.batcher.close()
