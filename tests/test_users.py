"""Where users are: eval sets of real questions, the corpus users search, pseudo-labels, the template warning."""

import json
import random

import pytest
from conftest import shared_file, write_jsonl

from ragtune.adapt import adapt, load_judged, load_pairs_files, load_user_queries, pseudo_label
from ragtune.config import AdaptConfig, RunConfig, SplitConfig
from ragtune.data import Document, LoadStats, PairData, load_pairs
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.pipeline import run
from ragtune.splits import split_queries, trained_on
from ragtune.tables import trained_on_note
from ragtune.templates import template_stats, template_warning


def _medquad_questions(n: int) -> list[str]:
    rows = [json.loads(line) for line in shared_file("medquad", "medquad_pairs.jsonl").open()]
    random.Random(0).shuffle(rows)
    return [r["question"] for r in rows[:n]]


def test_template_warning_fires_on_medquad_not_on_real_questions():
    medquad = template_stats(_medquad_questions(250))
    assert medquad.templated and medquad.shared_opening > 0.7
    real = load_user_queries(shared_file("medicationqa"), "test")
    consumers = template_stats(real)
    assert not consumers.templated and consumers.shared_opening < 0.2
    assert consumers.distinct_bigrams > medquad.distinct_bigrams
    text = template_warning(medquad, {"medicationqa-test": consumers})
    assert "overstate" in text and "medicationqa-test" in text
    assert template_warning(consumers) is None
    # Paraphrases of one template still count as templated; one shared opening among varied questions does not.
    templated = [f"What are the symptoms of disease {i} ?" for i in range(40)]
    assert template_stats(templated).templated
    varied = ["what are the risks of x"] + [f"q{i} word{i} other{i} text" for i in range(39)]
    assert not template_stats(varied).templated


def test_user_queries_of_a_split_read_ids_never_labels(tmp_path):
    dev = load_user_queries(shared_file("medicationqa"), "dev")
    test = load_user_queries(shared_file("medicationqa"), "test")
    texts = {
        json.loads(line)["_id"]: json.loads(line)["text"]
        for line in shared_file("medicationqa", "queries.jsonl").open()
    }
    for split, got in (("dev", dev), ("test", test)):
        lines = shared_file("medicationqa", "qrels", f"{split}.tsv").read_text().splitlines()[1:]
        assert got == list(dict.fromkeys(texts[line.split("\t")[0]] for line in lines))
    with pytest.raises(RagtuneError, match="qrels/nope.tsv"):
        load_user_queries(shared_file("medicationqa"), "nope")
    write_jsonl(tmp_path / "q.jsonl", [{"text": "how do i take it"}, {"text": ""}])
    with pytest.raises(RagtuneError, match="q.jsonl: line 2"):
        load_user_queries(tmp_path / "q.jsonl")


def _labelled() -> PairData:
    corpus = {"p1": "Aspirin relieves pain and lowers fever.", "p2": "Insulin lowers blood sugar in diabetes."}
    queries = {"q1": "What is aspirin for ?", "q2": "What is insulin for ?"}
    return PairData(corpus, queries, {"q1": {"p1": 1.0}, "q2": {"p2": 1.0}}, LoadStats("x", "jsonl"))


def test_pseudo_labels_keep_only_agreement(tiny_model, tmp_path):
    corpus = {
        "a": "warfarin thins the blood; bleeding is its main risk",
        "b": "metformin lowers blood sugar and is taken with meals",
        "c": "ibuprofen eases pain and swelling",
    }
    encoder = Encoder(tiny_model, tmp_path / "cache", show_progress=False)
    queries = ["does warfarin make me bleed", "when to take metformin with meals", "zzz qqq"]
    pairs, stats = pseudo_label(queries, corpus, encoder)
    assert stats["queries"] == 3 and stats["agreed"] == len(pairs)
    # BM25 finds nothing for "zzz qqq": no agreement is possible, so it is never labelled.
    assert all(q != "zzz qqq" for q, _ in pairs)
    from ragtune.evaluate import bm25_run, dense_run

    probe = PairData(
        corpus, {str(i): q for i, q in enumerate(queries)}, {str(i): {} for i in range(3)}, LoadStats("", "")
    )
    dense, lexical = dense_run(encoder, probe, k=1), bm25_run(probe, k=1)
    expected = [
        (q, next(iter(dense[str(i)])))
        for i, q in enumerate(queries)
        if lexical[str(i)] and next(iter(dense[str(i)])) == next(iter(lexical[str(i)]))
    ]
    assert pairs == expected


def test_adapted_pairs_are_train_only_and_tagged(tiny_model, tmp_path):
    data = _labelled()
    long = " ".join(f"Take warfarin at the same time each day, note {i}." for i in range(12))
    target = {"t1": long, "t2": "Aspirin relieves pain and lowers fever."}
    documents = [Document(pid, text) for pid, text in target.items()]
    adapted, stats = adapt(data, documents, None, None, AdaptConfig(methods=["crop"]))
    assert stats.corpus_passages == 2 and stats.corpus_passages_new == 1  # the shared passage is not doubled
    assert len(adapted.corpus) == 3
    added = [q for q in adapted.qrels if q not in data.qrels]
    assert added and set(added) == set(adapted.train_only)
    assert {adapted.methods[q] for q in added} == {"crop"} and adapted.methods["q1"] == "labelled"
    many = PairData(
        {f"p{i}": f"passage {i}" for i in range(20)},
        {f"q{i}": f"question {i}" for i in range(20)},
        {f"q{i}": {f"p{i}": 1.0} for i in range(20)},
        LoadStats("x", "jsonl"),
    )
    many.train_only = ["q0", "q1", "q2"]
    split, _ = split_queries(many, SplitConfig(train=0.5, validation=0.25, test=0.25))
    assert {"q0", "q1", "q2"} <= set(split["train"])
    assert not {"q0", "q1", "q2"} & (set(split["validation"]) | set(split["test"]))
    assert sorted(sum(split.values(), [])) == sorted(many.qrels)


def test_pairs_files_join_as_train_only_pairs_counted_by_method(tmp_path):
    llm = write_jsonl(
        tmp_path / "llm_pairs.jsonl",
        [
            {
                "query": "how much warfarin a day",
                "passage": "Take warfarin at the same time each day.",
                "method": "llm",
            },
            {"query": "What is aspirin for ?", "passage": "Aspirin relieves pain and lowers fever.", "method": "llm"},
            {"query": "pain pill for fever", "passage": "Aspirin relieves pain and lowers fever.", "method": "llm"},
        ],
    )
    other = tmp_path / "handmade.csv"
    other.write_text(
        "query,passage,method\nfridge insulin?,Store insulin in the fridge.,\nsugar pill,Insulin lowers "
        "blood sugar in diabetes.,labelled\n"
    )
    extra = load_pairs_files([str(llm), str(other)])
    assert [m for _, _, m in extra] == ["llm", "llm", "llm", "handmade", "handmade"]
    data = _labelled()
    adapted, stats = adapt(
        data, [], None, None, AdaptConfig(methods=[], pairs=[str(llm), str(other)]), extra_pairs=extra
    )
    # A text already asked as a labelled question keeps its own label; the rest are train-only, by method.
    assert stats.pairs_by_method == {"labelled": 2, "llm": 2, "handmade": 2}
    added = {adapted.queries[q]: {adapted.corpus[p] for p in adapted.qrels[q]} for q in adapted.train_only}
    assert added == {
        "how much warfarin a day": {"Take warfarin at the same time each day."},
        "pain pill for fever": {data.corpus["p1"]},
        "fridge insulin?": {"Store insulin in the fridge."},
        "sugar pill": {data.corpus["p2"]},
    }
    assert stats.corpus_passages_new == 2 and len(adapted.corpus) == 4  # known passages are not doubled
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"query": "ok query", "passage": "p"}, {"query": "q", "passage": " "}])
    with pytest.raises(RagtuneError, match="^adapt.pairs: .*bad.jsonl: line 2: field 'passage' is empty") as err:
        load_pairs_files([str(bad)])
    assert "skip_bad_rows" not in str(err.value)  # data.path's setting: it does not skip these rows
    with pytest.raises(RagtuneError, match="adapt.pairs: file not found: .*nope.jsonl"):
        load_pairs_files([str(tmp_path / "nope.jsonl")])


def _beir(folder, corpus: dict[str, str], queries: dict[str, str], qrels: dict[str, list[tuple]]) -> None:
    folder.mkdir()
    write_jsonl(folder / "corpus.jsonl", [{"_id": i, "title": "", "text": t} for i, t in corpus.items()])
    write_jsonl(folder / "queries.jsonl", [{"_id": i, "text": t} for i, t in queries.items()])
    (folder / "qrels").mkdir()
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore", *(f"{q}\t{p}\t{g}" for q, p, g in rows)]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def test_judged_user_questions_train_with_their_labels(tmp_path):
    users = tmp_path / "users"
    _beir(
        users,
        {
            "d1": "Take warfarin at the same time each day.",
            "d2": "Aspirin relieves pain and lowers fever.",
            "d3": "Metformin is taken with meals.",
            "d4": "Store insulin in the fridge.",
        },
        {
            "u1": "can i take warfarin at night",
            "u2": "can i take warfarin at night",
            "u3": "metformin food?",
            "u4": "is aspirin for fever",
            "u5": "where to keep insulin",
        },
        {
            "dev": [("u1", "d1", 1), ("u2", "d4", 2), ("u3", "d3", 1), ("u3", "d2", 0), ("u4", "d2", 0)],
            "test": [("u5", "d4", 1)],
        },
    )
    judged = load_judged(users, "dev")
    # One entry per question text (u1 and u2 ask the same), relevant passages only (grade 0: u3-d2, u4), test unread.
    assert judged == [
        (
            "can i take warfarin at night",
            {"Take warfarin at the same time each day.": 1.0, "Store insulin in the fridge.": 2.0},
        ),
        ("metformin food?", {"Metformin is taken with meals.": 1.0}),
    ]
    with pytest.raises(RagtuneError, match="qrels/nope.tsv"):
        load_judged(users, "nope")
    write_jsonl(tmp_path / "q.jsonl", [{"text": "how do i take it"}])
    with pytest.raises(RagtuneError, match="needs a BEIR folder"):
        load_judged(tmp_path / "q.jsonl", "dev")

    data = _labelled()
    # The users' corpus holds d1 and the labelled aspirin passage, not d3 or d4: a judged answer outside it still
    # joins the corpus, once.
    documents = [Document("x1", "Take warfarin at the same time each day."), Document("x2", data.corpus["p1"])]
    questions = ["can i take warfarin at night", "metformin food?"]
    adapted, stats = adapt(data, documents, questions, None, AdaptConfig(methods=["judged"]), judged)
    added = [q for q in adapted.qrels if q not in data.qrels]
    assert set(adapted.train_only) == set(added)
    got = {adapted.queries[q]: {adapted.corpus[p]: g for p, g in adapted.qrels[q].items()} for q in added}
    assert got == dict(judged) and {adapted.methods[q] for q in added} == {"judged"}
    assert stats.pairs_by_method == {"labelled": 2, "judged": 2} and stats.corpus_passages_new == 3
    assert sorted(adapted.corpus.values()) == sorted({*data.corpus.values(), *(t for _, r in judged for t in r)})


def test_judged_questions_are_not_pseudo_labelled_again(tiny_model, tmp_path):
    corpus = {"a": "warfarin thins the blood; bleeding is its main risk", "b": "metformin is taken with meals"}
    documents = [Document(pid, text) for pid, text in corpus.items()]
    questions = ["does warfarin make me bleed", "when to take metformin with meals"]
    encoder = Encoder(tiny_model, tmp_path / "cache", show_progress=False)
    pseudo_only, _ = adapt(_labelled(), documents, questions, encoder, AdaptConfig(methods=["pseudo"]))
    pseudo = {pseudo_only.queries[q] for q in pseudo_only.train_only}
    assert pseudo  # else the check below would hold without judged doing anything
    judged = [(text, {corpus["b"]: 1.0}) for text in sorted(pseudo)]
    both = AdaptConfig(methods=["pseudo", "judged"])
    adapted, stats = adapt(_labelled(), documents, questions, encoder, both, judged)
    methods = [(adapted.queries[q], adapted.methods[q]) for q in adapted.train_only]
    assert sorted(methods) == [(text, "judged") for text in sorted(pseudo)]
    assert "pseudo" not in stats.pairs_by_method


def test_judged_needs_a_split_and_never_judges_itself():
    base = {
        "data": {"path": "pairs.jsonl", "corpus": "users", "user_queries": "users", "user_queries_split": "dev"},
        "adapt": {"methods": ["judged"]},
    }
    RunConfig.model_validate({**base, "eval_sets": [{"name": "users-test", "path": "users", "split": "test"}]})
    with pytest.raises(ValueError, match="users-dev is the split adapt.methods: judged trains on"):
        RunConfig.model_validate({**base, "eval_sets": [{"name": "users-dev", "path": "./users", "split": "dev"}]})
    with pytest.raises(ValueError, match="judged needs data.corpus, data.user_queries"):
        RunConfig.model_validate({**base, "data": {**base["data"], "user_queries_split": None}})
    # Without judged the same eval set is allowed: pseudo-labels never read the labels it is scored on.
    RunConfig.model_validate(
        {
            **base,
            "adapt": {"methods": ["pseudo"]},
            "eval_sets": [{"name": "users-dev", "path": "users", "split": "dev"}],
        }
    )


def test_eval_questions_met_in_training_are_counted_and_reported():
    trained = PairData(
        {"p1": "Take it with food.", "p2": "Store it cold.", "p3": "It may cause nausea."},
        {"t1": "how do i take x", "t2": "store it", "t3": "does x cause nausea"},
        {"t1": {"p1": 1.0}, "t2": {"p2": 1.0}, "t3": {"p3": 1.0}},
        LoadStats("x", "beir"),
        splits={"train": ["t1", "t2"], "validation": ["t3"]},
        methods={"t1": "labelled", "t2": "ict", "t3": "judged"},
    )
    evaluated = PairData(
        {"e1": "Another answer.", "e2": "take it  with FOOD.", "e3": "Store it cold.", "e4": "It may cause nausea."},
        {"a": "How do I take  X", "b": "with a meal?", "c": "fridge?", "d": "nausea?"},
        {"a": {"e1": 1.0}, "b": {"e2": 1.0}, "c": {"e3": 1.0}, "d": {"e4": 1.0}},
        LoadStats("y", "beir"),
    )
    # a: the words of a training question; b: the answer of a labelled one. c's answer only trained an ict pair,
    # d's a judged question of validation: neither counts.
    seen = trained_on(trained, evaluated)
    assert seen == {"queries": 4, "same_question": 1, "same_answer": 1, "either": 2, "seen_ids": ["a", "b"]}
    note = trained_on_note({"users": {"trained_on": seen}, "other": {"trained_on": {**seen, "either": 0}}})
    assert note.startswith("users: 2 of 4 questions were met in training (1 asked in the same words, 1 answered")
    assert "other" not in note and trained_on_note({"old": {}}) == ""


@pytest.mark.slow
def test_run_with_users_corpus_and_eval_sets(tiny_model, tmp_path):
    """The whole run on real data: MedQuAD pairs, MedicationQA's corpus and dev questions, its test half as an eval
    set; the tiny model keeps it short."""
    medication = shared_file("medicationqa")
    cfg = RunConfig.model_validate(
        {
            "base_model": str(tiny_model),
            "output_dir": str(tmp_path / "run"),
            "data": {
                "path": str(shared_file("medquad", "medquad_pairs.jsonl")),
                "query_column": "question",
                "passage_column": "answer",
                "max_pairs": 150,
                "corpus": str(medication),
                "user_queries": str(medication),
                "user_queries_split": "dev",
            },
            "adapt": {"methods": ["pseudo"]},
            "split": {"split_by": "passage"},
            "train": {"epochs": 1, "batch_size": 8, "evals_per_epoch": 1, "max_seq_length": 64},
            "evaluate": {"max_seq_length": 64},
            "eval_sets": [{"name": "medicationqa-test", "path": str(medication), "split": "test"}],
            "guard": "medicationqa-test",
        }
    )
    summary = run(cfg, allow_regression=True)
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    evalset = results["eval_sets"]["medicationqa-test"]
    truth = load_pairs(medication)
    # The questions met in training are left out of a second comparison, shown as its own row.
    seen = evalset["trained_on"]
    if seen["either"]:
        assert (
            evalset["unseen"]["queries"]
            == evalset["queries"] - seen["either"]
            == evalset["queries"] - len(seen["seen_ids"])
        )
    assert (evalset.get("unseen") is not None) == (seen["either"] > 0)
    assert summary.eval_table.count("not met in training") == (seen["either"] > 0)
    assert evalset["queries"] == len(truth.splits["test"]) and evalset["corpus"] == len(truth.corpus)
    assert set(evalset["metrics"]) == {"base", "tuned", "bm25", "base+bm25", "tuned+bm25"}
    # Two test questions are also dev questions in the same words; pseudo-labelling may have trained on them.
    trained = load_pairs(out / "data")
    asked = {" ".join(trained.queries[q].lower().split()) for q in trained.splits["train"]}
    test_texts = [" ".join(truth.queries[q].lower().split()) for q in truth.splits["test"]]
    assert evalset["trained_on"]["same_question"] == sum(t in asked for t in test_texts)
    assert evalset["trained_on"]["queries"] == len(test_texts)
    pairs = {(c["baseline"], c["system"]) for c in evalset["comparisons"]}
    assert {("base", "tuned"), ("bm25", "tuned")} <= pairs
    assert not evalset["templates"]["templated"]
    # The MedQuAD split is templated: the warning fires and names the eval set of real questions.
    assert results["test_templates"]["templated"] and "medicationqa-test" in results["template_warning"]
    assert results["regression"]["on"] == "the eval set medicationqa-test"
    sources = results["training_pairs_by_source"]
    adapt_stats = json.loads((out / "adapted" / "adapt.json").read_text())
    assert sources["pseudo"] == adapt_stats["pairs_by_method"]["pseudo"] > 0
    # The users' corpus joined the evaluation corpus of the in-distribution test.
    assert results["corpus"] >= adapt_stats["corpus_passages_new"] + 100
    report = (out / "report.md").read_text()
    assert "Where users are" in report and "| medicationqa-test | 346 |" in report and "Warning" in report
    assert ("Seen in training:" in report) == (evalset["trained_on"]["either"] > 0)
    assert summary.eval_table.count("\n") == 2 + (seen["either"] > 0)

    # The benchmark that collects recipes into the README's table reads the same run.
    import subprocess
    import sys

    from conftest import ROOT

    table = tmp_path / "transfer.md"
    script = ROOT / "benchmarks" / "transfer.py"
    subprocess.run([sys.executable, script, "--run", f"pseudo={out}", "--markdown", table], check=True, cwd=tmp_path)
    line = table.read_text().splitlines()[2]
    tuned_minus_base = evalset["comparisons"][0]["delta"] * 100
    assert line.startswith("| pseudo | labelled") and f"{tuned_minus_base:+.2f}" in line

    # An eval set can pick the checkpoint instead of the validation split: training runs again (its key changed), only
    # that set is scored while training, and the report marks its row as chosen on.
    picked = run(cfg.model_copy(update={"checkpoint_on": "medicationqa-test"}), allow_regression=True)
    info = json.loads((out / "model" / "ragtune_train.json").read_text())
    assert info["checkpoint_chosen_on"] == "medicationqa-test" and info["best_medicationqa-test_ndcg@10"] > 0
    log = json.loads((out / "model" / "training_log.json").read_text())
    assert any("eval_medicationqa-test_cosine_ndcg@10" in h for h in log)
    assert not any("eval_validation_cosine_ndcg@10" in h for h in log)
    assert "| medicationqa-test (picked the checkpoint) | 346 |" in picked.eval_table
    assert json.loads((out / "results.json").read_text())["checkpoint_chosen_on"] == "medicationqa-test"

    # An eval set dropped from the config is no longer reported (its folder stays, unused).
    again = run(cfg.model_copy(update={"eval_sets": [], "guard": "validation"}), allow_regression=True)
    assert again.eval_sets == {} and again.eval_table == ""
    assert json.loads((out / "results.json").read_text())["eval_sets"] == {}
    assert (out / "eval" / "sets" / "medicationqa-test" / "result.json").exists()

    # Labelled dev questions (judged) train: the test questions asked in the same words as a dev question, or whose
    # answer is a dev question's, were met in training, and are compared again without them.
    dev, test = truth.splits["dev"], truth.splits["test"]
    dev_texts = {" ".join(truth.queries[q].lower().split()) for q in dev}
    dev_answers = {p for q in dev for p in truth.qrels[q]}
    same_words = {q for q in test if " ".join(truth.queries[q].lower().split()) in dev_texts}
    same_answer = {q for q in test if set(truth.qrels[q]) & dev_answers}
    assert same_words and same_answer  # MedicationQA has both (2 and 10 questions)
    judged = run(
        cfg.model_copy(update={"adapt": AdaptConfig(methods=["judged"]), "output_dir": str(tmp_path / "judged")}),
        allow_regression=True,
    )
    seen = judged.eval_sets["medicationqa-test"]["trained_on"]
    assert (seen["same_question"], seen["same_answer"]) == (len(same_words), len(same_answer))
    assert seen["seen_ids"] == sorted(same_words | same_answer)
    assert judged.eval_sets["medicationqa-test"]["unseen"]["queries"] == len(test) - len(same_words | same_answer)
    assert "| medicationqa-test, not met in training | 334 |" in judged.eval_table
    assert (
        "medicationqa-test: 12 of 346 questions were met in training" in (tmp_path / "judged" / "report.md").read_text()
    )
    # The recipes' table gets a column for it, left empty for runs without one.
    both = tmp_path / "both.md"
    runs = ["--run", f"pseudo={out}", "--run", f"judged={tmp_path / 'judged'}", "--markdown", both]
    subprocess.run([sys.executable, script, *runs], check=True, cwd=tmp_path)
    head, _, pseudo_row, judged_row = both.read_text().splitlines()
    assert "medicationqa-test, not met in training: tuned − base" in head
    assert pseudo_row.endswith("| – |") and not judged_row.endswith("| – |")
