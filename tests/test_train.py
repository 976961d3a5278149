import json

import numpy as np
from helpers import split_folder

from ragtune.config import TrainConfig
from ragtune.embeddings import load_model
from ragtune.train import BEST_METRIC, train, training_arguments


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
