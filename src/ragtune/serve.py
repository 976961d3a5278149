"""Serve a ragtune index to a RAG stack: OpenAI-compatible embeddings, search, health, and a comparison page.

`create_app` builds a FastAPI app; `ragtune serve` runs it with uvicorn on 127.0.0.1 unless told otherwise.
Concurrent embedding requests are gathered into one model call (`Batcher`), because a transformer encodes a batch
of 32 texts in little more time than one. User inputs never go through the on-disk embedding cache.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models' annotations at runtime.
import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.data import normalise
from ragtune.embeddings import Encoder
from ragtune.errors import RagtuneError
from ragtune.search import Index, flat_index

PAGE = Path(__file__).with_name("page.html")


class Batcher:
    """Collects texts from concurrent requests for up to `wait_ms`, encodes them together, hands rows back."""

    def __init__(self, encoder: Encoder, wait_ms: float = 5.0, max_batch: int = 64):
        self.encoder, self.wait, self.max_batch = encoder, wait_ms / 1000, max_batch
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0  # model calls made, for tests and metrics

    async def encode(self, texts: list[str]) -> np.ndarray:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, future))
        return await future

    async def _run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            deadline = time.monotonic() + self.wait
            while sum(len(t) for t, _ in jobs) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    jobs.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            texts = [t for batch, _ in jobs for t in batch]
            try:
                vectors = await asyncio.to_thread(self._encode, texts)
            except Exception as err:  # hand the failure to every waiting request
                for _, future in jobs:
                    future.set_exception(err)
                continue
            self.batches += 1
            start = 0
            for batch, future in jobs:
                future.set_result(vectors[start : start + len(batch)])
                start += len(batch)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.model.encode(
            texts, batch_size=self.encoder.batch_size, normalize_embeddings=True, convert_to_numpy=True
        ).astype(np.float32)


def _relevance(data_path: str | None, documents) -> dict[str, set[str]]:
    """Query text -> ids of indexed documents judged relevant to it, matched by passage text (ids may differ)."""
    if not data_path:
        return {}
    from ragtune.data import load_pairs, normalise

    data = load_pairs(data_path)
    by_text: dict[str, set[str]] = {}
    for d in documents:
        by_text.setdefault(normalise(d.text), set()).add(d.id)
    return {
        normalise(data.queries[q]): {i for p in rel for i in by_text.get(normalise(data.corpus[p]), ())}
        for q, rel in data.qrels.items()
    }


def create_app(
    index_dir: str | Path,
    base_model: str | None = None,
    data: str | None = None,
    api_key: str | None = None,
    max_inputs: int = 256,
    max_chars: int = 8192,
    max_k: int = 100,
    batch_wait_ms: float = 5.0,
    cache_dir: str | Path | None = None,
):
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse
    from pydantic import BaseModel, Field

    index = Index.load(index_dir)
    tuned = index.query_encoder(show_progress=False)
    systems: dict[str, tuple[Batcher, Index]] = {"tuned": (Batcher(tuned, batch_wait_ms), index)}
    if base_model:
        base = Encoder(base_model, cache_dir, index.meta["max_seq_length"], show_progress=False)
        # The base model's side of the page searches the same documents, encoded once (cached on disk).
        base_vectors = flat_index(base.encode([d.text for d in index.documents], desc="encoding for the base model"))
        systems["base"] = (Batcher(base, batch_wait_ms), Index(index.folder, index.meta, base_vectors, index.documents))
    for batcher, _ in systems.values():
        _ = batcher.encoder.model  # load now: /health answers only once the first request will be fast
    relevant = _relevance(data, index.documents)
    key = api_key if api_key is not None else os.environ.get("RAGTUNE_API_KEY")
    app = FastAPI(title="ragtune", version="1")
    app.state.systems = systems

    def authorised(request: Request) -> None:
        if key and request.headers.get("authorization", "") != f"Bearer {key}":
            raise HTTPException(401, "missing or wrong API key (send 'Authorization: Bearer <key>')")

    def check_inputs(texts: list[str]) -> None:
        if not texts:
            raise HTTPException(422, "input is empty")
        if len(texts) > max_inputs:
            raise HTTPException(413, f"{len(texts)} inputs in one request; the limit is {max_inputs}")
        for i, t in enumerate(texts):
            if len(t) > max_chars:
                raise HTTPException(413, f"input {i} has {len(t)} characters; the limit is {max_chars}")

    class EmbeddingRequest(BaseModel):
        input: str | list[str]
        model: str | None = None
        encoding_format: str = "float"
        user: str | None = None
        dimensions: int | None = None

    class SearchRequest(BaseModel):
        query: str
        k: int = Field(10, ge=1, le=max_k)
        filters: dict[str, Any] | None = None
        model: str = "tuned"

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok",
            "documents": len(index.documents),
            "model": index.meta["model"],
            "systems": list(systems),
        }

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "ragtune"} for name in systems]}

    @app.post("/v1/embeddings", dependencies=[Depends(authorised)])
    async def embeddings(body: EmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        check_inputs(texts)
        if body.encoding_format not in ("float", "base64"):
            raise HTTPException(422, "encoding_format must be 'float' or 'base64'")
        name = body.model if body.model in systems else "tuned"
        batcher = systems[name][0]
        vectors = await batcher.encode(texts)
        if body.dimensions:
            vectors = vectors[:, : body.dimensions]
        tokenizer = batcher.encoder.model.tokenizer
        limit = batcher.encoder.model.max_seq_length
        tokens = sum(min(limit, len(ids)) for ids in tokenizer(texts)["input_ids"])

        def encode(v: np.ndarray):
            return (
                base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()
            )

        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "model": body.model or name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/search", dependencies=[Depends(authorised)])
    async def search(body: SearchRequest) -> dict:
        check_inputs([body.query])
        if body.model not in systems:
            raise HTTPException(422, f"model must be one of {list(systems)}")
        batcher, idx = systems[body.model]
        vectors = await batcher.encode([body.query])
        hits = idx.search(vectors, body.k, body.filters)[0]
        marked = relevant.get(normalise(body.query), set())
        return {
            "query": body.query,
            "model": body.model,
            "results": [{**h.__dict__, "relevant": h.id in marked} for h in hits],
            "relevance_known": bool(marked),
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text().replace("__SYSTEMS__", json.dumps(list(systems)))

    return app


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1") and not (
        options.get("api_key") or os.environ.get("RAGTUNE_API_KEY")
    ):
        print(f"warning: serving on {host} without an API key (set RAGTUNE_API_KEY)")
    try:
        app = create_app(index_dir, **options)
    except RagtuneError:
        raise
    uvicorn.run(app, host=host, port=port, log_level="warning")
