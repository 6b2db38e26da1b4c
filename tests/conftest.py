"""Shared fixtures: the real model (for ``slow`` tests), a tiny random one (for the rest), Rotten Tomatoes.

A test not marked ``slow`` may not load the real weights: ``tests/support/weights_guard.py``
makes that raise, in the test or in any fixture built for it. The real servers (Label Studio,
argilla-server, PostgreSQL, the backend subprocess) are in ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.support import weights_guard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config: pytest.Config) -> None:
    weights_guard.install()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures are built: guard it unless it is marked slow."""
    weights_guard.set_running(None if item.get_closest_marker("slow") else item.nodeid)


# -- the real all-MiniLM-L6-v2 weights: slow tests only ----------------------------------------


@pytest.fixture(scope="session")
def encoder():
    from connector.encoder import TextEncoder

    return TextEncoder()


@pytest.fixture(scope="session")
def rt_sample():
    """600 Rotten Tomatoes snippets, stratified, fixed seed."""
    from connector.classifier import stratified_split
    from connector.datasets import rotten_tomatoes

    ds = rotten_tomatoes()
    labels = np.array(ds.labels)
    _, keep = stratified_split(labels, 600 / len(labels), seed=0)
    return [ds.texts[i] for i in keep], labels[keep].tolist()


def _fit(encoder, rt_sample):
    from connector.classifier import TextClassifier, stratified_split

    texts, labels = rt_sample
    train, test = stratified_split(np.array(labels), 0.2, seed=1)
    x = encoder.encode(texts)
    clf = TextClassifier(encoder).fit_embeddings(x[train], [labels[i] for i in train])
    return clf, x[test], [labels[i] for i in test]


def _model_root(tmp_path_factory, trained, encoder_ref: str) -> Path:
    from connector.model_store import ModelStore

    root = tmp_path_factory.mktemp("models")
    clf, _, _ = trained
    ModelStore(root).save(clf, metrics={"accuracy": 0.0}, encoder_ref=encoder_ref, promote=True)
    return root


@pytest.fixture(scope="session")
def trained(encoder, rt_sample):
    """A classifier fitted on 480 snippets, with the 120 others held out."""
    return _fit(encoder, rt_sample)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory, trained) -> Path:
    """A ModelStore root holding one promoted version trained on Rotten Tomatoes."""
    return _model_root(tmp_path_factory, trained, "default")


# -- a tiny random BERT with the real tokenizer: no weights, fast --------------------------------


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A Hugging Face model directory: 2-layer, 32-wide random BERT with MiniLM's tokenizer."""
    from tests.support.tiny_model import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_dir):
    from connector.encoder import TextEncoder

    return TextEncoder(tiny_model_dir)


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """A 32-wide model gains nothing from intra-op threads, and on a busy CPU their barriers cost 10x."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny_trained(tiny_encoder, rt_sample):
    """Like ``trained``, on the tiny encoder's (meaningless) embeddings."""
    with _one_torch_thread():
        return _fit(tiny_encoder, rt_sample)


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory, tiny_trained, tiny_model_dir) -> Path:
    """A ModelStore root holding one promoted version on the tiny encoder."""
    return _model_root(tmp_path_factory, tiny_trained, str(tiny_model_dir))
