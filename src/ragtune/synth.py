"""Training pairs from a bare corpus, no labelled queries needed.

Offline methods (deterministic for a seed: each document draws from its own generator, seeded by the run seed and
the document id, so adding documents never changes another document's pairs):
- `title`: the document's title (BEIR `title`, a Markdown heading, or a short first line) -> its body.
- `ict`: inverse cloze task (Lee et al., 2019): one sentence is the query, the rest of the passage the positive;
  with probability `ict_keep` the sentence stays in, so the model also learns plain lexical matching.
- `crop`: two random spans of one document are a positive pair (independent cropping, as in Contriever).
The `llm` method lives in `ragtune.llm` (it needs an endpoint). Every pair records its method and document id, so a
report can break results down by method.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ragtune.data import Document, load_documents
from ragtune.errors import RagtuneError
from ragtune.outputs import write_jsonl
from ragtune.sentences import split_sentences

OFFLINE_METHODS = ("title", "ict", "crop")
METHODS = (*OFFLINE_METHODS, "llm")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


@dataclass
class Pair:
    query: str
    passage: str
    method: str
    doc_id: str


@dataclass
class SynthStats:
    documents: int = 0
    pairs: int = 0
    skipped: Counter | None = None  # reason -> documents that gave no pair, so nothing disappears unexplained

    def to_dict(self) -> dict:
        return {"documents": self.documents, "pairs": self.pairs, "skipped": dict(self.skipped or {})}


def doc_rng(seed: int, doc_id: str, method: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\0{method}\0{doc_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def sentences(text: str) -> list[str]:
    return split_sentences(text)


def split_title(doc: Document) -> tuple[str, str] | None:
    """(title, body): a `title` field, else a Markdown heading line, else a short first line followed by more."""
    title = doc.metadata.get("title")
    if isinstance(title, str) and title.strip():
        body = doc.text
        if body.startswith(title.strip()):  # BEIR loading puts the title in front of the text
            body = body[len(title.strip()) :]
        return title.strip(), body.strip()
    lines = doc.text.strip().splitlines()
    if len(lines) < 2:
        return None
    heading = _HEADING.match(lines[0])
    first = heading.group(1) if heading else lines[0].strip()
    if heading or (len(first.split()) <= 20 and not first.endswith((".", ",", ";", ":"))):
        body = "\n".join(lines[1:]).strip()
        return (first, body) if body else None
    return None


def title_pairs(doc: Document, seed: int) -> tuple[list[Pair], str | None]:
    split = split_title(doc)
    if split is None:
        return [], "no title"
    title, body = split
    if len(body.split()) < 5:
        return [], "body too short"
    return [Pair(title, body, "title", doc.id)], None


def ict_pairs(doc: Document, seed: int, keep: float = 0.1, min_words: int = 5) -> tuple[list[Pair], str | None]:
    sents = sentences(doc.text)
    usable = [i for i, s in enumerate(sents) if len(s.split()) >= min_words]
    if len(sents) < 3 or not usable:
        return [], "fewer than 3 sentences"
    rng = doc_rng(seed, doc.id, "ict")
    i = rng.choice(usable)
    rest = sents if rng.random() < keep else sents[:i] + sents[i + 1 :]
    return [Pair(sents[i], " ".join(rest), "ict", doc.id)], None


def crop_pairs(
    doc: Document, seed: int, min_ratio: float = 0.1, max_ratio: float = 0.5, min_words: int = 8
) -> tuple[list[Pair], str | None]:
    words = doc.text.split()
    if len(words) < 2 * min_words:
        return [], f"fewer than {2 * min_words} words"
    rng = doc_rng(seed, doc.id, "crop")

    def span() -> str:
        length = max(min_words, round(len(words) * rng.uniform(min_ratio, max_ratio)))
        start = rng.randrange(0, len(words) - length + 1)
        return " ".join(words[start : start + length])

    first, second = span(), span()
    return [Pair(first, second, "crop", doc.id)], None


_MAKERS = {"title": title_pairs, "ict": ict_pairs, "crop": crop_pairs}


def synthesize(documents: list[Document], methods: list[str], seed: int = 42) -> tuple[list[Pair], SynthStats]:
    """Pairs from every document by each offline method; documents a method cannot use are counted by reason."""
    unknown = [m for m in methods if m not in OFFLINE_METHODS]
    if unknown:
        hint = (
            " (the llm method needs an endpoint: `ragtune synth --method llm --base-url ...`)"
            if "llm" in unknown
            else ""
        )
        raise RagtuneError(f"unknown offline method(s) {unknown}; choose from {', '.join(OFFLINE_METHODS)}{hint}")
    stats = SynthStats(documents=len(documents), skipped=Counter())
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for method in methods:
        for doc in documents:
            made, why = _MAKERS[method](doc, seed)
            source = doc.metadata.get("doc_id")  # a chunk (ragtune chunk) reports the document it came from
            for p in made:
                p.doc_id = str(source) if source is not None else p.doc_id
            if why:
                stats.skipped[f"{method}: {why}"] += 1
            for p in made:
                if p.query.strip() == p.passage.strip():
                    stats.skipped[f"{method}: query equals passage"] += 1
                elif (p.query, p.passage) in seen:
                    stats.skipped[f"{method}: duplicate of a pair made already"] += 1
                else:
                    seen.add((p.query, p.passage))
                    pairs.append(p)
    stats.pairs = len(pairs)
    return pairs, stats


def write_pairs(pairs: list[Pair], out: Path) -> None:
    """JSONL with query, passage, method, doc_id: `ragtune prepare`/`run` read it directly."""
    write_jsonl(out, (asdict(p) for p in pairs))


def synth_offline(
    corpus: str | Path, methods: list[str], out: Path, seed: int = 42, text_column: str = "text", id_column: str = "id"
) -> SynthStats:
    documents = load_documents(corpus, text_column, id_column)
    pairs, stats = synthesize(documents, methods, seed)
    if not pairs:
        raise RagtuneError(f"{corpus}: no document gave a pair ({stats.to_dict()['skipped']})")
    write_pairs(pairs, out)
    return stats
