"""The one shared model of the backend: loaded at start-up, served through one micro-batcher."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from connector.batching import MicroBatcher
from connector.classifier import TextClassifier
from connector.labeling_config import ChoicesControl, parse_labeling_config
from connector.model_store import ModelStore, ModelVersion
from connector.prediction import Prediction, to_predictions
from ml_backend.settings import BackendSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Loaded:
    clf: TextClassifier
    meta: ModelVersion


@dataclass(frozen=True)
class ProjectSetup:
    """A labeling config checked against the model's labels."""

    control: ChoicesControl
    usable: tuple[str, ...]           # config labels the model knows
    unknown: tuple[str, ...]          # config labels the model does not know
    unused: tuple[str, ...]           # model labels the config lacks

    def warnings(self) -> list[str]:
        out = []
        if self.unknown:
            out.append(f"labels in the config that the model does not know (never predicted): {list(self.unknown)}")
        if self.unused:
            out.append(f"model labels missing from the config (never returned): {list(self.unused)}")
        return out


class SetupError(ValueError):
    """The labeling config cannot be served by the current model."""


@lru_cache(maxsize=256)
def _parse_cached(config: str) -> ChoicesControl:
    return parse_labeling_config(config)[0]


class ModelService:
    """Loads the current model version once and predicts through a :class:`MicroBatcher`."""

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_root)
        clf, meta = self.store.load(settings.model_version, device=settings.device)
        self._loaded = _Loaded(clf, meta)
        self._swap_lock = threading.Lock()
        cores = os.cpu_count() or 1
        on_gpu = clf.encoder.device.type == "cuda"
        self.workers = settings.inference_workers or (1 if on_gpu else min(cores, 4))
        self.torch_threads = settings.torch_threads or max(1, cores // self.workers)
        self.batcher: MicroBatcher[str] = MicroBatcher(
            self._run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue, on_start=self._on_worker_start, name="inference", workers=self.workers)
        log.info("serving model version %s (labels %s, T=%.3f) on %s, %d inference worker(s) x %d torch thread(s)",
                 meta.version, meta.labels, meta.temperature, clf.encoder.device, self.workers, self.torch_threads)

    # -- model --------------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        return self._loaded.meta.version

    @property
    def max_length(self) -> int:
        return self._loaded.clf.encoder.max_length

    @property
    def labels(self) -> list[str]:
        return list(self._loaded.meta.labels)

    def _on_worker_start(self) -> None:
        import torch

        # a per-thread setting: the main thread's count does not carry over to this thread
        torch.set_num_threads(self.torch_threads)

    def _run_batch(self, texts: list[str]) -> list[tuple[np.ndarray, bool, _Loaded]]:
        loaded = self._loaded  # one version per batch, even during a swap
        x, truncated = loaded.clf.encoder.encode(texts, return_truncated=True)
        probs = loaded.clf.predict_proba_from_embeddings(x, texts=texts)
        return [(probs[i], bool(truncated[i]), loaded) for i in range(len(texts))]

    def reload_if_changed(self) -> str | None:
        """Switch to the promoted version if it changed; returns the new version or ``None``."""
        if self.settings.model_version:
            return None
        target = self.store.current()
        if target is None or target == self.model_version:
            return None
        return self.activate(target)

    def activate(self, version: str) -> str:
        """Load ``version`` beside the running one (sharing its encoder) and switch atomically."""
        with self._swap_lock:
            old = self._loaded
            meta = self.store.meta(version)
            same_encoder = (meta.encoder.get("model") or "default") == (old.meta.encoder.get("model") or "default")
            clf, meta = self.store.load(version, encoder=old.clf.encoder if same_encoder else None,
                                        device=self.settings.device)
            self._loaded = _Loaded(clf, meta)
            log.info("switched model version %s -> %s", old.meta.version, version)
            return version

    # -- prediction ---------------------------------------------------------------------------

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        rows = await asyncio.wrap_future(self.batcher.submit(list(texts)))
        out = []
        for probs, truncated, loaded in rows:
            # columns follow classes_ (sorted), which may differ from the order meta.json lists
            out.append(to_predictions(probs[None, :], loaded.clf.classes_.tolist(), loaded.meta.version,
                                      np.array([truncated]))[0])
        return out

    def setup(self, label_config: str) -> ProjectSetup:
        """Check a labeling config against the model; raises on configs it cannot serve."""
        control = _parse_cached(label_config)
        known = set(self.labels)
        usable = tuple(label for label in control.labels if label in known)
        setup = ProjectSetup(control, usable, tuple(label for label in control.labels if label not in known),
                             tuple(label for label in self.labels if label not in set(control.labels)))
        if not usable:
            raise SetupError(f"none of the config's labels {list(control.labels)} is known to model version "
                             f"{self.model_version} (it knows {self.labels})")
        return setup

    def close(self) -> None:
        self.batcher.close()
