import datasets
import pytest
from conftest import shared_file

from ragtune.config import MiningConfig, SplitConfig
from ragtune.data import load_pairs
from ragtune.errors import RagtuneError
from ragtune.mining import mine
from ragtune.splits import push_to_hub, save_splits, split_queries


def _data(tmp_path, n=50):
    from conftest import write_jsonl

    rows = [{"query": f"question {i // 2}", "passage": f"passage {i}"} for i in range(n * 2)]
    return load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))


def test_split_by_query_is_seeded_and_disjoint(tmp_path):
    data = _data(tmp_path)
    ids, method = split_queries(data, SplitConfig())
    again, _ = split_queries(data, SplitConfig())
    other, _ = split_queries(data, SplitConfig(seed=7))
    assert method == "random" and ids == again and ids != other
    assert [len(ids[s]) for s in ("train", "validation", "test")] == [40, 5, 5]
    assert not set(ids["train"]) & set(ids["test"]) and not set(ids["validation"]) & set(ids["test"])
    assert sorted(ids["train"] + ids["validation"] + ids["test"]) == sorted(data.qrels)


def test_bad_fractions_rejected():
    with pytest.raises(ValueError, match="must be 1.0"):
        SplitConfig(train=0.8, validation=0.2, test=0.2)


def test_saved_dataset_dict_and_reload(tmp_path):
    data = _data(tmp_path)
    rows = mine(data, None, MiningConfig(strategy="random")).rows
    ids, _ = split_queries(data, SplitConfig())
    folder = save_splits(data, rows, ids, tmp_path / "data")
    dd = datasets.load_from_disk(str(folder))
    assert set(dd) == {"train", "validation", "test"}
    assert dd["train"].column_names[:3] == ["query", "positive", "negative"]  # the trainer reads inputs in order
    assert len(dd["test"]) == 10  # 5 queries x 2 positives: a query's rows stay together
    again = load_pairs(folder)
    assert again.corpus == data.corpus and set(again.splits["test"]) == set(ids["test"])


def test_beir_predefined_split_is_kept():
    data = load_pairs(shared_file("scifact"))
    ids, method = split_queries(data, SplitConfig())
    assert method == "predefined" and ids["test"] == data.splits["test"]
    assert len(ids["train"]) + len(ids["validation"]) == 809
    ids, method = split_queries(data, SplitConfig(use_predefined=False))
    assert method == "random"


def test_push_needs_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(RagtuneError, match="HF_TOKEN"):
        push_to_hub(tmp_path, "me/data")
