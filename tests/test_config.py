import re

import pytest

from ragtune.config import load_config
from ragtune.errors import RagtuneError


def test_examples_are_valid(tmp_path):
    from conftest import ROOT

    for name in ("pubmedqa.yaml", "medquad.yaml"):
        cfg = load_config(ROOT / "examples" / name)
        assert cfg.train.batch_size == 16 and cfg.train.learning_rate == 2e-5 and cfg.train.epochs == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  batch_size: 1\n", "train.batch_size: Input should be greater than or equal to 2"),
        ("mining:\n  strategy: hardest\n", "mining.strategy"),
        ("mining:\n  range_min: 5\n  range_max: 5\n", "range_max (5) must be larger than range_min (5)"),
        ("split:\n  test: 0.5\n", "must be 1.0"),
        ("train:\n  attention_dropout: 1.5\n", "attention_dropout must be 'model' or in [0, 1), got 1.5"),
        ("train:\n  attention_dropout: none\n", "train.attention_dropout"),
        ("- a list\n", "top level must be a mapping"),
        ("data: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_configs_name_the_setting(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(RagtuneError, match=re.escape(message)):
        load_config(tmp_path / "c.yaml")
