"""Corpus shards on a local Ray cluster (2 CPUs, the tiny BERT): encoded, indexed and mined without the corpus in
this process, matching `ragtune index` and `ragtune mine --strategy hard` in one process."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_jsonl
from helpers import toy_rows

from ragtune.config import DataConfig, MiningConfig
from ragtune.data import Document, load_prepared, load_ragtune_data
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.index import Index, search_index
from ragtune.pipeline import mine_stage, prepare_stage

pytest.importorskip("ray")

N = 3000


@pytest.mark.slow  # starts a Ray cluster (~15 s)
def test_shards_encode_index_mine_and_evaluate_as_one_process(tiny_model, tmp_path, monkeypatch):
    from ragtune.ray_engine import ray_engine
    from ragtune.shard_eval import evaluate_from_shards
    from ragtune.shard_mining import least_similar_from_shards, mined_counts, pair_rows
    from ragtune.shards import embed_shards, index_from_shards, mine_from_shards

    rows = toy_rows(N)
    for i, r in enumerate(rows):
        r["passage"] = r["passage"] + " It also matters." * (i % 17)
    # Every tenth query has a second answer (another row, maybe mined by another actor): neither may be its negative.
    rows += [{**r, "passage": r["passage"].replace("has job", "has a second job")} for r in rows[::10]]
    prepare_stage(DataConfig(path=str(write_jsonl(tmp_path / "pairs.jsonl", rows))), tmp_path / "prepared")
    mine_stage(
        tmp_path / "prepared",
        str(tiny_model),
        MiningConfig(strategy="hard", negatives_from="all"),
        tmp_path / "mined",
        tmp_path / "cache",
    )
    data = load_prepared(tmp_path / "prepared")
    ids = list(data.corpus)
    half = len(ids) // 2
    corpus = [
        write_jsonl(tmp_path / f"corpus-{n}.jsonl", [{"id": i, "text": data.corpus[i]} for i in part])
        for n, part in enumerate((ids[:half], ids[half:]))
    ]
    mined = [json.loads(line) for line in (tmp_path / "mined" / "rows.jsonl").read_text().splitlines()]
    pairs = write_jsonl(
        tmp_path / "queries.jsonl",
        [{"query": data.queries[r["query_id"]], "positive_id": r["positive_id"]} for r in mined],
    )
    beir = tmp_path / "beir"  # the queries and judgements evaluation reads (no corpus.jsonl: the index has it)
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "queries.jsonl", [{"_id": q, "text": t} for q, t in data.queries.items()])
    (beir / "qrels" / "all.tsv").write_text("".join(f"{q}\t{p}\t1\n" for q, r in data.qrels.items() for p in r))
    encoder = Encoder(str(tiny_model), tmp_path / "cache-one", show_progress=False)
    monkeypatch.setattr("ragtune.faiss_search._REMOTE_MIN", 512)  # the evaluation's search as Ray tasks
    with ray_engine(actors=2) as engine:
        shards = embed_shards(encoder, corpus, tmp_path / "shards", rows_per_file=1000)
        exact = index_from_shards(shards.folder, tmp_path / "index")
        compressed = index_from_shards(shards.folder, tmp_path / "index-pq", ivf_pq_from=1000, code_bytes=32)
        mine_from_shards(exact, [pairs], tmp_path / "negatives")
        on_ray = evaluate_from_shards({"exact": exact, "compressed": compressed}, beir, "all")
        assert engine.search_tasks >= 4 and engine.batches > 0  # queries encoded and searched on the cluster
        with pytest.raises(RagtuneError, match="no such file"):
            embed_shards(encoder, [tmp_path / "missing.jsonl"], tmp_path / "shards-2")
        no_text = write_jsonl(tmp_path / "no-text.jsonl", [{"id": "a", "body": "x"}])
        with pytest.raises(RagtuneError, match=r"no-text.jsonl: no column 'text' \(columns: body, id\)"):
            embed_shards(encoder, [no_text], tmp_path / "shards-2")
        # A later row without an id: found by the worker that reads it, reported as one line naming the file.
        holed = write_jsonl(tmp_path / "holed.jsonl", [{"id": "a", "text": "x"}, {"text": "y"}])
        with pytest.raises(RagtuneError, match="holed.jsonl: a row has no 'id'"):
            embed_shards(encoder, [holed], tmp_path / "shards-2")
        stranger = write_jsonl(tmp_path / "stranger.jsonl", [{"query": "q", "positive_id": "nowhere"}])
        with pytest.raises(RagtuneError, match="stranger.jsonl: positive id 'nowhere' is not in the index"):
            mine_from_shards(exact, [stranger], tmp_path / "negatives-2")

    from typer.testing import CliRunner

    from ragtune.cli import app

    folder = tmp_path / "corpus-folder"  # the CLI takes a folder of corpus files too
    folder.mkdir()
    for f in corpus:
        (folder / f.name).write_bytes(f.read_bytes())
    with ray_engine(actors=2):  # one cluster for every command below (each would start its own)
        command = ["index", str(tiny_model), str(folder), "--out", str(tmp_path / "index-cli")]
        refused = CliRunner().invoke(app, [*command, "--shards", str(tmp_path / "shards-cli"), "--add"])
        assert isinstance(refused.exception, RagtuneError)  # `ragtune` prints it as one line, exit 2
        assert "--shards builds a new dense index" in str(refused.exception)
        done = CliRunner().invoke(app, [*command, "--shards", str(tmp_path / "shards-cli")])
        assert done.exit_code == 0 and f"indexed {len(ids)} documents" in done.output, done.output
        again = CliRunner().invoke(app, [*command, "--shards", str(tmp_path / "shards-cli")])  # nothing new to encode
        assert again.exit_code == 0 and f"{len(ids)} vectors reused" in again.output, again.output
        mined_cli = CliRunner().invoke(app, ["mine-shards", str(exact), str(pairs), "--out", str(tmp_path / "neg-cli")])
        assert mined_cli.exit_code == 0, mined_cli.output
        # Held-out pairs (the last 300 rows, say a test split): their positives are nobody's negatives on the cluster.
        test = write_jsonl(
            tmp_path / "test.jsonl", [json.loads(line) for line in pairs.read_text().splitlines()[-300:]]
        )
        held_out = {json.loads(line)["positive_id"] for line in test.read_text().splitlines()}
        guarded = CliRunner().invoke(
            app,
            ["mine-shards", str(exact), str(pairs), "--out", str(tmp_path / "neg-held"), "--held-out", str(test)]
            + ["--training-data", str(tmp_path / "train-data")],
        )
        assert guarded.exit_code == 0, guarded.output
        trainable = load_ragtune_data(tmp_path / "train-data")  # what `ragtune train --data` reads
        assert sum(len(r) for r in trainable.qrels.values()) == len(mined) and set(trainable.splits) == {"train"}
        kept = [r for f in sorted((tmp_path / "neg-held").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        assert len(kept) == len(mined) and not {n for r in kept for n in r["negative_ids"]} & held_out
        unguarded = [r for f in sorted((tmp_path / "neg-cli").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        assert {n for r in unguarded for n in r["negative_ids"]} & held_out  # without it, some were
        # A margin on the compressed index: positives scored from their codes by the actors, screened as one process.
        screened = ["mine-shards", str(compressed), str(pairs), "--out", str(tmp_path / "neg-margin")]
        screened += ["--margin", "0.0005", "--num-negatives", "2", "--range-max", "6"]
        assert CliRunner().invoke(app, screened).exit_code == 0
        counts = mined_counts(tmp_path / "neg-margin")
        assert counts["rows"] == len(mined) and counts["within_margin"] > 0, counts
        rows_pq = [r for f in sorted((tmp_path / "neg-margin").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
        assert all(len(set(r["negative_ids"])) == 2 for r in rows_pq)
        assert sum(r["random_negatives"] > 0 for r in rows_pq) == counts["rows_with_random_fallback"]
        # The least-similar walk: its first search as Ray tasks (from 512 rows here), the picks as in this process.
        walk = ["mine-shards", str(exact), str(pairs), "--out", str(tmp_path / "walk"), "--strategy", "least-similar"]
        walked = CliRunner().invoke(app, walk)
        assert walked.exit_code == 0, walked.output
        expected, _ = least_similar_from_shards(exact, pair_rows([str(pairs)], "query", "positive_id"), 1)
        assert [
            r["negative_ids"] for r in pq.read_table(tmp_path / "walk" / "part-00000.parquet").to_pylist()
        ] == expected

    assert shards.meta["count"] == len(ids) and len(shards.files) >= 2
    table = [r for f in shards.files for r in pq.read_table(f).to_pylist()]
    by_id = {r["id"]: np.array(r["vector"], dtype=np.float32) for r in table}
    assert sorted(by_id) == sorted(ids)
    alone = encoder.encode([data.corpus[i] for i in ids])
    # Batches hold other neighbours than one process's (padding differs): float rounding only.
    assert np.abs(np.stack([by_id[i] for i in ids]) - alone).max() < 1e-5

    local = tmp_path / "index-one"
    Index.build(encoder, [Document(i, data.corpus[i]) for i in ids], local)
    queries = [data.queries[r["query_id"]] for r in mined[:50]]
    found = [[h.id for h in q] for q in search_index(exact, queries, 10, show_progress=False)]
    assert found == [[h.id for h in q] for q in search_index(local, queries, 10, show_progress=False)]
    from_cli = search_index(tmp_path / "index-cli", queries, 10, show_progress=False)
    assert found == [[h.id for h in q] for q in from_cli]
    # Evaluation on the cluster is evaluation in one process, to the bit; the index from shards scores as the
    # corpus indexed in one process except where candidates tie to float rounding (the shards' batches differ).
    here = evaluate_from_shards({"exact": exact, "one": local}, beir, "all")
    assert on_ray.queries == len(data.qrels) and on_ray.corpus == len(ids)
    assert on_ray.per_query["exact"] == here.per_query["exact"] and on_ray.top["exact"] == here.top["exact"]
    same = [q for q in here.top["one"] if here.top["one"][q] == here.top["exact"][q]]
    assert len(same) > 0.9 * len(data.qrels)
    assert abs(here.metrics["one"]["ndcg@10"] - here.metrics["exact"]["ndcg@10"]) < 0.01
    print("evaluated:", {s: round(m["ndcg@10"], 4) for s, m in on_ray.metrics.items()}, len(same), "same top 10")
    built = json.loads((compressed / "index.json").read_text())
    assert built["faiss"].startswith("ivf")
    approx = search_index(compressed, queries, 10, show_progress=False)
    overlap = np.mean([len(set(a) & {h.id for h in b}) / 10 for a, b in zip(found, approx, strict=True)])
    print("compressed index: recall@10 of queries", overlap, "of sampled passages", built["recall@10_vs_exact"])
    # The tiny random model's vectors crowd together (top-10 cosines ~0.999), which compression handles worst: one
    # byte per dimension kept ~0.87 of the exact top 10 in a trial, one per 4 dimensions ~0.12. An index whose
    # documents and vectors were out of step would score ~0.003 (10 of 3,000 by chance).
    assert overlap > 0.6 and built["recall@10_vs_exact"] > 0.6

    negatives = [r for f in sorted((tmp_path / "negatives").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(negatives) == len(mined)
    positives: dict[str, set[str]] = {}
    for r in mined:
        positives.setdefault(data.queries[r["query_id"]], set()).add(r["positive_id"])
    assert sum(len(p) == 2 for p in positives.values()) == N // 10
    assert not [r for r in negatives if set(r["negative_ids"]) & positives[r["query"]]]
    ours = {(r["query"], r["positive_id"]): r["negative_ids"] for r in negatives}
    from_cli = [r for f in sorted((tmp_path / "neg-cli").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert {(r["query"], r["positive_id"]): r["negative_ids"] for r in from_cli} == ours  # the command is the API
    theirs = {(data.queries[r["query_id"]], r["positive_id"]): r["negative_ids"] for r in mined}
    assert ours.keys() == theirs.keys()
    # The same negatives, except where two candidates tie to float rounding: the cluster encodes queries in other
    # batches than one process (the tiny model's top cosines crowd within 1e-6 of each other, so such ties occur).
    differ = [k for k in theirs if ours[k] != theirs[k]]
    assert len(differ) < len(theirs) // 10
    at = {i: n for n, i in enumerate(ids)}
    query_vectors = encoder.encode([q for q, _ in differ])
    for v, key in zip(query_vectors, differ, strict=True):
        (mine,), (reference,) = ours[key], theirs[key]
        assert abs(float(v @ alone[at[mine]]) - float(v @ alone[at[reference]])) < 1e-5, key


def _shard_rows(folder) -> dict[str, dict]:
    return {r["id"]: r for f in sorted(folder.glob("*.parquet")) for r in pq.read_table(f).to_pylist()}


@pytest.mark.slow  # starts a Ray cluster (~15 s)
def test_a_rerun_encodes_only_new_texts_and_takes_the_rest_from_earlier_shards(tiny_model, tmp_path):
    import shutil

    import pyarrow as pa

    from ragtune.ray_engine import ray_engine
    from ragtune.shards import SHARDS_META, embed_shards

    words = ["heart", "kidney", "dose", "blood", "liver", "trial", "risk", "study"]
    texts = [f"passage {i} on the {words[i % 8]} and the {words[i % 5]}" for i in range(300)]
    texts[7] = texts[3]  # one text under two ids: earlier shards hold its sha1 twice
    first = write_jsonl(tmp_path / "a.jsonl", [{"id": f"p{i}", "text": t} for i, t in enumerate(texts)])
    edited = {i: texts[i] + " (revised)" for i in range(0, 300, 30)}
    second = [
        write_jsonl(tmp_path / "a2.jsonl", [{"id": f"p{i}", "text": edited.get(i, t)} for i, t in enumerate(texts)]),
        write_jsonl(tmp_path / "b.jsonl", [{"id": f"n{i}", "text": f"a new passage {i} on sleep"} for i in range(40)]),
    ]
    encoder = Encoder(str(tiny_model), tmp_path / "cache", show_progress=False)
    with ray_engine(actors=2):
        earlier = embed_shards(encoder, [first], tmp_path / "shards", rows_per_file=100)
        # Planted: the earlier vectors negated, under the same model's name. What comes back negated was reused.
        planted = tmp_path / "planted"
        planted.mkdir()
        for f in earlier.files:
            table = pq.read_table(f)
            flipped = pa.FixedSizeListArray.from_arrays(
                pa.compute.negate(table.column("vector").combine_chunks().flatten()), 32
            )
            pq.write_table(
                table.set_column(table.schema.get_field_index("vector"), "vector", flipped), planted / f.name
            )
        shutil.copy(earlier.folder / SHARDS_META, planted / SHARDS_META)
        rerun = embed_shards(encoder, second, tmp_path / "shards-2", reuse=planted)
        again = embed_shards(encoder, [first], tmp_path / "shards")  # into its own folder: every vector reused
        other = json.loads((planted / SHARDS_META).read_text()) | {"model_fingerprint": "another"}
        (planted / SHARDS_META).write_text(json.dumps(other))
        with pytest.raises(RagtuneError, match="not this model's to reuse"):
            embed_shards(encoder, second, tmp_path / "shards-3", reuse=planted)

    before, after = _shard_rows(earlier.folder), _shard_rows(rerun.folder)
    assert sorted(after) == sorted([f"p{i}" for i in range(300)] + [f"n{i}" for i in range(40)])  # no row twice
    assert rerun.meta["count"] == 340 and rerun.meta["reused"] == 300 - len(edited)
    fresh = [i for i in after if i.startswith("n") or int(i[1:]) in edited]
    alone = dict(zip(fresh, encoder.encode([after[i]["text"] for i in fresh]), strict=True))
    for i, row in after.items():
        if i in alone:
            assert not row["reused"] and np.abs(np.array(row["vector"]) - alone[i]).max() < 1e-5, i
        else:
            assert row["reused"] and np.array_equal(np.array(row["vector"]), -np.array(before[i]["vector"])), i
    assert again.meta["reused"] == again.meta["count"] == 300
    assert all(np.array_equal(r["vector"], before[i]["vector"]) for i, r in _shard_rows(again.folder).items())


@pytest.mark.slow  # a local Ray cluster and a short training
def test_a_run_from_shards_splits_mines_trains_and_judges_over_the_whole_corpus(tiny_model, tmp_path):
    """`ragtune run` with `shards:`: the corpus only ever read by the cluster, the numbers those of the corpus in
    memory, held-out answers never negatives, the users' questions choosing the checkpoint, a rerun with nothing to
    do."""
    import yaml
    from typer.testing import CliRunner

    from ragtune.cli import app
    from ragtune.pipeline import evaluate_stage
    from ragtune.ray_engine import ray_engine

    rows = toy_rows(1000)
    corpus = [{"id": f"d{i}", "text": r["passage"]} for i, r in enumerate(rows)]
    (tmp_path / "corpus").mkdir()
    write_jsonl(tmp_path / "corpus" / "part-0.jsonl", corpus[:600])
    write_jsonl(tmp_path / "corpus" / "part-1.jsonl", corpus[600:])
    pairs = [{"question": r["query"], "doc": f"d{i}"} for i, r in enumerate(rows)]
    pairs += [{"question": rows[i]["query"], "doc": f"d{i + 1}"} for i in range(0, 1000, 50)]  # 20 with 2 answers
    write_jsonl(tmp_path / "pairs.jsonl", pairs)
    users = tmp_path / "users"  # another query set judged against the same corpus, as users' questions would be
    (users / "qrels").mkdir(parents=True)
    write_jsonl(
        users / "queries.jsonl", [{"_id": f"u{i}", "text": f"{i} {rows[i]['query']}"} for i in range(0, 1000, 7)]
    )
    (users / "qrels" / "test.tsv").write_text("".join(f"u{i}\td{i}\t1\n" for i in range(0, 1000, 7)))
    config = {
        "base_model": str(tiny_model),
        "output_dir": str(tmp_path / "run"),
        "data": {"path": str(tmp_path / "pairs.jsonl"), "query_column": "question"},
        "shards": {"corpus": str(tmp_path / "corpus"), "positive_column": "doc", "validation_depth": 10},
        "mining": {"strategy": "hard"},
        "train": {"batch_size": 16},
        "eval_sets": [{"name": "users", "path": str(users), "split": "test"}],
        "checkpoint_on": "users",
        "allow_regression": True,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))

    with ray_engine(actors=2):  # `--ray` would start its own; one cluster for both runs here
        done = CliRunner().invoke(app, ["run", str(tmp_path / "run.yaml"), "--ray"])
        assert done.exit_code == 0, done.output
        kept = [*(tmp_path / "run" / "model").rglob("*"), *(tmp_path / "run" / "base" / "shards").glob("*")]
        model_files = {f: f.stat().st_mtime_ns for f in kept if f.is_file()}
        again = CliRunner().invoke(app, ["run", str(tmp_path / "run.yaml"), "--ray"])
        assert again.exit_code == 0, again.output
    assert {f: f.stat().st_mtime_ns for f in model_files} == model_files  # nothing encoded or trained again

    out = tmp_path / "run"
    result = json.loads((out / "results.json").read_text())
    split = result["split"]["splits"]
    assert result["corpus"] == 1000 and split["test"]["queries"] == result["test_queries"] == 100
    qrels = {name: _qrels(out / "split" / f"{name}.jsonl") for name in ("train", "validation", "test")}
    assert not set(qrels["train"]) & set(qrels["test"]) and not set(qrels["validation"]) & set(qrels["test"])
    assert sum(len(q) for q in qrels.values()) == 1000
    assert sum(len(p) for q in qrels.values() for p in q.values()) == 1020  # every row, second answers too
    held = {p for name in ("validation", "test") for ps in qrels[name].values() for p in ps}
    mined = [r for f in sorted((out / "mined" / "rows").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(mined) == split["train"]["rows"] and all(r["negative_ids"] for r in mined)
    assert not held & {n for r in mined for n in r["negative_ids"]}
    assert all(not set(r["negative_ids"]) & set(qrels["train"][r["query"]]) for r in mined)
    # `checkpoint_on: users`: the users' questions (a folder with no corpus: their passages are in the shards) picked
    # the checkpoint, each searched among its answers and the base model's top 10; the validation split was not scored.
    info = json.loads((out / "model" / "ragtune_train.json").read_text())
    assert info["checkpoint_chosen_on"] == result["checkpoint_chosen_on"] == "users"
    last = max((out / "checkpoints").glob("checkpoint-*"), key=lambda f: int(f.name.rsplit("-", 1)[1]))
    log = json.loads((last / "trainer_state.json").read_text())["log_history"]
    scored = [e["eval_users_cosine_ndcg@10"] for e in log if "eval_users_cosine_ndcg@10" in e]
    assert scored and info["best_users_ndcg@10"] == max(scored) > 0
    assert not any("eval_validation_cosine_ndcg@10" in e for e in log) and "best_validation_ndcg@10" not in info
    assert result["mining"]["validation_during_training"] == "none: users picked the checkpoint"

    # The corpus in memory, one process: the same numbers, to the float rounding of the shards' vectors.
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    write_jsonl(beir / "corpus.jsonl", [{"_id": d["id"], "text": d["text"]} for d in corpus])
    (beir / "queries.jsonl").write_text((out / "split" / "queries.jsonl").read_text())
    (beir / "qrels" / "test.tsv").write_text((out / "split" / "qrels" / "test.tsv").read_text())
    alone = evaluate_stage({"base": str(tiny_model), "tuned": str(out / "model")}, beir, "test", bm25=False)
    for system in ("base", "tuned"):
        assert result["metrics"][system]["ndcg@10"] == pytest.approx(alone.metrics[system]["ndcg@10"], abs=1e-3)
    print("base", result["metrics"]["base"]["ndcg@10"], "tuned", result["metrics"]["tuned"]["ndcg@10"])
    # 800 training pairs teach the random model some of the task: 0.346 -> 0.438 in a trial of the command sequence.
    assert result["metrics"]["tuned"]["ndcg@10"] > result["metrics"]["base"]["ndcg@10"] + 0.05
    users_result = result["eval_sets"]["users"]
    assert users_result["queries"] == 143 and set(users_result["metrics"]) == {"base", "tuned"}
    report = (out / "report.md").read_text()
    assert "| users (picked the checkpoint) | 143 | 1000 |" in report and "BM25 is not evaluated" in report
    assert result["regression"]["checked"] and result["regression"]["on"] == "validation"


def _qrels(path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        found.setdefault(row["query"], set()).add(row["positive_id"])
    return found
