"""Serve a ragtune index to a RAG stack: OpenAI-compatible embeddings, search, health, and a comparison page.

`create_app` builds a FastAPI app; `ragtune serve` runs it with uvicorn on 127.0.0.1 unless told otherwise.
Concurrent embedding requests are gathered into one model call (`Batcher`), because a transformer encodes a batch
of 32 texts in little more time than one. User inputs never go through the on-disk embedding cache.
"""

# No `from __future__ import annotations` here: FastAPI reads the request models' annotations at runtime.
import asyncio
import base64
import hmac
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragtune.data import normalise
from ragtune.embeddings import PASSAGE, QUERY, Encoder, TextKind, with_prompt
from ragtune.errors import RagtuneError
from ragtune.faiss_search import flat_index
from ragtune.index import Index
from ragtune.rollout import LiveCollection, is_store_uri

PAGE = Path(__file__).with_name("page.html")


class _Request:
    """One caller's texts, encoded in pieces; its future resolves when every piece is back (or one fails)."""

    def __init__(self, texts: list[str], future: asyncio.Future):
        self.texts, self.future = texts, future
        self.rows: list[np.ndarray | None] = [None] * len(texts)
        self.left = len(texts)

    def done(self, positions: list[int], vectors: np.ndarray) -> None:
        for p, v in zip(positions, vectors, strict=True):
            self.rows[p] = v
        self.left -= len(positions)
        if self.left == 0 and not self.future.done():
            self.future.set_result(np.stack(self.rows))

    def fail(self, err: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(err)


class Batcher:
    """Encodes the texts of concurrent requests together, in model calls of at most `max_batch_tokens` tokens.

    Texts wait for up to `wait_ms` to be gathered (a transformer encodes 32 short texts in little more time than
    one). Smaller requests go first (shortest job first, then arrival order), and a large request is encoded in
    pieces, so a one-line search waits for at most one model call, not for a request of 256 long inputs. A model
    call that fails is retried text by text, so only the request holding the bad text gets the error.
    """

    def __init__(self, encoder: Encoder, wait_ms: float = 5.0, max_batch: int = 64, max_batch_tokens: int = 4096):
        self.encoder, self.wait, self.max_batch = encoder, wait_ms / 1000, max_batch
        self.max_batch_tokens = max_batch_tokens
        self.queue: asyncio.PriorityQueue | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0  # model calls made, for tests and metrics
        self._arrivals = itertools.count()

    def close(self) -> None:
        """Stop the worker once every text queued so far is encoded (it sorts last); call from the event loop."""
        if self.queue is not None:
            self.queue.put_nowait((float("inf"), next(self._arrivals), 0, 0, None))

    def tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text costs the model (special tokens included, truncated as the model truncates)."""
        limit = self.encoder.model.max_seq_length
        return [min(limit, len(ids)) for ids in self.encoder.model.tokenizer(texts, verbose=False)["input_ids"]]

    async def encode(self, texts: list[str], tokens: list[int] | None = None) -> np.ndarray:
        if self.queue is None:
            self.queue = asyncio.PriorityQueue()
            self.worker = asyncio.create_task(self._run())
        tokens = tokens if tokens is not None else self.tokens(texts)
        request = _Request(texts, asyncio.get_running_loop().create_future())
        size, arrival = sum(tokens), next(self._arrivals)
        for position, cost in enumerate(tokens):
            await self.queue.put((size, arrival, position, cost, request))
        return await request.future

    async def _run(self) -> None:
        while True:
            items = [await self.queue.get()]
            if items[0][4] is None:  # closed: nothing was queued before the marker that is not done
                self.queue, self.worker = None, None
                return
            deadline = time.monotonic() + self.wait
            while len(items) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), left))
                except TimeoutError:
                    break
            # The queue hands out the smallest requests' texts first; what exceeds the token budget goes back.
            taken, budget = [], self.max_batch_tokens
            for item in items:
                if item[4] is None or (taken and item[3] > budget):
                    self.queue.put_nowait(item)
                    continue
                taken.append(item)
                budget -= item[3]
            await self._encode_items(taken)

    async def _encode_items(self, items: list) -> None:
        try:
            vectors = await asyncio.to_thread(self._encode, [item[4].texts[item[2]] for item in items])
        except Exception as err:
            if len(items) == 1:
                items[0][4].fail(err)
                return
            for item in items:  # retried alone: only the request holding the bad text fails
                await self._encode_items([item])
            return
        self.batches += 1
        by_request: dict[int, tuple[_Request, list[int], list[int]]] = {}
        for row, item in enumerate(items):
            entry = by_request.setdefault(id(item[4]), (item[4], [], []))
            entry[1].append(item[2])
            entry[2].append(row)
        for request, positions, rows in by_request.values():
            request.done(positions, vectors[rows])

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
    max_request_tokens: int = 16384,
    max_batch_tokens: int = 4096,
    cache_dir: str | Path | None = None,
):
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, Field

    key = api_key if api_key is not None else os.environ.get("RAGTUNE_API_KEY")
    if key is not None and not key.strip():
        raise RagtuneError(
            "the API key (RAGTUNE_API_KEY) is set but empty; set a real key, or unset it to serve without"
        )

    def batcher(encoder: Encoder) -> Batcher:
        return Batcher(encoder, batch_wait_ms, max_batch_tokens=max_batch_tokens)

    live: LiveCollection | None = None
    if is_store_uri(index_dir):
        if base_model or data:
            raise RagtuneError(
                f"{index_dir}: a store serves its serving collection alone; "
                "--base-model and --data need an index folder"
            )
        # The collection and its query model follow promotions and rollbacks, without a restart.
        live = LiveCollection(str(index_dir), wrap=batcher)
        systems: dict[str, tuple[Batcher, Any]] = {"tuned": live.current}
        relevant: dict[str, set[str]] = {}
    else:
        index = Index.load(index_dir)
        systems = {"tuned": (batcher(index.query_encoder(show_progress=False)), index)}
        if base_model:
            base = Encoder(base_model, cache_dir, index.meta["max_seq_length"], show_progress=False)
            # The base model's side of the page searches the same documents, encoded once (cached on disk).
            base_vectors = flat_index(
                base.encode([d.text for d in index.documents], desc="encoding for the base model")
            )
            # Hybrid search on the base side fuses at the index's (the tuned model's) fusion: one BM25, one weight.
            base_index = Index(index.folder, index.meta, base_vectors, index.documents, index.bm25)
            systems["base"] = (batcher(base), base_index)
        relevant = _relevance(data, index.documents)
    for batcher_, _ in systems.values():
        _ = batcher_.encoder.model  # load now: /health answers only once the first request will be fast

    def current() -> dict[str, tuple[Batcher, Any]]:
        """The systems answering now. With a store, the pair the watcher last loaded; the batcher it replaced is
        closed once its queued texts are done (every request holding it queued them before this call could run)."""
        if live is None:
            return systems
        pair = live.current
        if pair is not systems["tuned"]:
            systems["tuned"][0].close()
            systems["tuned"] = pair
        return systems

    def describe_index() -> dict:
        batcher_, idx = current()["tuned"]
        if live is None:
            return {"documents": len(idx.documents), "model": idx.meta["model"], "fusion": idx.meta.get("fusion")}
        meta = idx.meta
        return {"documents": meta["count"], "model": meta["model"], "fusion": meta["fusion"], "collection": idx.name}

    def authorised(request: Request) -> None:
        # Constant-time comparison: the time taken must not tell how much of a guessed key was right.
        given = request.headers.get("authorization", "").encode()
        if key and not hmac.compare_digest(given, f"Bearer {key}".encode()):
            raise HTTPException(401, "missing or wrong API key (send 'Authorization: Bearer <key>')")

    # With a key, the API's own description is behind it too; without one, FastAPI's usual pages.
    docs = {"docs_url": None, "redoc_url": None, "openapi_url": None} if key else {}
    app = FastAPI(title="ragtune", version="1", **docs)
    app.state.systems = systems
    app.state.live = live
    if live is not None:
        live.start()
        app.router.on_shutdown.append(live.stop)

    @app.exception_handler(HTTPException)
    async def openai_error(request: Request, err: HTTPException) -> JSONResponse:
        # OpenAI's error shape, which its clients parse; FastAPI's `detail` kept for other callers.
        kind = "invalid_request_error" if err.status_code < 500 else "server_error"
        body = {"error": {"message": str(err.detail), "type": kind, "code": err.status_code}, "detail": err.detail}
        return JSONResponse(body, status_code=err.status_code, headers=getattr(err, "headers", None))

    def check_inputs(texts: list[str], batcher: Batcher, kind: TextKind) -> tuple[list[str], list[int]]:
        """Each request's texts are checked here, before they join a batch shared with other requests.

        Returns the texts as the model reads them (its prompt for `kind` before each, if it has one) and each one's
        token count: a request's work is bounded in tokens, not only in characters and inputs (256 inputs of 8,192
        characters once held the server for 25 s)."""
        if not texts:
            raise HTTPException(422, "input is empty")
        if len(texts) > max_inputs:
            raise HTTPException(413, f"{len(texts)} inputs in one request; the limit is {max_inputs}")
        for i, t in enumerate(texts):
            if not t.strip():
                raise HTTPException(422, f"input {i} is empty")
            if len(t) > max_chars:
                raise HTTPException(413, f"input {i} has {len(t)} characters; the limit is {max_chars}")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as err:
                message = f"input {i} is not valid text ({err.reason} at character {err.start})"
                raise HTTPException(422, message) from None
        texts = with_prompt(texts, batcher.encoder.prompts, kind)
        tokens = batcher.tokens(texts)
        if sum(tokens) > max_request_tokens:
            message = f"{sum(tokens)} tokens in one request; the limit is {max_request_tokens}: split the request"
            raise HTTPException(413, message)
        return texts, tokens

    def system(name: str | None) -> tuple[Batcher, Any]:
        served = current()
        name = name or "tuned"
        if name not in served:
            raise HTTPException(404, f"the model '{name}' does not exist; served models: {', '.join(served)}")
        return served[name]

    class EmbeddingRequest(BaseModel):
        input: str | list[str]
        model: str | None = None
        encoding_format: str = "float"
        user: str | None = None
        dimensions: int | None = None
        # Not in OpenAI's API (Cohere's and Voyage's name it so): a model trained with a query prompt (E5, BGE)
        # needs to know which texts are queries. Without it, texts are embedded as passages.
        input_type: TextKind = PASSAGE

    class SearchRequest(BaseModel):
        query: str
        k: int = Field(10, ge=1, le=max_k)
        filters: dict[str, Any] | None = None
        model: str = "tuned"
        mode: Literal["dense", "bm25", "hybrid"] = "dense"

    @app.get("/health")
    async def health(request: Request) -> dict:
        try:
            authorised(request)
        except HTTPException:
            return {"status": "ok"}  # a liveness probe needs no key; the details do
        return {"status": "ok", **describe_index(), "systems": list(current())}

    @app.get("/v1/models", dependencies=[Depends(authorised)])
    async def models() -> dict:
        data = [{"id": name, "object": "model", "owned_by": "ragtune"} for name in current()]
        return {"object": "list", "data": data}

    @app.post("/v1/embeddings", dependencies=[Depends(authorised)])
    async def embeddings(body: EmbeddingRequest) -> dict:
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if body.encoding_format not in ("float", "base64"):
            raise HTTPException(422, "encoding_format must be 'float' or 'base64'")
        batcher, idx = system(body.model)
        dim = int(idx.meta["dim"])
        if body.dimensions is not None and not 1 <= body.dimensions <= dim:
            raise HTTPException(422, f"dimensions must be between 1 and {dim}")
        prompted, counts = check_inputs(texts, batcher, body.input_type)
        vectors = await batcher.encode(prompted, counts)
        if body.dimensions is not None and body.dimensions < dim:
            # As OpenAI's API does: the shortened vector is normalised again, so dot products stay cosines.
            vectors = vectors[:, : body.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        tokens = sum(counts)

        def encode(v: np.ndarray):
            return (
                base64.b64encode(v.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else v.tolist()
            )

        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
            "model": body.model or "tuned",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.post("/search", dependencies=[Depends(authorised)])
    async def search(body: SearchRequest) -> dict:
        batcher, idx = system(body.model)
        if body.mode != "dense" and idx.bm25 is None:
            raise HTTPException(422, f"this index has no BM25 side (built by an older ragtune): mode {body.mode}")
        vectors = None
        if body.mode != "bm25":
            vectors = await batcher.encode(*check_inputs([body.query], batcher, QUERY))
        # BM25 scoring and fusion are CPU work: off the event loop, so other requests keep being answered.
        hits = (await asyncio.to_thread(idx.query, [body.query], vectors, body.k, body.filters, body.mode))[0]
        marked = relevant.get(normalise(body.query), set())
        return {
            "query": body.query,
            "model": body.model,
            "mode": body.mode,
            "results": [{**h.__dict__, "relevant": h.id in marked} for h in hits],
            "relevance_known": bool(marked),
            **({"collection": idx.name} if live is not None else {}),
        }

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text().replace("__SYSTEMS__", json.dumps(list(current())))

    return app


def serve(index_dir: str, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        message = f"ragtune serve needs the serve extra ({err.name} is missing): pip install 'ragtune[serve]'"
        raise RagtuneError(message) from None

    if host not in ("127.0.0.1", "localhost", "::1") and not (
        options.get("api_key") or os.environ.get("RAGTUNE_API_KEY")
    ):
        print(f"warning: serving on {host} without an API key (set RAGTUNE_API_KEY)")
    try:
        app = create_app(index_dir, **options)
    except RagtuneError:
        raise
    uvicorn.run(app, host=host, port=port, log_level="warning")
