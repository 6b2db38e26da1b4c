"""Model versions on disk: one directory per version, nothing that unpickles.

Layout under a model root::

    versions/v3/head.safetensors   the head's ``coef`` (k, d) and ``intercept`` (k,); with word
                                   features also ``lex_coef``, ``lex_intercept`` and ``idf``
    versions/v3/meta.json          labels, temperature, encoder reference, hyperparameters,
                                   metrics, created_at (``lexical``: the word head's temperature)
    versions/v3/lexical.json       the word features' vocabulary (only with word features)
    versions/v3/trained_on.json    external ids of the training items (when given)
    versions/v3/encoder/           a fine-tuned encoder of the version's own (a Hugging Face model
                                   directory, ``model.safetensors``); ``meta.json``'s ``encoder``
                                   then says ``weights: "encoder"``, its ``sha256`` and the ``base``
    current                        the name of the version to serve (written atomically)

Rows of the tensors follow ``labels``. The classifier's fitted state goes through
:class:`connector.classifier.FittedState`; a version whose labels are not sorted (saved by
retraining before December 2026, in the task's label order) loads with its rows reordered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from connector.classifier import FittedState, TextClassifier
from connector.encoder import TextEncoder

_VERSION_RE = re.compile(r"^v(\d+)$")
OWN_ENCODER = "encoder"  # a version's fine-tuned encoder directory
STALE_TMP_S = 3600.0  # a save's temporary directory older than this was left by a crash


@dataclass
class ModelVersion:
    """What ``meta.json`` of a version says."""

    version: str
    labels: list[str]
    temperature: float
    encoder: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    parent: str | None = None
    lexical: dict[str, Any] | None = None  # the word-feature head: its temperature and size
    kind: str = "single"  # "single" (this store's head), "multi" or "spans" (connector/control_models.py)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if out["kind"] == "single":  # absent means single: a single-label version's meta.json is as it was
            del out["kind"]
        return out


class ModelStore:
    """Save, list, load and promote model versions under ``root``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def versions(self) -> list[str]:
        """Version names, oldest first."""
        if not self.versions_dir.exists():
            return []
        names = [p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name) and (p / "meta.json").exists()]
        return sorted(names, key=lambda n: int(_VERSION_RE.match(n).group(1)))

    def path(self, version: str) -> Path:
        """The directory of ``version``: a ``v<N>`` name (else ``ValueError``, so a name from the
        command line never reaches outside ``versions/``) that the store holds (else ``FileNotFoundError``)."""
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise ValueError(f"{version!r} is not a model version name (v1, v2, ...)")
        if version not in self.versions():
            raise FileNotFoundError(f"no model version {version!r} under {self.versions_dir} "
                                    f"(known: {', '.join(self.versions()) or 'none'})")
        return self.versions_dir / version

    def trained_on(self, version: str) -> set[str] | None:
        """External ids a version was trained on (None when it was saved without them)."""
        path = self.path(version) / "trained_on.json"
        return set(json.loads(path.read_text())) if path.exists() else None

    def current(self) -> str | None:
        """The promoted version, else the newest one, else ``None``."""
        pointer = self.root / "current"
        if pointer.exists():
            name = pointer.read_text().strip()
            if (self.versions_dir / name / "meta.json").exists():
                return name
        versions = self.versions()
        return versions[-1] if versions else None

    def promote(self, version: str) -> None:
        """Serve ``version``, a ``v<N>`` name the store holds (see :meth:`path`)."""
        self.path(version)
        _atomic_write(self.root / "current", version + "\n")

    def meta(self, version: str) -> ModelVersion:
        data = json.loads((self.path(version) / "meta.json").read_text())
        return ModelVersion(**data)

    def save(self, clf: TextClassifier, *, metrics: dict[str, Any] | None = None,
             encoder_ref: str | None = None, parent: str | None = None, promote: bool = False,
             trained_on: list[str] | None = None, encoder_dir: str | os.PathLike | None = None,
             encoder_info: dict[str, Any] | None = None) -> ModelVersion:
        """Write ``clf`` as the next version; ``encoder_ref`` is "default" or a model directory;
        ``trained_on``: the external ids of its training items (``trained_on.json``), so that a
        later candidate can be compared with it on every label it never saw. ``encoder_dir``: a
        fine-tuned encoder (a model directory) the version carries as its own, moved into it;
        ``encoder_info``: how it was trained (kept in ``meta.json``)."""
        from safetensors.numpy import save_file

        existing = self.versions()
        n = int(_VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1
        name = f"v{n}"
        enc = clf.encoder
        state = clf.state()
        meta = ModelVersion(
            version=name,
            labels=list(state.classes),
            temperature=state.temperature,
            encoder={
                "model": encoder_ref or (str(enc.model_path) if enc is not None else "default"),
                "max_length": enc.max_length if enc is not None else None,
                "pooling": "mean",
                "normalize": enc.normalize if enc is not None else True,
            },
            metrics=metrics or {},
            hyperparameters={k: list(v) if k == "classes" and v is not None else v
                             for k, v in clf.get_params().items() if k != "encoder"},
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            parent=parent,
        )
        if enc is not None and getattr(enc, "chunk", False):
            meta.encoder["chunk"] = True
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(self.versions_dir)
        # a directory of its own (a crash's leftover never blocks a later save), renamed when complete
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=self.versions_dir))
        tensors = {"coef": np.ascontiguousarray(state.coef, dtype=np.float32),
                   "intercept": np.ascontiguousarray(state.intercept, dtype=np.float32)}
        if state.lexical is not None:
            tensors |= state.lexical.save(tmp)
            tensors |= {"lex_coef": np.ascontiguousarray(state.lex_coef, dtype=np.float32),
                        "lex_intercept": np.ascontiguousarray(state.lex_intercept, dtype=np.float32)}
            meta.lexical = {"temperature": state.lex_temperature, "vocabulary": state.lexical.size,
                            "features": "tfidf"}
        save_file(tensors, str(tmp / "head.safetensors"))
        if encoder_dir is not None:
            shutil.move(str(encoder_dir), tmp / OWN_ENCODER)
            meta.encoder |= {"base": meta.encoder["model"], "weights": OWN_ENCODER,
                             "sha256": weights_digest(tmp / OWN_ENCODER), "finetune": encoder_info or {}}
        (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2))
        if trained_on is not None:
            (tmp / "trained_on.json").write_text(json.dumps(sorted(trained_on)))
        tmp.rename(self.versions_dir / name)
        if promote:
            self.promote(name)
        return meta

    def load(self, version: str | None = None, *, encoder: TextEncoder | None = None,
             **encoder_kwargs: Any) -> tuple[TextClassifier, ModelVersion]:
        """Load a version (default: current). ``encoder`` is reused when given and the version uses
        the base encoder; a version with its own (fine-tuned) encoder loads that one."""
        from safetensors.numpy import load_file

        version = version or self.current()
        if version is None:
            raise FileNotFoundError(f"no model version under {self.root}; train one with `hitl train`")
        meta = self.meta(version)
        if meta.kind != "single":
            raise ValueError(f"version {version} under {self.root} is a {meta.kind!r} model: load it with "
                             "connector.control_models.load_version")
        tensors = load_file(str(self.path(version) / "head.safetensors"))
        if meta.encoder.get("weights"):
            encoder = TextEncoder(self.path(version) / meta.encoder["weights"], max_length=meta.encoder.get("max_length"),
                                  normalize=meta.encoder.get("normalize", True),
                                  chunk=bool(meta.encoder.get("chunk", False)), **encoder_kwargs)
        elif encoder is None:
            encoder = TextEncoder(meta.encoder.get("model"), max_length=meta.encoder.get("max_length"),
                                  normalize=meta.encoder.get("normalize", True),
                                  chunk=bool(meta.encoder.get("chunk", False)), **encoder_kwargs)
        lexical = None
        if meta.lexical:
            from connector.lexical import LexicalFeatures

            lexical = LexicalFeatures.load(self.path(version), tensors["idf"])
        state = FittedState(list(meta.labels), tensors["coef"], tensors["intercept"], float(meta.temperature),
                            lexical, tensors.get("lex_coef"), tensors.get("lex_intercept"),
                            float(meta.lexical["temperature"]) if meta.lexical else 1.0)
        if state.coef.shape != (len(meta.labels), encoder.dim):
            raise ValueError(f"version {version}: head shape {state.coef.shape} does not fit "
                             f"{len(meta.labels)} labels and encoder dim {encoder.dim}")
        clf = TextClassifier.from_state(state, encoder, **meta.hyperparameters)
        return clf, meta


def encoder_identity(encoder_meta: dict[str, Any]) -> str:
    """Which embeddings an encoder produces: its weights (the base model reference, and a fine-tuned
    encoder's weight digest), how many tokens, whether normalized and chunked. Two versions with the
    same identity share an encoder and an embedding cache."""
    key = f"{encoder_meta.get('model', 'default')}|{encoder_meta.get('max_length')}|{encoder_meta.get('normalize', True)}"
    key += "|chunk" if encoder_meta.get("chunk") else ""
    return key + (f"|ft:{encoder_meta['sha256'][:16]}" if encoder_meta.get("sha256") else "")


def model_ref(encoder: Any) -> str:
    """How a version names its base encoder: ``default`` (the bundled MiniLM) or its model directory."""
    from connector.encoder import default_model_path

    path = getattr(encoder, "model_path", None)
    if path is None:
        return "default"
    try:
        return "default" if Path(path).resolve() == default_model_path().resolve() else str(path)
    except FileNotFoundError:
        return str(path)


def weights_digest(directory: str | os.PathLike) -> str:
    """SHA-256 of a model directory's safetensors weights (the fine-tuned encoder's identity)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.safetensors")):
        if path.name == "head.safetensors":
            continue
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _remove_stale_tmp(versions_dir: Path) -> None:
    """Remove the temporary directories of saves that crashed (older than ``STALE_TMP_S``)."""
    for tmp in versions_dir.glob(".v*.tmp"):
        try:
            if tmp.is_dir() and time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except FileNotFoundError:
            continue


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
