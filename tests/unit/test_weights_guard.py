"""The guard in tests/conftest.py: a test not marked slow cannot load the real model weights."""

import pytest

from tests.support import weights_guard


def test_an_unmarked_test_that_loads_the_real_weights_fails_with_a_clear_error():
    from transformers import AutoModel

    from connector.encoder import TextEncoder, default_model_path

    with pytest.raises(weights_guard.RealWeightsInFastTest, match="is not marked slow.*mark it @pytest.mark.slow"):
        TextEncoder()
    with pytest.raises(weights_guard.RealWeightsInFastTest, match="test_weights_guard.py"):
        AutoModel.from_pretrained(str(default_model_path()))


def test_an_unmarked_test_may_load_the_tiny_model(tiny_encoder, tiny_model_dir):
    assert tiny_encoder.model_path == tiny_model_dir and tiny_encoder.dim == 32
    weights_guard.check(tiny_model_dir)


@pytest.mark.slow
def test_a_slow_test_may_load_from_the_real_weights_folder():
    weights_guard.check(weights_guard.real_model_root() / "model.safetensors")
