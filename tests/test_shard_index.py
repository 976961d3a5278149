"""An index built from embedding shards without a cluster: the IVF-PQ lists on disk, merged from per-shard parts."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from ragtune.data import Document
from ragtune.errors import RagtuneError
from ragtune.index import Index


def write_shards(folder, vectors: np.ndarray, files: int = 3):
    """Shards as `embed_shards` writes them, made here without a cluster."""
    import hashlib

    import pyarrow as pa

    folder.mkdir()
    for n, part in enumerate(np.array_split(np.arange(len(vectors)), files)):
        texts = [f"passage {i}" for i in part]
        table = {
            "id": [f"p{i}" for i in part],
            "text": texts,
            "sha1": [hashlib.sha1(t.encode()).hexdigest() for t in texts],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors[part].ravel()), vectors.shape[1]),
        }
        pq.write_table(pa.table(table), folder / f"part-{n}.parquet")
    meta = {"model": "m", "model_fingerprint": "f", "max_seq_length": 8, "backend": "torch"}
    (folder / "shards.json").write_text(json.dumps({**meta, "dim": vectors.shape[1], "count": len(vectors)}))


def test_a_compressed_index_from_shards_keeps_its_lists_on_disk_and_moves_with_its_folder(tmp_path, capfd):
    from ragtune.shards import IVF_DATA, index_from_shards

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_shards(tmp_path / "shards", vectors)
    built = index_from_shards(tmp_path / "shards", tmp_path / "index", ivf_pq_from=1000, code_bytes=16)
    lists = built / IVF_DATA
    assert "resizing" not in capfd.readouterr().out  # FAISS's printf stays out of the CLI's output
    # The codes and ids (16 + 8 bytes a passage) are in the lists file, not in the index file this process loads.
    assert lists.stat().st_size >= 24 * len(vectors) > (built / "index.faiss").stat().st_size
    assert not (built / "parts").exists()
    moved = built.rename(tmp_path / "moved")  # readers find the lists beside the index, not at the path it was built
    index = Index.load(moved)
    assert capfd.readouterr().out == ""  # nor does its note on finding the lists in the moved folder
    probe = np.arange(0, 6000, 30)
    hits = index.search(vectors[probe], k=10)
    # Each passage finds itself: positions and ids stayed in step through the per-shard parts and their merge.
    assert np.mean([f"p{i}" in [h.id for h in row] for i, row in zip(probe, hits, strict=True)]) > 0.95
    assert [h.text for h in hits[0]][0] == "passage 0"
    for document in index.documents[::2]:
        document.metadata = {"even": True}
    filtered = index.search(vectors[[1, 2]], k=10, filters={"even": True})  # IVF-PQ: no vectors to hand back
    assert all(int(h.id[1:]) % 2 == 0 for row in filtered for h in row) and len(filtered[0]) == 10
    assert filtered[1][0].id == "p2"
    with pytest.raises(RagtuneError, match="built from embedding shards"):
        index.add(None, [Document("new", "text")])


def test_the_parts_are_removed_from_ragtunes_own_folder_never_from_a_users(tmp_path):
    from ragtune.shards import index_from_shards

    vectors = np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32)
    write_shards(tmp_path / "shards", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
    mine = tmp_path / "mine"  # a user's folder, with a "parts" folder of its own
    (mine / "parts").mkdir(parents=True)
    (mine / "parts" / "notes.txt").write_text("keep")
    with pytest.raises(RagtuneError):
        index_from_shards(tmp_path / "shards", mine, ivf_pq_from=1000, code_bytes=8)
    assert (mine / "parts" / "notes.txt").read_text() == "keep"
    # Into a folder ragtune made: the per-shard parts live in its temporary sibling and are gone after the swap.
    built = index_from_shards(tmp_path / "shards", tmp_path / "index", ivf_pq_from=1000, code_bytes=8)
    rebuilt = index_from_shards(tmp_path / "shards", built, ivf_pq_from=1000, code_bytes=8)
    assert sorted(p.name for p in rebuilt.iterdir() if not p.name.startswith(".")) == [
        "docs.jsonl",
        "index.faiss",
        "index.json",
        "lists.ivfdata",
        "sha1.bin",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".index")] == []


def test_an_index_read_through_a_relative_path_is_found_from_another_working_directory(
    tmp_path, monkeypatch, tiny_model
):
    """Ray workers do not share the driver's working directory: a serialized on-disk index must name its lists file
    by an absolute path, and a model folder reaches the workers as one."""
    import faiss

    from ragtune.embeddings import Encoder
    from ragtune.faiss_search import read_index
    from ragtune.shards import index_from_shards

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_shards(tmp_path / "shards", vectors)
    index_from_shards(tmp_path / "shards", tmp_path / "index", ivf_pq_from=1000, code_bytes=8)
    shutil.copytree(tiny_model, tmp_path / "model")
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path)
    blob = faiss.serialize_index(read_index("index/index.faiss"))
    encoder = Encoder("model", cache_dir=tmp_path / "cache")
    monkeypatch.chdir(tmp_path / "worker")
    index = faiss.deserialize_index(blob)
    index.nprobe = 8
    _, found = index.search(vectors[:20], 1)
    assert (found[:, 0] == np.arange(20)).mean() > 0.9
    assert (
        encoder.model_location == str((tmp_path / "model").resolve()) and Encoder("default").model_location == "default"
    )
