"""The one shared model of the backend: loaded at start-up, served through one micro-batcher.

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
from dataclasses import dataclass

import numpy as np

from connector.batching import MicroBatcher
from connector.classifier import TextClassifier
from connector.labeling_config import ChoicesControl, ConfigCache
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


class NoModelYet(RuntimeError):
    """The model root holds no version yet; the service waits for the first one (HTTP 503)."""


def _on_gpu(device: str | None) -> bool:
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"


class ModelService:
    """Loads the current model version once and predicts through a :class:`MicroBatcher`.

    Large requests are cut into batches of ``max_batch_size`` with at most ``workers`` of them queued
    at a time, so other requests interleave instead of waiting behind them.
    """

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.store = ModelStore(settings.model_root)
        self.configs = ConfigCache()
        self._loaded: _Loaded | None = None
        if settings.model_version or self.store.current() is not None:
            self._loaded = _Loaded(*self.store.load(settings.model_version, device=settings.device))
        elif settings.reload_interval_s <= 0:
            raise FileNotFoundError(f"no model version under {settings.model_root} and HITL_RELOAD_INTERVAL_S=0: "
                                    "train one with `hitl train`, or set an interval to wait for one")
        else:
            log.warning("no model version under %s yet: waiting for one (checked every %.0f s); "
                        "train one with `hitl train`", settings.model_root, settings.reload_interval_s)
        self._swap_lock = threading.Lock()
        cores = os.cpu_count() or 1
        on_gpu = (self._loaded.clf.encoder.device.type == "cuda") if self._loaded else _on_gpu(settings.device)
        self.workers = settings.inference_workers or (1 if on_gpu else min(cores, 4))
        self.torch_threads = settings.torch_threads or max(1, cores // self.workers)
        self.batcher: MicroBatcher[str] = MicroBatcher(
            self._run_batch, max_batch_size=settings.max_batch_size, max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue, on_start=self._on_worker_start, name="inference", workers=self.workers)
        if self._loaded:
            meta, clf = self._loaded.meta, self._loaded.clf
            log.info("serving model version %s (labels %s, T=%.3f) on %s, %d inference worker(s) x %d torch thread(s)",
                     meta.version, meta.labels, meta.temperature, clf.encoder.device, self.workers, self.torch_threads)

    # -- model --------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """A model version is loaded (false while waiting for the first one)."""
        return self._loaded is not None

    def _current(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise NoModelYet(f"no model version yet under {self.settings.model_root}: waiting for the first one "
                             "(train one with `hitl train`, or let the scheduler's retraining promote one)")
        return loaded

    @property
    def model_version(self) -> str | None:
        """The served version; ``None`` while waiting for the first one."""
        return self._loaded.meta.version if self._loaded else None

    @property
    def max_length(self) -> int:
        return self._current().clf.encoder.max_length

    @property
    def labels(self) -> list[str]:
        return list(self._current().meta.labels)

    def _on_worker_start(self) -> None:
        import torch

        # a per-thread setting: the main thread's count does not carry over to this thread
        torch.set_num_threads(self.torch_threads)

    def _run_batch(self, texts: list[str]) -> list[tuple[np.ndarray, bool, _Loaded]]:
        loaded = self._current()  # one version per batch, even during a swap
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
            same_encoder = old is not None and (
                (meta.encoder.get("model") or "default") == (old.meta.encoder.get("model") or "default"))
            clf, meta = self.store.load(version, encoder=old.clf.encoder if same_encoder else None,
                                        device=self.settings.device)
            self._loaded = _Loaded(clf, meta)
            log.info("switched model version %s -> %s", old.meta.version if old else "(none)", version)
            return version

    # -- prediction ---------------------------------------------------------------------------

    async def predict(self, texts: Sequence[str]) -> list[Prediction]:
        self._current()
        size, window = self.batcher.max_batch_size, self.workers
        chunks = [list(texts[i:i + size]) for i in range(0, len(texts), size)]
        rows: list[tuple[np.ndarray, bool, _Loaded]] = []
        for start in range(0, len(chunks), window):
            futures = [asyncio.wrap_future(self.batcher.submit(c)) for c in chunks[start:start + window]]
            for part in await asyncio.gather(*futures):
                rows.extend(part)
        out = []
        for probs, truncated, loaded in rows:
            # columns follow classes_ (sorted), which may differ from the order meta.json lists
            out.append(to_predictions(probs[None, :], loaded.clf.classes_.tolist(), loaded.meta.version,
                                      np.array([truncated]))[0])
        return out

    def setup(self, label_config: str) -> ProjectSetup:
        """Check a labeling config against the model; raises on configs it cannot serve."""
        labels = self.labels  # raises NoModelYet first: without a model no config can be checked
        control = self.configs.get(label_config)
        known = set(labels)
        usable = tuple(label for label in control.labels if label in known)
        setup = ProjectSetup(control, usable, tuple(label for label in control.labels if label not in known),
                             tuple(label for label in labels if label not in set(control.labels)))
        if not usable:
            raise SetupError(f"none of the config's labels {list(control.labels)} is known to model version "
                             f"{self.model_version} (it knows {self.labels})")
        return setup

    def close(self) -> None:
        self.batcher.close()
