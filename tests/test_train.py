import json

import numpy as np
import pytest
from helpers import split_folder

from ragtune.config import TrainConfig
from ragtune.embeddings import load_model
from ragtune.train import BEST_METRIC, LengthGroupedNoDuplicates, last_checkpoint, train, training_arguments


def test_config_maps_onto_trainer_arguments(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=8, learning_rate=3e-5, warmup_ratio=0.2, evals_per_epoch=2)
    args = training_arguments(cfg, tmp_path, train_rows=80, has_validation=True)
    assert (args.num_train_epochs, args.per_device_train_batch_size, args.learning_rate) == (2, 8, 3e-5)
    assert args.warmup_steps == 0.2 and args.eval_steps == 5 and args.save_steps == 5
    assert str(args.batch_sampler.value) == "no_duplicates"
    assert args.load_best_model_at_end and args.metric_for_best_model == BEST_METRIC


def test_two_steps_change_the_embeddings_and_save_a_card(tiny_model, tmp_path):
    data = split_folder(tmp_path, tiny_model)
    probe = ["what does the heart do?", "The lung has job number 3 in the body."]
    before = load_model(tiny_model).encode(probe)
    cfg = TrainConfig(epochs=1, batch_size=16, learning_rate=1e-3, evals_per_epoch=1)
    result = train(str(tiny_model), data, tmp_path / "out", cfg)
    assert result.steps == 2  # 32 train rows / batch 16
    after = load_model(result.model_dir).encode(probe)
    assert not np.allclose(before, after, atol=1e-4)
    assert (result.model_dir / "README.md").exists()
    log = json.loads((result.model_dir / "training_log.json").read_text())
    assert any("loss" in h for h in log) and any(BEST_METRIC in h for h in log)
    assert result.best_checkpoint is not None and result.best_metric is not None


def test_an_eval_set_picks_the_checkpoint_kept(tiny_model, tmp_path):
    """select_on: only those queries are scored while training, and the model kept is their best checkpoint."""
    from ragtune.data import load_ragtune_data
    from ragtune.validation import GradedRetrievalEvaluator

    data = split_folder(tmp_path, tiny_model)
    folder = load_ragtune_data(data)
    users = folder.subset(folder.splits["test"])  # labelled questions over the same corpus
    cfg = TrainConfig(batch_size=8, learning_rate=1e-3, evals_per_epoch=4)  # 4 steps, scored after each
    result = train(str(tiny_model), data, tmp_path / "out", cfg, select_on=("users-dev", users))
    metric = "eval_users-dev_cosine_ndcg@10"
    scores = {h["step"]: h[metric] for h in result.log_history if metric in h}
    assert sorted(scores) == [1, 2, 3, 4] and not any(BEST_METRIC in h for h in result.log_history)
    assert result.best_metric == max(scores.values())
    assert int(result.best_checkpoint.rsplit("-", 1)[1]) in {s for s, v in scores.items() if v == result.best_metric}
    again = GradedRetrievalEvaluator(users, "again", 8)(load_model(result.model_dir))["again_cosine_ndcg@10"]
    assert again == pytest.approx(result.best_metric, abs=1e-4)


def test_cached_mnrl_gives_the_same_gradients_as_mnrl(tiny_model):
    """GradCache is exact: a batch of 16 in mini-batches of 4 must produce MNRL's gradients."""
    import torch
    from sentence_transformers.sentence_transformer import losses

    from ragtune.train import build_loss

    model = load_model(tiny_model)
    model.eval()  # no dropout, so both passes see the same network
    queries = [f"question number {i} about topic {i % 5}" for i in range(16)]
    passages = [f"passage {i} answers topic {i % 5} in detail" for i in range(16)]

    def grads(loss_module):
        model.zero_grad()
        features = [model.tokenize(queries), model.tokenize(passages)]
        loss_module(features, torch.zeros(16)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    plain = grads(build_loss(model, TrainConfig()))
    cached_loss = build_loss(model, TrainConfig(loss="cached-mnrl", mini_batch_size=4))
    assert isinstance(cached_loss, losses.CachedMultipleNegativesRankingLoss)
    cached = grads(cached_loss)
    assert plain.abs().sum() > 0 and torch.allclose(plain, cached, atol=1e-5, rtol=1e-4)


def test_loss_choices_and_argument_mapping(tiny_model, tmp_path):
    from sentence_transformers.sentence_transformer import losses

    from ragtune.train import build_loss

    model = load_model(tiny_model)
    m = build_loss(model, TrainConfig(matryoshka_dims=[32, 16, 8]))
    assert isinstance(m, losses.MatryoshkaLoss) and list(m.matryoshka_dims) == [32, 16, 8]
    gist = build_loss(model, TrainConfig(guide_model=str(tiny_model), loss="cached-mnrl"))
    assert isinstance(gist, losses.CachedGISTEmbedLoss)
    assert isinstance(build_loss(model, TrainConfig(guide_model=str(tiny_model))), losses.GISTEmbedLoss)
    import pytest

    from ragtune.errors import RagtuneError

    with pytest.raises(RagtuneError, match="exceeds"):
        build_loss(model, TrainConfig(matryoshka_dims=[64, 32]))
    cfg = TrainConfig(report_to=["tensorboard"], torch_compile=True)
    args = training_arguments(cfg, tmp_path, train_rows=80, has_validation=True)
    assert args.report_to == ["tensorboard"] and args.torch_compile and not args.bf16
    import torch

    if not torch.cuda.is_available():  # on CPU: bf16 autocast runs, fp16 is refused with a message naming the setting
        bf16 = training_arguments(TrainConfig(precision="bf16"), tmp_path, 80, True)
        assert bf16.bf16 and bf16.use_cpu and not training_arguments(TrainConfig(), tmp_path, 80, True).use_cpu
        with pytest.raises(RagtuneError, match="precision=fp16"):
            training_arguments(TrainConfig(precision="fp16"), tmp_path, 80, True)
    assert training_arguments(TrainConfig(), tmp_path, 80, True).report_to in ([], "none", ["none"])


def test_matryoshka_and_gist_train_and_evaluate_every_size(tiny_model, tmp_path):
    data = split_folder(tmp_path, tiny_model)
    cfg = TrainConfig(batch_size=16, learning_rate=1e-3, evals_per_epoch=1, matryoshka_dims=[32, 16, 8])
    result = train(str(tiny_model), data, tmp_path / "mat", cfg)
    evals = [h for h in result.log_history if BEST_METRIC in h]
    assert evals and all(f"eval_validation_dim{d}_cosine_ndcg@10" in evals[-1] for d in (16, 8))
    gist = train(str(tiny_model), data, tmp_path / "gist", TrainConfig(batch_size=16, guide_model=str(tiny_model)))
    assert gist.steps == 2 and any("loss" in h for h in gist.log_history)


def test_lora_adapter_round_trips_and_resumes(tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer

    data = split_folder(tmp_path, tiny_model)
    probe = ["what does the heart do?", "The lung has job number 3 in the body."]
    cfg = TrainConfig(
        batch_size=8,
        learning_rate=5e-3,
        evals_per_epoch=1,
        adapter="lora",
        lora_rank=4,
        lora_target_modules=["query", "value"],
    )
    result = train(str(tiny_model), data, tmp_path / "out", cfg)
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_config.json").exists() and not (adapter / "model.safetensors").exists()
    merged = load_model(result.model_dir).encode(probe)
    with_adapter = SentenceTransformer(str(adapter), device="cpu").encode(probe)
    base = load_model(tiny_model).encode(probe)
    assert np.allclose(merged, with_adapter, atol=1e-5)  # merge-to-full-model == base + adapter
    assert not np.allclose(merged, base, atol=1e-4)  # and the adapter learned something
    again = train(str(tiny_model), data, tmp_path / "out", cfg.model_copy(update={"epochs": 2}))
    assert again.resumed_from is not None and again.steps == 2 * result.steps
    assert np.allclose(
        load_model(again.model_dir).encode(probe), SentenceTransformer(str(adapter)).encode(probe), atol=1e-5
    )


def _padding(batches, data):
    """Characters of padding if every column were padded to its longest text in the batch."""
    total = 0
    for batch in batches:
        for column in data.column_names:
            lengths = [len(data[column][i]) for i in batch]
            total += sum(max(lengths) - n for n in lengths)
    return total


def test_length_grouped_batches_keep_every_row_once_without_repeats_and_pad_less():
    from datasets import Dataset
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(500)]
    queries = [" ".join(rng.choice(words, 3)) + f" q{i}" for i in range(1000)]
    passages = [" ".join(rng.choice(words, int(rng.integers(2, 200)))) for _ in range(1000)]
    passages[10:20] = [passages[5]] * 10  # one answer under 11 questions: never twice in a batch
    data = Dataset.from_dict({"anchor": queries, "positive": passages})
    sampler = LengthGroupedNoDuplicates(data, batch_size=16, drop_last=False, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for batch in batches:
        texts = [t for i in batch for t in (queries[i], passages[i])]
        assert len(texts) == len(set(texts))
    assert sum(len(b) == 16 for b in batches) >= len(batches) - 2 and len(batches) <= len(sampler) + 2
    plain = list(NoDuplicatesBatchSampler(data, batch_size=16, drop_last=False, seed=3))
    assert _padding(batches, data) < 0.5 * _padding(plain, data)
    assert list(LengthGroupedNoDuplicates(data, batch_size=16, drop_last=False, seed=3)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_training_with_length_grouped_batches(tiny_model, tmp_path):
    data = split_folder(tmp_path, tiny_model)
    cfg = TrainConfig(batch_size=16, learning_rate=1e-3, evals_per_epoch=1, group_by_length=True)
    assert training_arguments(cfg, tmp_path, 32, True).batch_sampler is LengthGroupedNoDuplicates
    result = train(str(tiny_model), data, tmp_path / "grouped", cfg)
    assert result.steps == 2 and any("loss" in h for h in result.log_history)


def test_attention_dropout_is_off_while_training_and_the_saved_config_keeps_the_models(tiny_model, tmp_path):
    from transformers import TrainerCallback

    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            layer = model[0].auto_model.encoder.layer[0]
            seen["attention"], seen["hidden"] = layer.attention.self.dropout.p, layer.output.dropout.p

    data = split_folder(tmp_path, tiny_model)
    base_config = json.loads((tiny_model / "config.json").read_text())
    for setting, expected in ((0.0, 0.0), ("model", base_config["attention_probs_dropout_prob"]), (0.25, 0.25)):
        cfg = TrainConfig(batch_size=16, evals_per_epoch=1, attention_dropout=setting)
        result = train(str(tiny_model), data, tmp_path / str(setting), cfg, callbacks=[Probe()])
        assert seen == {"attention": expected, "hidden": base_config["hidden_dropout_prob"]}
        saved = json.loads((result.model_dir / "config.json").read_text())
        assert saved["attention_probs_dropout_prob"] == base_config["attention_probs_dropout_prob"] == 0.1


def test_bf16_training_runs_and_saves_float32_weights(tiny_model, tmp_path):
    import torch

    data = split_folder(tmp_path, tiny_model)
    probe = ["what does the heart do?"]
    before = load_model(tiny_model).encode(probe)
    cfg = TrainConfig(batch_size=16, learning_rate=1e-3, evals_per_epoch=1, precision="bf16")
    result = train(str(tiny_model), data, tmp_path / "bf16", cfg)
    assert result.steps == 2 and all(np.isfinite(h["loss"]) for h in result.log_history if "loss" in h)
    tuned = load_model(result.model_dir)
    assert all(p.dtype == torch.float32 for p in tuned.parameters())  # autocast: the master weights stay float32
    assert not np.allclose(before, tuned.encode(probe), atol=1e-4)


def test_resume_skips_a_checkpoint_cut_off_while_saving(tmp_path):
    import pytest

    assert last_checkpoint(tmp_path / "none") is None
    for step, state in [(10, "{}"), (20, '{"global_step": 20}'), (30, None), (40, '{"global_st')]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x")
        if state is not None:  # 30: killed before the state was written; 40: killed while writing it
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-latest").mkdir()
    with pytest.warns(UserWarning, match="cut off while being saved"):
        assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")


def test_checkpoints_are_chosen_on_the_reports_graded_metric(tiny_model):
    """The trainer's validation NDCG@10 is the report's: graded judgements count by grade, as in evaluate."""
    from ragtune.data import LoadStats, PairData
    from ragtune.embeddings import load_model
    from ragtune.evaluate import evaluate_systems
    from ragtune.validation import GradedRetrievalEvaluator

    corpus = {f"p{i}": f"passage {i} about the {t}" for i, t in enumerate(["heart", "lung", "liver", "bone"] * 5)}
    queries = {f"q{i}": f"what about the {t} {i}?" for i, t in enumerate(["heart", "lung", "liver", "bone"])}
    # Two judged passages per query, one far more relevant: binary NDCG would not tell them apart.
    qrels = {f"q{i}": {f"p{i}": 1.0, f"p{i + 4}": 3.0} for i in range(4)}
    data = PairData(corpus, queries, qrels, LoadStats("x", "-"))
    got = GradedRetrievalEvaluator(data, "validation")(load_model(tiny_model))
    expected = evaluate_systems({"m": str(tiny_model)}, data, bm25=False).metrics["m"]
    for metric, value in expected.items():
        assert got[f"validation_cosine_{metric}"] == pytest.approx(value, abs=1e-6), metric
    binary = {q: {p: 1.0 for p in rel} for q, rel in qrels.items()}
    binary_ndcg = evaluate_systems(
        {"m": str(tiny_model)}, PairData(corpus, queries, binary, LoadStats("x", "-")), bm25=False
    )
    assert binary_ndcg.metrics["m"]["ndcg@10"] != pytest.approx(got["validation_cosine_ndcg@10"], abs=1e-6)
