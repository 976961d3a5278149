import re

import pytest

from ragtune.config import load_config
from ragtune.errors import RagtuneError


def test_every_example_config_loads_and_names_real_paths():
    """Each shipped config validates, and every data path it names exists (resolved beside the config)."""
    from pathlib import Path

    from conftest import ROOT

    configs = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = load_config(path)
        named = [cfg.data.path, cfg.data.corpus, cfg.data.user_queries, *(s.path for s in cfg.eval_sets)]
        if cfg.synth:
            named.append(cfg.synth.corpus)
        made_first = re.findall(r"--out (\S+)", path.read_text())  # an earlier command in its comments makes it
        for value in filter(None, named):
            assert Path(value).exists() or value in made_first, f"{path.name}: {value}"
        assert cfg.data.path or cfg.synth or cfg.data.format == "pubmedqa", path.name


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
        ("guard: nowhere\n", "guard: 'nowhere' is neither 'validation' nor an eval set's name"),
        ("checkpoint_on: dev\n", "checkpoint_on: 'dev' is neither 'validation' nor an eval set's name"),
        (
            "data: {path: p.jsonl}\nshards: {corpus: c, validation_queries: 0}\ncheckpoint_on: users\n"
            "eval_sets:\n  - {name: users, path: u, split: test}\n",
            "checkpoint_on: users is scored on a sample of shards.validation_queries queries, which is 0",
        ),
        ("eval_sets:\n  - {name: a, path: x}\n  - {name: a, path: y}\n", "names must differ"),
        ("adapt:\n  methods: [magic]\n", "adapt.methods"),
    ],
)
def test_bad_configs_name_the_setting(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(RagtuneError, match=re.escape(message)):
        load_config(tmp_path / "c.yaml")


def test_set_overrides_nested_values_and_names_bad_keys(tmp_path):
    from ragtune.config import RunConfig, override

    cfg = RunConfig()
    changed = override(cfg, ["train.epochs=2", "data.corpus=/x", "adapt.methods=[ict, crop]", "synth.corpus=c"])
    assert changed.train.epochs == 2 and changed.data.corpus == "/x" and changed.adapt.methods == ["ict", "crop"]
    assert changed.synth.corpus == "c" and cfg.train.epochs == 1  # the original is not changed
    assert override(changed, ["data.corpus=null"]).data.corpus is None
    with pytest.raises(RagtuneError, match="train.epochz"):
        override(cfg, ["train.epochz=2"])
    with pytest.raises(RagtuneError, match="expects key=value"):
        override(cfg, ["train.epochs"])
    with pytest.raises(RagtuneError, match="'output_dir' is not a section"):
        override(cfg, ["output_dir.x=1"])
