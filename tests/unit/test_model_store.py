import json

import numpy as np
import pytest

from connector.model_store import ModelStore


@pytest.mark.slow
def test_save_load_round_trip_gives_identical_predictions(tmp_path, trained):
    clf, x_test, _ = trained
    store = ModelStore(tmp_path)
    meta = store.save(clf, metrics={"accuracy": 0.8}, encoder_ref="default")
    loaded, meta2 = store.load(encoder=clf.encoder)
    assert meta2.version == meta.version == "v1" and meta2.metrics == {"accuracy": 0.8}
    np.testing.assert_allclose(loaded.predict_proba_from_embeddings(x_test), clf.predict_proba_from_embeddings(x_test),
                               atol=1e-6)
    files = sorted(p.name for p in (tmp_path / "versions" / "v1").iterdir())
    assert files == ["head.safetensors", "meta.json"]  # nothing that unpickles
    assert json.loads((tmp_path / "versions" / "v1" / "meta.json").read_text())["labels"] == ["fresh", "rotten"]


@pytest.mark.slow
def test_versions_increment_and_promotion_picks_the_served_one(tmp_path, trained):
    clf, _, _ = trained
    store = ModelStore(tmp_path)
    assert store.current() is None
    store.save(clf)
    store.save(clf)
    assert store.versions() == ["v1", "v2"] and store.current() == "v2"
    store.promote("v1")
    assert store.current() == "v1"
    with pytest.raises(FileNotFoundError):
        store.promote("v9")


def test_loading_from_an_empty_root_says_how_to_get_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="hitl train"):
        ModelStore(tmp_path).load()


@pytest.mark.slow
def test_a_head_that_does_not_fit_the_encoder_is_refused(tmp_path, trained):
    from safetensors.numpy import save_file

    clf, _, _ = trained
    store = ModelStore(tmp_path)
    store.save(clf)
    save_file({"coef": np.zeros((2, 7), dtype=np.float32), "intercept": np.zeros(2, dtype=np.float32)},
              str(tmp_path / "versions" / "v1" / "head.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        store.load(encoder=clf.encoder)
