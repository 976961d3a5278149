"""Split long documents into overlapping passages that fit the model, since a RAG corpus is chunks.

Windows are counted in the model's own tokens (a model truncates whatever lies past its max_seq_length, so a chunk
longer than that is partly invisible to it) and cut at token boundaries through the tokenizer's character offsets,
so every chunk is an exact slice of its document. A window's end is moved back to the last sentence end inside it
when one lies in its second half, so chunks rarely stop mid-sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.data import Document, load_documents
from ragtune.errors import RagtuneError
from ragtune.outputs import atomic_open
from ragtune.sentences import sentence_ends


@dataclass
class Chunk:
    id: str
    text: str
    doc_id: str
    chunk: int
    metadata: dict = field(default_factory=dict)


def chunk_document(doc: Document, tokenizer, max_tokens: int = 256, overlap: int = 32) -> list[Chunk]:
    """Windows of at most `max_tokens` tokens as the model sees them, its special tokens ([CLS], [SEP]) included:
    a 256-token chunk for a 256-token model would otherwise lose its last words to truncation."""
    max_tokens -= tokenizer.num_special_tokens_to_add(pair=False)
    if overlap >= max_tokens:
        raise RagtuneError(
            f"overlap ({overlap}) must be smaller than max_tokens less the special tokens ({max_tokens})"
        )
    offsets = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= max_tokens:
        return [Chunk(f"{doc.id}#0", doc.text.strip(), doc.id, 0, dict(doc.metadata))]
    chunks = []
    start = 0
    ends = sentence_ends(doc.text)
    while start < len(offsets):
        end = min(start + max_tokens, len(offsets))
        if end < len(offsets):
            end = _sentence_end(ends, offsets, start, end)
        text = doc.text[offsets[start][0] : offsets[end - 1][1]].strip()
        # A slice can tokenize a little longer than the tokens it was cut from (a word's pieces re-merge at the
        # edges): shorten until the model sees all of it.
        while end - start > 1 and len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_tokens:
            end -= 1
            text = doc.text[offsets[start][0] : offsets[end - 1][1]].strip()
        chunks.append(Chunk(f"{doc.id}#{len(chunks)}", text, doc.id, len(chunks), dict(doc.metadata)))
        if end >= len(offsets):
            break
        start = _word_start(doc.text, offsets, max(end - overlap, start + 1), start + 1)
    return chunks


def _word_start(text: str, offsets: list, i: int, lowest: int) -> int:
    """Move i back to the first token of its word, so no chunk starts inside a word."""
    while i > lowest and offsets[i][0] == offsets[i - 1][1] and text[offsets[i][0] - 1].isalnum():
        i -= 1
    return i


def _sentence_end(ends: list[int], offsets: list, start: int, end: int) -> int:
    """The token after the last sentence end in the window's second half, or `end` if there is none."""
    half = start + (end - start) // 2
    low, high = offsets[half][0], offsets[end - 1][1]
    inside = [e for e in ends if low < e <= high]
    if not inside:
        return end
    for i in range(end - 1, half, -1):
        if offsets[i][1] <= inside[-1]:
            return i + 1
    return end


def chunk_corpus(
    corpus: str | Path,
    out: Path,
    model: str = "default",
    max_tokens: int = 256,
    overlap: int = 32,
    text_column: str = "text",
    id_column: str = "id",
) -> dict:
    """Chunk every document of `corpus` into a JSONL of passages (id, text, doc_id, chunk, metadata columns)."""
    from transformers import AutoTokenizer

    from ragtune.embeddings import resolve_model

    documents = load_documents(corpus, text_column, id_column)
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=Path(path).is_dir())
    tokenizer.model_max_length = 1 << 30  # whole documents are tokenized on purpose, to be cut here
    n_chunks = longest = 0
    with atomic_open(out) as f:
        for doc in documents:
            for c in chunk_document(doc, tokenizer, max_tokens, overlap):
                record = {**c.metadata, "id": c.id, "text": c.text, "doc_id": c.doc_id, "chunk": c.chunk}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                n_chunks += 1
                longest = max(longest, len(tokenizer(c.text)["input_ids"]))
    return {"documents": len(documents), "chunks": n_chunks, "longest_chunk_tokens": longest, "out": str(out)}
