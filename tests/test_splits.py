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
    assert method == "random by pair" and ids == again and ids != other
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
    assert method == "random by pair"


def test_push_needs_token(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(RagtuneError, match="HF_TOKEN"):
        push_to_hub(tmp_path, "me/data")


def _leaky(tmp_path):
    """Planted leaks: a case-changed duplicate query, a passage under two queries, a near-paraphrase pair."""
    from conftest import write_jsonl

    rows = [{"query": f"question {i}", "passage": f"passage {i}", "doc": f"d{i // 2}"} for i in range(40)]
    rows += [
        {"query": "What causes gout?", "passage": "Gout comes from uric acid.", "doc": "g1"},
        {"query": "what  CAUSES gout?", "passage": "Gout is treated with diet.", "doc": "g2"},
        {"query": "Is gout hereditary?", "passage": "Gout comes from uric acid.", "doc": "g3"},
        {"query": "How is asthma treated?", "passage": "Asthma is treated with inhalers.", "doc": "a1"},
        {"query": "How do doctors treat asthma?", "passage": "Asthma is treated with inhalers!", "doc": "a2"},
    ]
    return load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), group_column="doc")


def _fake_vectors(texts):
    import numpy as np

    def vec(t):
        if "asthma" in t.lower():  # the asthma texts are paraphrases: nearly the same direction
            v = np.zeros(64)
            v[0], v[1] = 1.0, 0.01 * (len(t) % 5)
        else:  # everything else: random directions in 63 dimensions, far from each other
            rng = np.random.default_rng(sum(map(ord, t)) * 7919 + len(t))
            v = np.concatenate([[0.0], rng.normal(size=63)])
        return v / np.linalg.norm(v)

    return np.stack([vec(t) for t in texts]).astype("float32")


def test_leakage_report_finds_each_planted_leak(tmp_path):
    from ragtune.splits import leakage_report

    data = _leaky(tmp_path)
    q = {data.queries[k]: k for k in data.queries}
    ids = {
        "train": [q["What causes gout?"], q["How is asthma treated?"]] + [q[f"question {i}"] for i in range(30)],
        "validation": [q[f"question {i}"] for i in range(30, 40)],
        "test": [q["what  CAUSES gout?"], q["Is gout hereditary?"], q["How do doctors treat asthma?"]],
    }
    report = leakage_report(data, ids, _fake_vectors, threshold=0.95)
    queries, passages = report["pairs"]["test/train/query"], report["pairs"]["test/train/passage"]
    assert queries["identical"] == 1 and queries["identical_examples"] == ["what  CAUSES gout?"]
    assert queries["near_identical"] == 1 and "asthma" in queries["near_examples"][0]["text"]
    assert passages["identical"] == 1 and passages["identical_examples"] == ["Gout comes from uric acid."]
    assert passages["near_identical"] == 1  # "inhalers!" vs "inhalers."
    assert report["pairs"]["validation/train/query"]["identical"] == 0
    assert "also in train" in report["summary"]


def test_split_by_passage_and_group_leave_no_shared_passage_or_group(tmp_path):
    from ragtune.splits import leakage_report

    data = _leaky(tmp_path)
    for seed in range(5):
        ids, method = split_queries(data, SplitConfig(split_by="passage", seed=seed))
        assert method == "random by passage"
        report = leakage_report(data, ids)
        assert all(v["identical"] == 0 for k, v in report["pairs"].items() if k.endswith("passage"))
        ids, _ = split_queries(data, SplitConfig(split_by="group", seed=seed))
        where = {qid: name for name, qids in ids.items() for qid in qids}
        by_group = {}
        for qid, groups in data.groups.items():
            for g in groups:
                by_group.setdefault(g, set()).add(where[qid])
        assert all(len(splits) == 1 for splits in by_group.values())
    assert sorted(sum(ids.values(), [])) == sorted(data.qrels)


def test_group_column_missing_values_are_counted(tmp_path):
    from conftest import write_jsonl

    rows = [{"query": "a", "passage": "x", "doc": None}, {"query": "b", "passage": "y", "doc": "d"}]
    data = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), group_column="doc")
    assert data.stats.rows_without_group == 1 and list(data.groups.values()) == [["d"]]
    with pytest.raises(RagtuneError, match="no column 'section'"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), group_column="section")


@pytest.mark.parametrize("strategy", ["hard", "least-similar", "random"])
def test_training_rows_never_get_a_held_out_passage_as_negative(tiny_model, tmp_path, strategy):
    import datasets
    from helpers import split_folder

    ds = datasets.load_from_disk(str(split_folder(tmp_path, tiny_model, n_queries=60, strategy=strategy)))
    held_out = set(ds["validation"]["positive_id"]) | set(ds["test"]["positive_id"])
    columns = [c for c in ds["train"].column_names if c.startswith("negative") and c.endswith("_id")]
    train_negatives = {n for c in columns for n in ds["train"][c]}
    assert columns and held_out and len(train_negatives) >= 3
    assert not train_negatives & held_out
