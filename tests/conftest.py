"""Shared fixtures: real model weights, a trained model version, real servers (session-scoped)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


@pytest.fixture(scope="session")
def trained(encoder, rt_sample):
    """A classifier fitted on 480 snippets, with the 120 others held out."""
    from connector.classifier import TextClassifier, stratified_split

    texts, labels = rt_sample
    train, test = stratified_split(np.array(labels), 0.2, seed=1)
    x = encoder.encode(texts)
    clf = TextClassifier(encoder).fit_embeddings(x[train], [labels[i] for i in train])
    return clf, x[test], [labels[i] for i in test]


@pytest.fixture(scope="session")
def model_root(tmp_path_factory, trained) -> Path:
    """A ModelStore root holding one promoted version trained on Rotten Tomatoes."""
    from connector.model_store import ModelStore

    root = tmp_path_factory.mktemp("models")
    clf, _, _ = trained
    ModelStore(root).save(clf, metrics={"accuracy": 0.0}, encoder_ref="default", promote=True)
    return root


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on loopback, started from the migrated template, stopped at the end."""
    from tests.support.label_studio import start_from_template

    server = start_from_template(tmp_path_factory.mktemp("ls"))
    yield server
    server.stop()
