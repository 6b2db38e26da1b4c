import numpy as np
import pytest

from connector.encoder import default_model_path


def test_embeddings_match_sentence_transformers(encoder, rt_sample):
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers is in the dev extra")
    texts = rt_sample[0][:64]
    ref = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(texts, batch_size=16)
    np.testing.assert_allclose(encoder.encode(texts), ref, atol=1e-5)


def test_output_order_follows_input_order_despite_length_sorting(encoder):
    texts = ["a much longer sentence about a film that goes on and on", "short", "medium length one"]
    fwd = encoder.encode(texts)
    rev = encoder.encode(texts[::-1])
    np.testing.assert_allclose(fwd, rev[::-1], atol=1e-6)
    assert not np.allclose(fwd[0], fwd[1])


def test_batches_respect_token_budget_and_cover_every_text(encoder):
    ids, _ = encoder.tokenize([("word " * n).strip() for n in range(1, 120)])
    seen = []
    for b in encoder.batches(ids):
        rows, width = b.input_ids.shape
        assert rows == 1 or rows * width <= encoder.token_budget
        assert rows <= encoder.max_batch_size
        seen.extend(b.index.tolist())
    assert sorted(seen) == list(range(len(ids)))


def test_long_texts_are_truncated_to_the_model_limit_and_flagged(encoder):
    huge = "great film " * 100_000  # about 1 MB
    ids, truncated = encoder.tokenize([huge, "short one"])
    assert truncated.tolist() == [True, False]
    assert len(ids[0]) == encoder.max_length
    assert ids[0][-1] == encoder.tokenizer.sep_token_id
    emb, flags = encoder.encode([huge], return_truncated=True)
    assert flags.tolist() == [True] and np.isfinite(emb).all()


def test_empty_input_gives_empty_matrix(encoder):
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_a_directory_without_config_is_refused(tmp_path):
    from connector.encoder import resolve_model_path

    with pytest.raises(FileNotFoundError, match="not a Hugging Face model directory"):
        resolve_model_path(tmp_path)


def test_packed_batches_give_the_same_embeddings_as_padded_ones(encoder):
    texts = ["tiny", "a somewhat longer sentence about nothing in particular at all, really, truly",
             "mid sized text here", "ok"]
    ids, _ = encoder.tokenize(texts)
    (packed,) = list(encoder.batches(ids))
    assert packed.lengths is not None and packed.input_ids.shape[0] == 1  # mixed lengths get packed
    import torch

    with torch.inference_mode():
        got = encoder._forward(packed).numpy()
    saved = encoder.pack_tokens
    encoder.pack_tokens = 0
    try:
        (padded,) = list(encoder.batches(ids))
        assert padded.lengths is None
        with torch.inference_mode():
            want = encoder._forward(padded).numpy()
    finally:
        encoder.pack_tokens = saved
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_cpu_encoder_runs_a_traced_forward_equal_to_eager(encoder):
    import torch

    assert encoder.jit  # the trace succeeded and passed its own check
    ids, _ = encoder.tokenize(["one text", "and another, longer, text to compare"])
    saved = encoder.pack_tokens
    encoder.pack_tokens = 0
    try:
        (b,) = list(encoder.batches(ids))
    finally:
        encoder.pack_tokens = saved
    with torch.inference_mode():
        traced = encoder._padded_fn(b.input_ids, b.attention_mask)
        eager = encoder._eager_padded(b.input_ids, b.attention_mask)
    assert traced is not eager
    np.testing.assert_allclose(traced.numpy(), eager.numpy(), atol=1e-5)


def test_chunking_averages_windows_of_long_texts_and_leaves_short_ones_alone(encoder):
    from connector.encoder import TextEncoder

    chunked = TextEncoder(chunk=True, max_chunks=3)
    short = "A fine, moving film."
    long = " ".join(f"sentence {i} about the election and the vote." for i in range(200))  # > 3 windows
    np.testing.assert_allclose(chunked.encode([short]), encoder.encode([short]), atol=1e-5)
    spans, owner, truncated = chunked._windows([short, long])
    assert owner.tolist() == [0, 1, 1, 1] and truncated.tolist() == [False, True]
    assert spans[1].startswith("sentence 0") and spans[2] != spans[1]
    parts = encoder.encode(spans[1:])
    mean = parts.mean(0) / np.linalg.norm(parts.mean(0))
    got, flags = chunked.encode([long], return_truncated=True)
    np.testing.assert_allclose(got[0], mean, atol=1e-5)
    assert flags.tolist() == [True] and np.abs(got[0] - encoder.encode([long])[0]).max() > 1e-3
