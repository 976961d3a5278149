"""The llm synthesis method against a local fake OpenAI-compatible server: retries, resume, parsing, filters."""

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import write_jsonl
from typer.testing import CliRunner

from ragtune.cli import app
from ragtune.data import Document, load_documents
from ragtune.errors import RagtuneError
from ragtune.llm import (
    LLMSettings,
    LLMStats,
    build_prompt,
    filter_questions,
    generate,
    load_prompt,
    parse_questions,
)

PASSAGES = {
    "stones": "Kidney stones form when urine holds more calcium oxalate than it can dissolve. Drinking plenty of "
    "water and cutting salt lowers the risk, and most small stones pass within a few weeks. [rate]",
    "gout": "Gout is an arthritis caused by uric acid crystals in a joint, often the big toe. Attacks are treated "
    "with anti-inflammatory drugs and prevented with allopurinol. [flaky]",
    "asthma": "Asthma narrows the airways of the lungs, causing wheezing and shortness of breath. Inhaled "
    "corticosteroids control it and a rescue inhaler relieves sudden attacks. [preamble]",
    "migraine": "A migraine is a throbbing headache, often on one side, with nausea and sensitivity to light. "
    "Triptans stop an attack and beta blockers can prevent them. [malformed]",
    "glaucoma": "Glaucoma damages the optic nerve, usually through raised pressure inside the eye, and slowly "
    "narrows the field of vision. Eye drops lower the pressure. [copy]",
    "anemia": "Iron deficiency anemia leaves the blood short of hemoglobin, so people feel tired and look pale. "
    "Iron supplements and iron-rich food restore it. [dup] [offtopic]",
}
ANSWERS = {
    "[rate]": '["What makes kidney stones form?", "How can I lower my risk of kidney stones?"]',
    "[flaky]": '{"questions": ["What causes gout attacks in the big toe?", "Which drug prevents gout?"]}',
    "[preamble]": "Sure! Here are 3 questions:\n1. What causes wheezing in asthma?\n2) How is asthma controlled "
    "long term?\n- What relieves a sudden asthma attack?",
    "[malformed]": '```json\n["What are the symptoms of a migraine?", "Which drugs stop a migraine attack?"',
    "[copy]": '["What damages the optic nerve in glaucoma?", "Glaucoma damages the optic nerve, usually through '
    'raised pressure inside the eye?"]',
    "[dup]": '["Why does iron deficiency anemia make you tired?", "why does iron  deficiency anemia make you '
    'tired?", "What makes kidney stones form?", "How do triptans stop a migraine headache attack?"]',
}
EXPECTED = {
    "What makes kidney stones form?",
    "How can I lower my risk of kidney stones?",
    "What causes gout attacks in the big toe?",
    "Which drug prevents gout?",
    "What causes wheezing in asthma?",
    "How is asthma controlled long term?",
    "What relieves a sudden asthma attack?",
    "What are the symptoms of a migraine?",
    "Which drugs stop a migraine attack?",
    "What damages the optic nerve in glaucoma?",
    "Why does iron deficiency anemia make you tired?",
}


class FakeLLM:
    """Speaks POST /v1/chat/completions; misbehaves on purpose according to tags in the passage."""

    def __init__(self, key="secret"):
        self.requests = Counter()
        self.prompts: list[str] = []
        self.down: set[str] = set()  # tags answered with 500 until cleared
        self.key = key
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"]
                fake.prompts.append(prompt)
                tag = next((t for t in ANSWERS if t in prompt), None)
                fake.requests[tag] += 1
                n = fake.requests[tag]
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": "not found"})
                if self.headers.get("Authorization") != f"Bearer {fake.key}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                if tag in fake.down:
                    return self._send(500, {"error": "overloaded"})
                if tag == "[rate]" and n == 1:
                    return self._send(429, {"error": "slow down"}, {"Retry-After": "0"})
                if tag == "[flaky]" and n <= 2:
                    return self._send(500, {"error": "boom"})
                content = ANSWERS[tag]
                self._send(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake_llm(monkeypatch):
    monkeypatch.setenv("FAKE_LLM_KEY", "secret")
    server = FakeLLM()
    yield server
    server.server.shutdown()


def _docs():
    return [Document(k, v) for k, v in PASSAGES.items()]


def _settings(url, **kw):
    return LLMSettings(**{"base_url": url, "model": "fake", "api_key_env": "FAKE_LLM_KEY", "round_trip_k": 1, **kw})


def test_a_question_asked_twice_stays_with_the_first_passage_whatever_order_the_answers_arrived(tmp_path):
    """Answers are appended as they arrive; the kidney question also comes back for the anemia passage."""
    tag = {doc_id: text.split("[")[1].split("]")[0] for doc_id, text in PASSAGES.items()}
    raw = tmp_path / "pairs.raw.jsonl"
    settings = _settings("http://unused", round_trip_k=0)
    for order in (list(PASSAGES), list(PASSAGES)[::-1]):
        raw.write_text("".join(json.dumps({"doc_id": d, "content": ANSWERS[f"[{tag[d]}]"]}) + "\n" for d in order))
        stats = LLMStats()
        pairs = filter_questions(_docs(), raw, settings, stats)
        owner = {p.query: p.doc_id for p in pairs}
        assert owner["What makes kidney stones form?"] == "stones" and stats.removed["duplicate"] == 2


def test_retries_parsing_and_every_filter_end_to_end(fake_llm, tmp_path):
    settings = _settings(fake_llm.url, retries=3)
    raw = tmp_path / "pairs.raw.jsonl"
    stats = generate(_docs(), settings, raw, progress=False)
    assert not stats.failed and stats.retries == 3  # one 429 + two 500s, each retried
    pairs = filter_questions(_docs(), raw, settings, stats)
    assert {p.query for p in pairs} == EXPECTED
    assert all(p.method == "llm" and p.passage == PASSAGES[p.doc_id] for p in pairs)
    removed = stats.removed
    assert removed["duplicate"] == 2  # the re-cased copy and the other passage's question
    assert removed["copies_the_passage"] == 1
    assert removed["round_trip_not_in_top_1"] == 1  # anemia's migraine question finds the migraine passage
    assert removed["answers_not_valid_json_(parsed_anyway)"] == 2  # the preamble list and the cut-off JSON


def test_resume_asks_only_for_passages_without_an_answer(fake_llm, tmp_path):
    fake_llm.down = {"[preamble]", "[copy]"}
    settings = _settings(fake_llm.url, retries=2, round_trip_k=0)  # enough for [flaky], never for down ones
    raw = tmp_path / "pairs.raw.jsonl"
    first = generate(_docs(), settings, raw, progress=False)
    assert set(first.failed) == {"asthma", "glaucoma"} and "HTTP 500" in first.failed["asthma"]
    assert len(raw.read_text().splitlines()) == 4
    fake_llm.down = set()
    before = fake_llm.requests.copy()
    second = generate(_docs(), settings, raw, progress=False)
    asked = fake_llm.requests - before
    assert set(asked) == {"[preamble]", "[copy]"} and second.resumed == 4 and not second.failed
    pairs = filter_questions(_docs(), raw, settings, second)
    assert {p.doc_id for p in pairs} == set(PASSAGES)


def test_cli_runs_the_llm_method_and_a_wrong_key_is_a_clear_error(fake_llm, tmp_path, monkeypatch):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": k, "text": v} for k, v in PASSAGES.items()])
    prompt = tmp_path / "prompt.txt"
    prompt.write_text('Ask {n} questions. Reply like {"questions": ["..."]}.\nPassage:\n{passage}')
    fake_llm.requests.update({"[rate]": 1, "[flaky]": 2})  # retries are tested above; keep this one quick
    out = tmp_path / "llm_pairs.jsonl"
    args = ["synth", str(corpus), "--method", "llm", "--base-url", fake_llm.url, "--llm-model", "fake"]
    args += ["--api-key-env", "FAKE_LLM_KEY", "--round-trip-k", "1", "--out", str(out), "--prompt", str(prompt)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["query"] for r in rows} == EXPECTED
    assert (
        fake_llm.prompts
        and all(p.startswith('Ask 3 questions. Reply like {"questions"') for p in fake_llm.prompts)
        and {r["method"] for r in rows} == {"llm"}
    )
    monkeypatch.setenv("FAKE_LLM_KEY", "wrong")
    with pytest.raises(RagtuneError, match="401"):
        generate(load_documents(corpus), _settings(fake_llm.url), tmp_path / "other.raw.jsonl", progress=False)


@pytest.mark.parametrize(
    "content, expected, valid",
    [
        ('["What is A about?", "Why does B happen?"]', ["What is A about?", "Why does B happen?"], True),
        ('{"questions": ["What is A about?"]}', ["What is A about?"], True),
        ("Here are two questions:\n1. What is A about?\n2. Why does B happen?", None, False),
        ('["What is A about?", "Why does B happen?', ["What is A about?"], False),
        ("Q1: What is A about?\nQ2) Why does B happen?", ["What is A about?", "Why does B happen?"], False),
    ],
)
def test_parse_questions(content, expected, valid):
    questions, was_json = parse_questions(content)
    assert questions == (expected or ["What is A about?", "Why does B happen?"]) and was_json == valid


def _users(folder):
    """A BEIR folder of user questions: dev ones to show, test ones that must never reach a prompt."""
    dev = ["kidney stone pain what to do", "what makes kidney stones form", "gout toe swollen again", "asthma at night"]
    dev += ["migrane meds dont work", "pale and tired all the time"]
    test = ["secret test question one", "secret test question two"]
    folder.mkdir()
    rows = [{"_id": f"d{i}", "text": t} for i, t in enumerate(dev)] + [
        {"_id": f"t{i}", "text": t} for i, t in enumerate(test)
    ]
    write_jsonl(folder / "queries.jsonl", rows)
    write_jsonl(folder / "corpus.jsonl", [{"_id": "x", "text": "unused"}])
    (folder / "qrels").mkdir()
    for split, ids in (("dev", range(len(dev))), ("test", range(len(test)))):
        lines = ["query-id\tcorpus-id\tscore", *(f"{split[0]}{i}\tx\t1" for i in ids)]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return dev, test


def test_prompts_show_a_few_of_the_users_questions_and_an_echoed_one_is_dropped(fake_llm, tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": k, "text": v} for k, v in PASSAGES.items()])
    dev, test = _users(tmp_path / "users")
    fake_llm.requests.update({"[rate]": 1, "[flaky]": 2})
    out = tmp_path / "styled.jsonl"
    args = ["synth", str(corpus), "--method", "llm", "--base-url", fake_llm.url, "--llm-model", "fake"]
    args += ["--api-key-env", "FAKE_LLM_KEY", "--round-trip-k", "0", "--out", str(out)]
    args += ["--style-queries", str(tmp_path / "users"), "--style-split", "dev", "--style-examples", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(fake_llm.prompts) == len(PASSAGES)
    shown_sets = set()
    for prompt in fake_llm.prompts:
        assert prompt.startswith("Here are questions that users of this search engine really wrote")
        shown = [line[2:] for line in prompt.split("\n\n")[0].splitlines()[1:]]
        assert len(shown) == 3 and set(shown) <= set(dev) and not any(t in prompt for t in test)
        shown_sets.add(frozenset(shown))
    assert len(shown_sets) > 1  # each passage its own sample, not one fixed set
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # "What makes kidney stones form?" echoes a user's question (case and punctuation aside): it is dropped. (The
    # round trip is off: the anemia passage keeps its migraine question.)
    expected = EXPECTED - {"What makes kidney stones form?"} | {"How do triptans stop a migraine headache attack?"}
    assert {r["query"] for r in rows} == expected
    stats = json.loads(result.output[result.output.index("{\n") : result.output.rindex("}") + 1])
    # Twice: the kidney passage's answer and the anemia passage's both hold it.
    assert stats["questions_removed"]["copies_a_style_example"] == 2 and stats["style_examples"] == len(dev)

    # The same passage gets the same examples on a resumed run; a different seed shows others.
    settings = _settings("http://unused", style_examples=dev, examples_per_prompt=3, prompt=load_prompt(None, True))
    doc = _docs()[0]
    assert build_prompt(doc, settings) == build_prompt(doc, settings)
    others = {build_prompt(doc, _settings("x", style_examples=dev, prompt=settings.prompt, seed=s)) for s in range(5)}
    assert len(others) > 1 and all(doc.text in p for p in others)


def test_style_prompt_errors(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("Ask {n} questions about:\n{passage}")
    styled = tmp_path / "styled.txt"
    styled.write_text("Users ask like this:\n{examples}\nAsk {n} questions about:\n{passage}")
    assert load_prompt(styled, with_examples=True).startswith("Users ask")
    with pytest.raises(RagtuneError, match="no {examples} placeholder"):
        load_prompt(plain, with_examples=True)
    with pytest.raises(RagtuneError, match="no user questions were given"):
        load_prompt(styled)
    unused = _settings("http://unused", style_examples=["how do i"])  # the default prompt shows no examples
    with pytest.raises(RagtuneError, match="style examples need a prompt with"):
        generate(_docs(), unused, tmp_path / "raw.jsonl", progress=False)
    # A passage holding a placeholder's name stays as written.
    settings = _settings("x", prompt=load_prompt(plain))
    assert build_prompt(Document("d", "set {n} and {examples} apart"), settings).endswith(
        "set {n} and {examples} apart"
    )
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"id": k, "text": v} for k, v in PASSAGES.items()])
    _users(tmp_path / "users")
    args = ["synth", str(corpus), "--method", "ict", "--out", str(tmp_path / "p.jsonl")]
    result = CliRunner().invoke(app, [*args, "--style-queries", str(tmp_path / "users")])
    # (`ragtune`'s entry point turns a RagtuneError into one line and exit status 2: tests/test_cli.py)
    assert isinstance(result.exception, RagtuneError) and "--style-queries is for --method llm" in str(result.exception)
    assert not (tmp_path / "p.jsonl").exists()
