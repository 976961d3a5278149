"""Typed settings for every stage; one YAML file fills a `RunConfig`.

Unknown keys are rejected so that a typo in a config is an error, not a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ragtune.errors import RagtuneError

# The choices of each enumerated setting, shared by the config (validation) and the CLI (--help lists them).
DataFormat = Literal["auto", "jsonl", "csv", "parquet", "hf", "beir", "pubmedqa"]
Strategy = Literal["least-similar", "hard", "random", "none"]
Sampling = Literal["top", "random"]
NegativesFrom = Literal["train", "all"]
IndexKind = Literal["auto", "exact", "ivf"]
Screen = Literal["auto", "on", "off"]
SplitBy = Literal["pair", "passage", "group"]
Loss = Literal["mnrl", "cached-mnrl"]
Adapter = Literal["none", "lora"]
Precision = Literal["fp32", "bf16", "fp16"]
SynthMethod = Literal["title", "ict", "crop"]
AdaptMethod = Literal["pseudo", "judged", "ict", "crop", "title"]
RewriteStyle = Literal["keywords", "lower", "typo"]


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Settings):
    path: str | None = Field(None, description="File or folder with (query, passage) pairs; see `ragtune prepare`.")
    format: DataFormat = Field("auto", description="How to read data.path; auto: by extension or folder layout.")
    query_column: str = Field("query", description="Column holding the query (JSONL/CSV/Parquet/saved dataset).")
    passage_column: str = Field("passage", description="Column holding the passage.")
    skip_bad_rows: bool = Field(False, description="Skip (and count) rows with an empty or missing text.")
    group_column: str | None = Field(None, description="Rows sharing this column's value stay in one split.")
    max_pairs: int | None = Field(None, ge=1, description="Keep a seeded sample of this many pairs (whole queries).")
    sample_seed: int = Field(42, description="Seed of the max_pairs sample.")
    corpus: str | None = Field(
        None,
        description="The passages your users search (BEIR folder, or JSONL/CSV/Parquet with text_column): they join "
        "the evaluation corpus and the mining pool, and `adapt` methods learn from them.",
    )
    corpus_text_column: str = Field("text", description="Text column of a corpus file.")
    user_queries: str | None = Field(
        None,
        description="Questions as your users write them (BEIR folder, or a file with a `text` column): "
        "`adapt.methods: [pseudo]` pairs them with passages of data.corpus without reading labels; `judged` trains "
        "on them with their labels (a BEIR folder's qrels/<user_queries_split>.tsv).",
    )
    user_queries_split: str | None = Field(
        None, description="BEIR user_queries: take only the queries listed in qrels/<split>.tsv (e.g. dev)."
    )


class SynthConfig(Settings):
    corpus: str = Field(description="Documents without queries: BEIR folder, JSONL/CSV/Parquet, saved dataset.")
    methods: list[SynthMethod] = Field(
        ["title", "ict", "crop"],
        min_length=1,
        description="Offline methods making (query, passage) pairs from each document.",
    )
    chunk_tokens: int | None = Field(None, ge=16, description="Chunk documents into passages of this many tokens.")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by consecutive chunks.")
    text_column: str = Field("text", description="Column holding the document text.")
    id_column: str = Field("id", description="Column holding the document id.")
    seed: int = Field(42, description="The same corpus and seed give the same pairs.")


class AdaptConfig(Settings):
    methods: list[AdaptMethod] = Field(
        ["pseudo"],
        description="Train-only pairs made from data.corpus: pseudo (user queries paired where BM25 and the base "
        "model agree), judged (user queries with their labelled passages), ict/crop/title (synthetic, "
        "ragtune.synth). Used only when data.corpus is set.",
    )
    seed: int = Field(42, description="Seed of the synthetic methods.")
    pairs: list[str] = Field(
        [],
        description="Train-only pairs files (JSONL/CSV/Parquet: query, passage, optional method), e.g. made by "
        "`ragtune synth --method llm --style-queries ...`: each passage joins the corpus, each pair is counted by "
        "its method.",
    )


class EvalSetConfig(Settings):
    name: str = Field(description="Name in the report, e.g. medicationqa-test.")
    path: str = Field(description="BEIR folder or pairs file with the queries and the corpus they search.")
    split: str | None = Field(None, description="Split to evaluate (a BEIR qrels file name, e.g. test).")
    query_column: str = "query"
    passage_column: str = "passage"
    fusion_split: str | None = Field(
        None,
        description="Choose each model's fusion with BM25 on this split of the set (e.g. dev); default: the fusion "
        "the run chose on its own validation split.",
    )


class MiningConfig(Settings):
    strategy: Strategy = Field(
        "least-similar",
        description="least-similar (classic: one unique negative per row), hard (ranked by the base model), random, "
        "or none.",
    )
    num_negatives: int = Field(1, ge=1, description="Negatives per training row.")
    range_min: int = Field(0, ge=0, description="hard: skip this many top-ranked candidates.")
    range_max: int = Field(30, ge=1, description="hard: consider candidates up to this rank.")
    sampling: Sampling = Field("top", description="hard: take the top of the rank window, or sample from it.")
    margin: float | None = Field(
        None, ge=0, description="hard: drop candidates scoring above positive_score * (1 - margin)."
    )
    max_score: float | None = Field(None, description="hard: drop candidates scoring above this cosine.")
    max_cosine_to_positive: float | None = Field(
        None, gt=0, le=1, description="hard: drop candidates this similar to a positive (near-duplicates), e.g. 0.98."
    )
    negatives_from: NegativesFrom = Field(
        "train",
        description="train: a training row never gets a validation/test query's positive as its negative; all: any.",
    )
    index: IndexKind = Field(
        "auto", description="Candidate search: exact (FAISS flat), ivf (approximate), auto: ivf from ivf_threshold."
    )
    ivf_threshold: int = Field(200_000, ge=1, description="auto: corpora at least this large use the IVF index.")
    nprobe: int = Field(32, ge=1, description="ivf: clusters searched per query (more: slower, higher recall).")
    screen: Screen = Field(
        "auto",
        description="least-similar, exact search: screen with a bfloat16 product and rescore in float32 (same picks); "
        "auto: on CPUs with AMX tiles from 4,096 passages.",
    )
    cross_encoder: str | None = Field(
        None, description="hard: rescore candidates with this cross-encoder folder; guards then use its scores."
    )
    seed: int = Field(42, description="Seed of random choices (random strategy, sampling: random).")
    batch_size: int = Field(32, ge=1, description="Encoding batch size.")

    @model_validator(mode="after")
    def _window(self) -> MiningConfig:
        if self.range_max <= self.range_min:
            raise ValueError(f"range_max ({self.range_max}) must be larger than range_min ({self.range_min})")
        return self


class SplitConfig(Settings):
    train: float = Field(0.8, gt=0, description="Share of queries in train (train + validation + test = 1).")
    validation: float = Field(
        0.1, ge=0, description="Share in validation (checkpoint selection and the regression guard)."
    )
    test: float = Field(0.1, gt=0, description="Share in test (the reported numbers).")
    seed: int = Field(42, description="Seed of the split.")
    use_predefined: bool = Field(
        True, description="Keep the dataset's own train/test split (BEIR qrels files, DatasetDict splits)."
    )
    push_to_hub: str | None = Field(None, description="Hub repo id to push the splits to (token from HF_TOKEN).")
    split_by: SplitBy = Field(
        "pair",
        description="pair: by query; passage: no passage in two splits; group: data.group_column values together.",
    )
    near_duplicate_cosine: float = Field(
        0.95, gt=0, le=1, description="Leakage report: texts this similar across splits count as near-identical."
    )

    def assignment(self) -> dict:
        """The settings that decide which query lands in which split (mining must agree with them)."""
        return self.model_dump(include={"train", "validation", "test", "seed", "use_predefined", "split_by"})

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + validation + test must be 1.0, got {total:g}")
        return self


class EvalConfig(Settings):
    batch_size: int = Field(32, ge=1, description="Encoding batch size.")
    bm25: bool = Field(True, description="Evaluate BM25 (bm25s, stemmed) as a baseline.")
    hybrid: bool = Field(
        True,
        description="Evaluate each model fused with BM25 (`base+bm25`, `tuned+bm25`): RRF or a convex weight, "
        "whichever scores best on the validation split.",
    )
    max_seq_length: int | None = Field(None, ge=8, description="Truncate texts at encoding (default: the model's).")


class TrainConfig(Settings):
    epochs: float = Field(1.0, gt=0, description="Passes over the training rows (fractions allowed).")
    batch_size: int = Field(
        16, ge=2, description="Rows per batch: each row's passage is a negative for every other query in the batch."
    )
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps the learning rate warms up over.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_seq_length: int | None = Field(None, ge=8, description="Truncate training texts (default: the model's).")
    evals_per_epoch: int = Field(2, ge=1, description="Validation retrieval runs per epoch; the best is kept.")
    use_negatives: bool = Field(True, description="Feed mined negatives to the loss (else in-batch only).")
    loss: Loss = Field(
        "mnrl", description="cached-mnrl (GradCache): a large batch_size within the memory of mini_batch_size."
    )
    mini_batch_size: int = Field(32, ge=1, description="cached-mnrl: texts encoded per forward/backward pass.")
    matryoshka_dims: list[int] | None = Field(
        None, description="Train embeddings that still work truncated to these sizes, e.g. [384, 256, 128, 64]."
    )
    guide_model: str | None = Field(
        None, description="GISTEmbed: a guide model that masks in-batch negatives it scores above the positive."
    )
    adapter: Adapter = Field("none", description="lora: train a PEFT LoRA adapter, not all weights.")
    lora_rank: int = Field(16, ge=1, description="adapter: lora: rank of the adapter matrices.")
    lora_alpha: float = Field(32, gt=0, description="adapter: lora: scaling.")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="adapter: lora: dropout on the adapter.")
    lora_target_modules: list[str] = Field(
        ["query", "key", "value", "dense"], min_length=1, description="adapter: lora: the layers that get adapters."
    )
    gather_across_devices: bool = Field(
        True, description="Several processes (torchrun): every rank's batch is a negative for every other's."
    )
    query_rewrites: list[RewriteStyle] = Field(
        [],
        description="Also train on each train question rewritten as users type: keywords, lower (no template "
        "punctuation), typo (one letter off). Train split only; one extra row per style that changes the question.",
    )
    group_by_length: bool = Field(
        False, description="Batch rows of similar length (less padding), still without a repeated text per batch."
    )
    precision: Precision = Field(
        "fp32", description="Mixed precision: bf16 (GPUs; CPUs via autocast, fast with AMX), fp16 (CUDA GPUs)."
    )
    attention_dropout: float | Literal["model"] = Field(
        0.0,
        description="Dropout on attention probabilities while training; 'model' keeps the model's own (often 0.1). "
        "Off (the default), CPU training steps of 256 tokens ran 1.8x faster (fused attention, no random masks; less "
        "at shorter lengths), with no measurable accuracy change on MedQuAD or SciFact (README).",
    )
    torch_compile: bool = Field(False, description="torch.compile the model (GPUs; slow to start).")
    report_to: list[str] = Field([], description="Experiment trackers, e.g. [tensorboard] or [mlflow]; off by default.")
    seed: int = Field(42, description="Seed of initialisation, shuffling and dropout.")

    @model_validator(mode="after")
    def _dims(self) -> TrainConfig:
        if self.matryoshka_dims and sorted(self.matryoshka_dims, reverse=True) != self.matryoshka_dims:
            raise ValueError(f"matryoshka_dims must be in decreasing order, got {self.matryoshka_dims}")
        if self.attention_dropout != "model" and not 0 <= self.attention_dropout < 1:
            raise ValueError(f"attention_dropout must be 'model' or in [0, 1), got {self.attention_dropout}")
        return self


class EngineConfig(Settings):
    kind: Literal["local", "ray"] = Field(
        "local",
        description="Where corpus encoding runs: 'local' (this process) or 'ray' (a Ray cluster's actors, one model "
        "copy each; the `ray` extra). Same vectors either way, to float rounding.",
    )
    address: str | None = Field(
        None, description="Ray: a running cluster's address (else RAY_ADDRESS, else a local cluster on this machine)."
    )
    actors: int | None = Field(None, description="Ray: model copies (default: one per CPU of the cluster).")
    gpus: float = Field(0.0, description="Ray: GPUs per actor (0: CPU actors).")


class ShardsConfig(Settings):
    """The run for a corpus that never enters ragtune's process: encoded into Parquet shards on a Ray cluster (the
    engine's address, else RAY_ADDRESS, else a local one), indexed, mined and evaluated from them
    (`ragtune.shard_run`); `data.path` then holds (query, positive id) rows."""

    corpus: str = Field(description="The corpus: a JSONL or Parquet file, or a folder of them, one passage a row.")
    id_column: str = Field("id", description="Corpus files: the passage id column.")
    text_column: str = Field("text", description="Corpus files: the passage text column.")
    positive_column: str = Field("positive_id", description="Pairs files (data.path): the positive passage's id.")
    ivf_pq_from: int = Field(1_000_000, ge=1, description="From this many passages the index is IVF-PQ, else exact.")
    code_bytes: int | None = Field(None, ge=1, description="IVF-PQ bytes per passage (default: one per 2 dimensions).")
    nprobe: int = Field(32, ge=1, description="IVF-PQ cells searched per query, in mining and evaluation.")
    validation_queries: int = Field(
        1000,
        ge=0,
        description="Validation during training: this many validation queries (a seeded sample; 0: none), each "
        "searched among its positives and the base model's top validation_depth passages, not the whole corpus.",
    )
    validation_depth: int = Field(30, ge=1, description="The base model's candidates per validation query.")


class RunConfig(Settings):
    """A run's settings: one section per stage (`data`, `mining`, `split`, `train`, `evaluate`, ...), each field
    documented in the configuration reference. Build it from YAML (`load_config`) or a dict
    (`RunConfig.model_validate({...})`); `ragtune run --set train.epochs=2` overrides one field."""

    base_model: str = Field("default", description="'default' (packaged all-MiniLM-L6-v2), a folder or Hub id.")
    output_dir: str = Field(
        "runs/ragtune", description="The run folder: every stage's folder, the model and the reports."
    )
    allow_regression: bool = Field(
        False, description="Exit 0 even when the tuned model is not better than the base model on validation."
    )
    synth: SynthConfig | None = Field(
        None, description="Make the training pairs from a bare corpus first (then data.path is not needed)."
    )
    data: DataConfig = DataConfig()
    adapt: AdaptConfig = AdaptConfig()
    mining: MiningConfig = MiningConfig()
    split: SplitConfig = SplitConfig()
    evaluate: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    engine: EngineConfig = EngineConfig()
    shards: ShardsConfig | None = Field(
        None, description="Keep the corpus out of ragtune's process: encode, index, mine and evaluate on Ray."
    )
    eval_sets: list[EvalSetConfig] = Field(
        [], description="More test sets, e.g. real users' questions: each evaluated base vs tuned vs BM25."
    )
    guard: str = Field(
        "validation",
        description="What decides the regression guard: 'validation' (the split of your pairs) or an eval set's name.",
    )
    checkpoint_on: str = Field(
        "validation",
        description="What picks the checkpoint kept: 'validation' (the split of your pairs) or an eval set's name, "
        "e.g. a dev split of users' labelled questions; that set's numbers are then chosen on it, not a test.",
    )

    @model_validator(mode="after")
    def _eval_sets(self) -> RunConfig:
        names = [s.name for s in self.eval_sets]
        if len(set(names)) != len(names):
            raise ValueError(f"eval_sets: names must differ, got {names}")
        if self.guard != "validation" and self.guard not in names:
            raise ValueError(f"guard: {self.guard!r} is neither 'validation' nor an eval set's name ({names})")
        if self.checkpoint_on != "validation" and self.checkpoint_on not in names:
            raise ValueError(
                f"checkpoint_on: {self.checkpoint_on!r} is neither 'validation' nor an eval set's name ({names})"
            )
        if self.shards:
            self._check_shards()
        if "judged" in self.adapt.methods:
            self._check_judged()
        return self

    def _check_judged(self) -> None:
        """Labelled user questions train the model: they need a split to come from, and must not also judge it."""
        if not (self.data.corpus and self.data.user_queries and self.data.user_queries_split):
            raise ValueError(
                "adapt.methods: judged needs data.corpus, data.user_queries (a BEIR folder) and data.user_queries_split"
            )
        trained = (os.path.abspath(self.data.user_queries), self.data.user_queries_split)
        for eval_set in self.eval_sets:
            if (os.path.abspath(eval_set.path), eval_set.split) == trained:
                raise ValueError(
                    f"eval_sets: {eval_set.name} is the split adapt.methods: judged trains on "
                    f"(data.user_queries_split: {trained[1]}); judge the model on other questions"
                )

    def _check_shards(self) -> None:
        """What a run from shards cannot do, said before it starts rather than silently skipped."""
        if not self.data.path:
            raise ValueError("shards: data.path must name the (query, positive id) pairs files")
        where = {
            "synth": self.synth is not None,
            "data.corpus": self.data.corpus is not None,
            "data.user_queries": self.data.user_queries is not None,
            "adapt.pairs": bool(self.adapt.pairs),
            "split.split_by: group": self.split.split_by == "group",
            "split.push_to_hub": self.split.push_to_hub is not None,
            f"mining.strategy: {self.mining.strategy}": self.mining.strategy not in ("hard", "least-similar"),
            "mining.max_cosine_to_positive": self.mining.max_cosine_to_positive is not None,
            "mining.cross_encoder": self.mining.cross_encoder is not None,
        }
        unsupported = [name for name, used in where.items() if used]
        if unsupported:
            raise ValueError(f"shards: {', '.join(unsupported)} not supported in a run from shards")
        for eval_set in self.eval_sets:
            if not eval_set.split:
                raise ValueError(f"eval_sets: {eval_set.name} needs a split (a BEIR folder's qrels file) with shards")
        if self.checkpoint_on != "validation" and not self.shards.validation_queries:
            raise ValueError(
                f"checkpoint_on: {self.checkpoint_on} is scored on a sample of shards.validation_queries queries, "
                "which is 0"
            )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config that says one thing twice is an error here."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | Path) -> RunConfig:
    r"""A run config from a YAML file, validated: unknown or repeated keys and bad values are one-line errors.

    Example:
        >>> _ = open("run.yaml", "w").write("output_dir: runs/mine\ndata: {path: pairs.jsonl}")
        >>> config = ragtune.load_config("run.yaml")
        >>> config.data.path.endswith("/pairs.jsonl")  # paths are read relative to the config file
        True
    """
    path = Path(path)
    if not path.is_file():
        raise RagtuneError(f"config file not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        raise RagtuneError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from err
    except UnicodeDecodeError as err:
        raise RagtuneError(f"{path}: not UTF-8 text (byte at position {err.start})") from err
    if raw is None:
        raise RagtuneError(f"{path}: the config is empty; it needs at least data.path (see examples/)")
    if not isinstance(raw, dict):
        raise RagtuneError(f"{path}: the top level must be a mapping of settings")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise RagtuneError(f"{path}: {format_validation_error(err)}") from err
    config.data.path = _beside(path, config.data.path)
    if config.synth:
        config.synth.corpus = _beside(path, config.synth.corpus)
    config.data.corpus = _beside(path, config.data.corpus)
    config.data.user_queries = _beside(path, config.data.user_queries)
    if config.shards:
        config.shards.corpus = _beside(path, config.shards.corpus)
    for eval_set in config.eval_sets:
        eval_set.path = _beside(path, eval_set.path)
    return config


def _beside(config_file: Path, value: str | None) -> str | None:
    """Relative paths are relative to the config file (when that exists), so a config works from any directory."""
    if value and not Path(value).is_absolute():
        candidate = (config_file.parent / value).resolve()
        if candidate.exists():
            return str(candidate)
    return value


def set_values(raw: dict, items: list[str], option: str = "--set") -> dict:
    """Apply `key.path=value` overrides (values read as YAML: `2`, `null`, `[a, b]`) to a config dict, in place."""
    for item in items:
        if "=" not in item:
            raise RagtuneError(f"{option} expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            if node.get(part) is None:
                node[part] = {}  # an optional section not in the config yet (synth, say)
            if not isinstance(node[part], dict):
                raise RagtuneError(f"{option} {key}: {part!r} is not a section")
            node = node[part]
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise RagtuneError(f"{option} {key}: the value is not valid YAML ({' '.join(str(err).split())})") from err
    return raw


def override(config: RunConfig, items: list[str], source: str = "--set") -> RunConfig:
    """`config` with `set_values` applied, validated again (a typo in a key is an error naming it)."""
    raw = set_values(config.model_dump(), items)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise RagtuneError(f"{source}: {format_validation_error(err)}") from err


def format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "config"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)
