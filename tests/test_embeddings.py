import numpy as np
import pytest

from ragtune.embeddings import Encoder, load_model, model_fingerprint, resolve_model
from ragtune.errors import RagtuneError


def test_cache_serves_second_call_and_matches_model(tiny_model, tmp_path):
    texts = ["alpha beta", "gamma", "alpha beta", "delta epsilon"]
    enc = Encoder(tiny_model, tmp_path, show_progress=False)
    first = enc.encode(texts)
    assert enc.encoded_count == 3  # the repeated text is encoded once
    fresh = Encoder(tiny_model, tmp_path, show_progress=False)
    second = fresh.encode(list(reversed(texts)))
    assert fresh.encoded_count == 0
    np.testing.assert_allclose(second, first[::-1], rtol=1e-6)
    direct = load_model(tiny_model).encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(first, direct, atol=1e-5)


def test_cache_key_depends_on_weights_and_length(tiny_model, tmp_path):
    import shutil

    import torch
    from sentence_transformers import SentenceTransformer

    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    assert model_fingerprint(other) == model_fingerprint(tiny_model)
    m = SentenceTransformer(str(other), device="cpu")
    with torch.no_grad():
        next(m.parameters()).add_(1.0)
    m.save(str(other))
    assert model_fingerprint(other) != model_fingerprint(tiny_model)
    assert Encoder(tiny_model, tmp_path, 32).key != Encoder(tiny_model, tmp_path, 64).key


def test_resolve_model(tmp_path):
    assert resolve_model("default").endswith("model")
    with pytest.raises(RagtuneError, match="model folder not found"):
        resolve_model("./nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagtuneError, match="not a model folder"):
        resolve_model(tmp_path / "empty")
    assert resolve_model("someone/some-model") == "someone/some-model"  # a Hub id passes through untouched


def test_batch_by_batch_encoding_is_bit_identical_to_one_call_and_tells_progress(tiny_model, tmp_path):
    from contextlib import contextmanager

    from ragtune import progress

    words = [
        "the",
        "heart",
        "kidney",
        "lung",
        "liver",
        "bone",
        "skin",
        "brain",
        "blood",
        "eye",
        "ear",
        "dose",
        "tablet",
    ]
    texts = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 13) % 40)) for i in range(150)]
    seen = []

    @contextmanager
    def listener(description, total):
        counts = [description, total, 0]
        seen.append(counts)

        class Task:
            def advance(self, n=1):
                counts[2] += n

        yield Task()

    with progress.listen(listener):
        vectors = Encoder(tiny_model, tmp_path, batch_size=16).encode(texts, desc="encoding passages")
    one_call = load_model(tiny_model).encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert np.array_equal(vectors, one_call.astype(np.float32))
    assert seen == [["encoding passages", len(set(texts)), len(set(texts))]]
    Encoder(tiny_model, tmp_path, batch_size=16).encode(texts)  # nobody listens: nothing told, nothing raised
    assert len(seen) == 1
