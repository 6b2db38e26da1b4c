"""TextEncoder: the mechanics on a tiny random BERT with the real tokenizer; the real weights only where they matter."""

import numpy as np
import pytest
import torch

from connector.encoder import TextEncoder, default_model_path, resolve_model_path


@pytest.mark.slow
def test_embeddings_match_sentence_transformers(encoder, rt_sample):
    import sentence_transformers as st  # the dev extra installs it: a missing reference fails

    texts = rt_sample[0][:64]
    ref = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, batch_size=16)
    np.testing.assert_allclose(encoder.encode(texts), ref, atol=1e-5)


def test_output_order_follows_input_order_despite_length_sorting(tiny_encoder):
    texts = ["a much longer sentence about a film that goes on and on", "short", "medium length one"]
    fwd = tiny_encoder.encode(texts)
    rev = tiny_encoder.encode(texts[::-1])
    np.testing.assert_allclose(fwd, rev[::-1], atol=1e-6)
    assert not np.allclose(fwd[0], fwd[1])
    np.testing.assert_allclose(np.linalg.norm(fwd, axis=1), 1, atol=1e-6)


def test_batches_respect_token_budget_and_cover_every_text(tiny_encoder):
    ids, _ = tiny_encoder.tokenize([("word " * n).strip() for n in range(1, 120)])
    seen = []
    for b in tiny_encoder.batches(ids):
        rows, width = b.input_ids.shape
        assert rows == 1 or rows * width <= tiny_encoder.token_budget
        assert rows <= tiny_encoder.max_batch_size
        seen.extend(b.index.tolist())
    assert sorted(seen) == list(range(len(ids)))


def test_long_texts_are_truncated_to_the_model_limit_and_flagged(tiny_encoder):
    huge = "great film " * 100_000  # about 1 MB
    ids, truncated = tiny_encoder.tokenize([huge, "short one"])
    assert truncated.tolist() == [True, False]
    assert len(ids[0]) == tiny_encoder.max_length == 256  # sentence_bert_config.json's limit
    assert ids[0][-1] == tiny_encoder.tokenizer.sep_token_id
    emb, flags = tiny_encoder.encode([huge], return_truncated=True)
    assert flags.tolist() == [True] and np.isfinite(emb).all()


def test_empty_input_gives_empty_matrix(tiny_encoder):
    assert tiny_encoder.encode([]).shape == (0, tiny_encoder.dim)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        resolve_model_path(tmp_path)


def test_packed_batches_give_the_same_embeddings_as_padded_ones(tiny_encoder, monkeypatch):
    texts = ["tiny", "a somewhat longer sentence about nothing in particular at all, really, truly",
             "mid sized text here", "ok"]
    ids, _ = tiny_encoder.tokenize(texts)
    (packed,) = list(tiny_encoder.batches(ids))
    assert packed.lengths is not None and packed.input_ids.shape[0] == 1  # mixed lengths get packed
    with torch.inference_mode():
        got = tiny_encoder._forward(packed).numpy()
    monkeypatch.setattr(tiny_encoder, "pack_tokens", 0)
    (padded,) = list(tiny_encoder.batches(ids))
    assert padded.lengths is None
    with torch.inference_mode():
        want = tiny_encoder._forward(padded).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cpu_encoder_runs_a_traced_forward_equal_to_eager(tiny_encoder, monkeypatch):
    assert tiny_encoder.jit  # the trace succeeded and passed its own check
    ids, _ = tiny_encoder.tokenize(["one text", "and another, longer, text to compare"])
    monkeypatch.setattr(tiny_encoder, "pack_tokens", 0)
    (b,) = list(tiny_encoder.batches(ids))
    with torch.inference_mode():
        traced = tiny_encoder._padded_fn(b.input_ids, b.attention_mask)
        eager = tiny_encoder._eager_padded(b.input_ids, b.attention_mask)
    assert isinstance(tiny_encoder._padded_fn, torch.jit.ScriptModule)
    np.testing.assert_allclose(traced.numpy(), eager.numpy(), atol=1e-5)


def test_a_failed_trace_falls_back_to_eager(tiny_model_dir, monkeypatch):
    import connector.tracing

    monkeypatch.setattr(connector.tracing.torch.jit, "trace", lambda *a, **k: 1 / 0)
    enc = TextEncoder(tiny_model_dir)
    assert not enc.jit and enc._padded_fn is enc._eager_padded and enc._packed_fn is enc._eager_packed
    assert enc.encode(["still works"]).shape == (1, enc.dim)


def test_chunking_averages_windows_of_long_texts_and_leaves_short_ones_alone(tiny_encoder, tiny_model_dir):
    chunked = TextEncoder(tiny_model_dir, chunk=True, max_chunks=3)
    short = "A fine, moving film."
    long = " ".join(f"sentence {i} about the election and the vote." for i in range(200))  # > 3 windows
    np.testing.assert_allclose(chunked.encode([short]), tiny_encoder.encode([short]), atol=1e-5)
    spans, owner, truncated = chunked._windows([short, long])
    assert owner.tolist() == [0, 1, 1, 1] and truncated.tolist() == [False, True]
    assert spans[1].startswith("sentence 0") and spans[2] != spans[1]
    parts = tiny_encoder.encode(spans[1:])
    mean = parts.mean(0) / np.linalg.norm(parts.mean(0))
    got, flags = chunked.encode([long], return_truncated=True)
    np.testing.assert_allclose(got[0], mean, atol=1e-5)
    assert flags.tolist() == [True] and not np.allclose(got[0], tiny_encoder.encode([long])[0], atol=1e-6)
