"""The `llm` synthesis method: N questions per passage from any OpenAI-compatible chat-completions endpoint.

Works with Ollama, vLLM, llama.cpp's server and OpenAI alike: base URL + model name, key from an environment
variable. Generation is resumable: every passage's answer is appended to `<out>.raw.jsonl` as soon as it arrives, and
a re-run asks only for passages not in it. Filtering runs afterwards over the raw answers, so changing a filter never
costs a new generation: preambles and numbering are stripped, duplicates dropped, questions that copy a long span of
their passage dropped, and (round trip) a question is kept only if the base model ranks its passage in the top k.
Given questions real users wrote (`style_examples`), each prompt shows a few of them, Promptagator-style, and a
question that echoes one of them is dropped.

Requests go through the `openai` client, whose retry policy (429 with Retry-After, 5xx, dropped connections,
exponential backoff) is the one OpenAI-compatible servers expect; the resumable log is ragtune's own.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.data import Document
from ragtune.errors import RagtuneError
from ragtune.progress import track
from ragtune.synth import Pair

DEFAULT_PROMPT = """Write {n} different questions that a user of a search engine might ask and that the passage \
below answers. Each question must make sense on its own, without the passage. Answer with a JSON list of strings.

Passage:
{passage}"""

# Promptagator (Dai et al., 2022): a few questions real users wrote, shown before each passage, make the model write
# the way users do (their length, wording, spelling) rather than the way the passage is written.
STYLE_PROMPT = """Here are questions that users of this search engine really wrote, about other passages:
{examples}

Write {n} different questions that such a user might ask and that the passage below answers. Write them the way \
these users write (their wording, length, spelling, abbreviations), not the way the passage is written. Each \
question must make sense on its own, without the passage. Answer with a JSON list of strings.

Passage:
{passage}"""

_NUMBERING = re.compile(r"^\s*(?:[-*•]|\(?\d{1,2}[.):]|\(?[a-zA-Z][.)]|Q\d*[.:)]|Question\s*\d*[.:)])\s*")
_PREAMBLE = re.compile(r"^(sure|okay|ok|certainly|of course|here (are|is)|below (are|is))\b", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"\{(examples|n|passage)\}")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.){8,})"')


@dataclass
class LLMSettings:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    questions: int = 3
    prompt: str = DEFAULT_PROMPT
    concurrency: int = 4
    retries: int = 5
    timeout: float = 120.0
    temperature: float = 0.7
    max_copied_words: int = 10  # drop a question sharing this many consecutive words with its passage
    round_trip_k: int = 20  # keep a question only if its passage ranks in the base model's top k (0: off)
    round_trip_model: str = "default"
    style_examples: list[str] = field(default_factory=list)  # questions users wrote; `{examples}` shows a few
    examples_per_prompt: int = 8
    seed: int = 42  # which examples each passage's prompt shows


@dataclass
class LLMStats:
    passages: int = 0
    requested: int = 0
    resumed: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # doc id -> last error
    retries: int = 0
    removed: Counter = field(default_factory=Counter)
    pairs: int = 0
    style_examples: int = 0  # user questions the prompts drew their examples from

    def to_dict(self) -> dict:
        return {
            "passages": self.passages,
            "requested": self.requested,
            "resumed_from_earlier_run": self.resumed,
            "failed": len(self.failed),
            "failed_examples": dict(list(self.failed.items())[:5]),
            "retries": self.retries,
            "questions_removed": dict(self.removed),
            "pairs": self.pairs,
            "style_examples": self.style_examples,
        }


def load_prompt(path: str | Path | None, with_examples: bool = False) -> str:
    """The prompt template: the file at `path`, else the default (the style prompt when user questions are given)."""
    if path is None:
        return STYLE_PROMPT if with_examples else DEFAULT_PROMPT
    text = Path(path).read_text(encoding="utf-8")
    if "{passage}" not in text:
        raise RagtuneError(f"{path}: the prompt template needs a {{passage}} placeholder (and may use {{n}})")
    if with_examples and "{examples}" not in text:
        raise RagtuneError(f"{path}: the prompt template has no {{examples}} placeholder for the users' questions")
    if not with_examples and "{examples}" in text:
        raise RagtuneError(f"{path}: the prompt template shows {{examples}} but no user questions were given")
    return text


def build_prompt(doc: Document, settings: LLMSettings) -> str:
    """The prompt for one passage. Its style examples are a sample seeded by the passage id, so a resumed run asks
    the same thing, and different passages show different users' questions (more varied questions back)."""
    shown = random.Random(f"{settings.seed}:{doc.id}").sample(
        settings.style_examples, min(settings.examples_per_prompt, len(settings.style_examples))
    )
    values = {"examples": "\n".join(f"- {q}" for q in shown), "n": str(settings.questions), "passage": doc.text}
    # One pass, not str.format: a template may show a JSON example with braces of its own, and a passage or a
    # user's question that contains "{n}" must stay as written.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], settings.prompt)


def parse_questions(content: str) -> tuple[list[str], bool]:
    """Questions from a model's answer: a JSON list (or {"questions": [...]}), else one per line.

    Returns (questions, whether the answer was valid JSON). Malformed JSON (cut off, trailing text) falls back to
    its quoted strings, then to lines, so one sloppy answer costs nothing.
    """
    text = content.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start >= 0:
        try:
            parsed = json.loads(text[start:])
            if isinstance(parsed, dict):
                parsed = next((v for v in parsed.values() if isinstance(v, list)), [])
            if isinstance(parsed, list):
                return [_clean(str(q)) for q in parsed if _clean(str(q))], True
        except json.JSONDecodeError:
            quoted = [_clean(m.group(1)) for m in _QUOTED.finditer(text[start:])]
            quoted = [q for q in quoted if q and q.lower() not in ("questions", "question")]
            if quoted:
                return quoted, False
    lines = [_clean(line) for line in text.splitlines()]
    return [q for q in lines if q and not _PREAMBLE.match(q) and not q.endswith(":")], False


def _clean(question: str) -> str:
    q = _NUMBERING.sub("", question.strip()).strip().strip('",').strip()
    return q if len(q.split()) >= 3 else ""


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"\w+", text.lower()))


def copies_passage(question: str, passage: str, words: int) -> bool:
    """True if the question contains `words` consecutive words of the passage (a lifted sentence, not a query)."""
    q, p = _words(question), _words(passage)
    if len(q) < words:
        return False
    spans = {tuple(p[i : i + words]) for i in range(len(p) - words + 1)}
    return any(tuple(q[i : i + words]) in spans for i in range(len(q) - words + 1))


class _Client:
    """The `openai` client does the retrying (429 honouring Retry-After, 408/409, 5xx, dropped connections, with
    exponential backoff and jitter); an httpx hook counts the attempts so the stats can say how many were retries."""

    def __init__(self, settings: LLMSettings, stats: LLMStats):
        try:
            import httpx
            import openai
        except ImportError as err:
            raise RagtuneError("synth --method llm needs the llm extra: pip install 'ragtune[llm]'") from err

        self.settings, self.stats, self.lock = settings, stats, threading.Lock()
        self.attempts = 0
        http = httpx.Client(timeout=settings.timeout, event_hooks={"request": [self._count]})
        self.client = openai.OpenAI(
            base_url=settings.base_url.rstrip("/"),
            api_key=os.environ.get(settings.api_key_env) or "unused",  # local servers take any key
            max_retries=settings.retries,
            timeout=settings.timeout,
            http_client=http,
        )

    def _count(self, request) -> None:
        with self.lock:
            self.attempts += 1

    def ask(self, content: str) -> str:
        import openai

        s = self.settings
        try:
            reply = self.client.chat.completions.create(
                model=s.model, temperature=s.temperature, messages=[{"role": "user", "content": content}]
            )
        except openai.APIStatusError as err:
            retryable = err.status_code in (408, 409, 429) or err.status_code >= 500
            if not retryable:
                message = f"{s.base_url}/chat/completions refused the request: HTTP {err.status_code}"
                raise RagtuneError(message) from err
            raise RuntimeError(f"HTTP {err.status_code}: {str(err)[:200]}") from err
        except openai.APIConnectionError as err:
            raise RuntimeError(f"connection: {err}") from err
        try:
            return reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as err:
            raise RagtuneError(f"{s.base_url}: not a chat-completions answer ({err})") from err

    def retries(self, asked: int) -> int:
        return self.attempts - asked


def generate(documents: list[Document], settings: LLMSettings, raw_path: Path, progress: bool = True) -> LLMStats:
    """Ask for questions for every passage not yet in `raw_path`, appending each answer as it arrives."""
    if bool(settings.style_examples) != ("{examples}" in settings.prompt):
        raise RagtuneError("llm: style examples need a prompt with {examples}, and {examples} needs style examples")
    stats = LLMStats(passages=len(documents), style_examples=len(settings.style_examples))
    done = set()
    if raw_path.exists():
        with raw_path.open(encoding="utf-8") as f:
            done = {json.loads(line)["doc_id"] for line in f if line.strip()}
    todo = [d for d in documents if d.id not in done]
    stats.resumed = len(documents) - len(todo)
    client = _Client(settings, stats)
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    write_lock = threading.Lock()
    with raw_path.open("a", encoding="utf-8") as out, ThreadPoolExecutor(settings.concurrency) as pool:
        futures = {pool.submit(client.ask, build_prompt(d, settings)): d for d in todo}
        stats.requested = len(futures)
        finished = as_completed(futures)
        for future in track(finished, "asking the LLM", len(futures)) if progress else finished:
            doc = futures[future]
            try:
                content = future.result()
            except RuntimeError as err:
                stats.failed[doc.id] = str(err)
                continue
            with write_lock:
                out.write(json.dumps({"doc_id": doc.id, "content": content}, ensure_ascii=False) + "\n")
                out.flush()
    stats.retries = client.retries(len(futures))
    return stats


def filter_questions(documents: list[Document], raw_path: Path, settings: LLMSettings, stats: LLMStats) -> list[Pair]:
    """Parse every raw answer and keep the questions that pass each filter; counts per filter go to `stats`."""
    position = {d.id: i for i, d in enumerate(documents)}
    with raw_path.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    # Answers are appended as they arrive, so the file's order varies run to run; a question asked for two passages
    # must be kept for the same one every time, hence corpus order (records of passages no longer in it are skipped).
    records = sorted((r for r in records if r["doc_id"] in position), key=lambda r: position[r["doc_id"]])
    candidates: list[Pair] = []
    seen: set[str] = set()
    # A user's question echoed back would train on it; if it is also an evaluation question, that is leakage.
    examples = {_words(q) for q in settings.style_examples}
    for record in records:
        doc = documents[position[record["doc_id"]]]
        questions, valid_json = parse_questions(record["content"])
        if not valid_json:
            stats.removed["answers_not_valid_json_(parsed_anyway)"] += 1
        if not questions:
            stats.removed["answers_without_a_question"] += 1
        for q in questions:
            key = " ".join(q.lower().split())
            if key in seen:
                stats.removed["duplicate"] += 1
            elif _words(q) in examples:
                stats.removed["copies_a_style_example"] += 1
            elif copies_passage(q, doc.text, settings.max_copied_words):
                stats.removed["copies_the_passage"] += 1
            else:
                seen.add(key)
                candidates.append(Pair(q, doc.text, "llm", doc.id))
    if settings.round_trip_k and candidates:
        candidates = _round_trip(candidates, documents, settings, stats)
    stats.pairs = len(candidates)
    return candidates


def _round_trip(pairs: list[Pair], documents: list[Document], settings: LLMSettings, stats: LLMStats) -> list[Pair]:
    """Keep a question only if the base model finds its own passage in the top k of the whole corpus."""
    from ragtune.embeddings import QUERY, Encoder
    from ragtune.faiss_search import flat_index, search_chunked

    encoder = Encoder(settings.round_trip_model, None)
    corpus = encoder.encode([d.text for d in documents], desc="round trip: encoding passages")
    questions = encoder.encode([p.query for p in pairs], desc="round trip: encoding questions", kind=QUERY)
    _, found = search_chunked(flat_index(corpus), questions, settings.round_trip_k)
    position = {d.id: i for i, d in enumerate(documents)}
    kept = [p for p, row in zip(pairs, found, strict=True) if position[p.doc_id] in set(row.tolist())]
    stats.removed[f"round_trip_not_in_top_{settings.round_trip_k}"] += len(pairs) - len(kept)
    return kept


def synth_llm(
    corpus: str | Path, out: Path, settings: LLMSettings, text_column: str = "text", id_column: str = "id"
) -> tuple[LLMStats, Path]:
    """Questions for every passage of `corpus` from the endpoint, filtered, written to `out` as pairs. The raw
    answers are kept beside it (`<out>.raw.jsonl`) and a re-run asks only for the passages still missing.
    Returns the stats and the raw file's path."""
    from ragtune.data import load_documents
    from ragtune.outputs import check_file_output
    from ragtune.synth import write_pairs

    check_file_output(out, [corpus])
    documents = load_documents(corpus, text_column, id_column)
    raw = out.with_name(out.name + ".raw.jsonl")
    stats = generate(documents, settings, raw)
    write_pairs(filter_questions(documents, raw, settings, stats), out)
    return stats, raw
