"""The Python API: `import ragtune` is light, and every example in the public functions' docstrings runs."""

import doctest
import json
import subprocess
import sys

import pytest
from conftest import write_jsonl
from helpers import toy_rows

import ragtune

# The docstring examples build on each other (prepare -> mine -> split -> fine_tune ...), in this order.
EXAMPLES = [
    "load_config",
    "load_pairs",
    "prepare",
    "mine",
    "split",
    "fine_tune",
    "evaluate_models",
    "compare_models",
    "build_index",
    "retrieve",
    "Searcher",
    "index_to_store",
    "run",
]
CORPUS = [
    {"id": "heart", "text": "A heart attack causes chest pain, often when climbing stairs, and shortness of breath."},
    {"id": "kidney", "text": "Kidney stones cause sharp pain in the side and back, and blood in the urine."},
    {"id": "skin", "text": "Eczema makes the skin itchy, dry and red; a rash appears on the elbows and knees."},
]


def test_import_is_light_and_names_the_api():
    code = (
        "import sys, ragtune; print(sorted(m for m in ('torch', 'faiss', 'sentence_transformers') if m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    assert set(EXAMPLES) <= set(ragtune.__all__) <= set(dir(ragtune))
    for name in ragtune.__all__:
        assert getattr(ragtune, name).__doc__, name
    with pytest.raises(AttributeError):
        ragtune.no_such_thing  # noqa: B018


def test_every_public_function_documents_its_arguments_and_returns():
    for name in EXAMPLES:
        doc = getattr(ragtune, name).__doc__
        assert ">>> " in doc, name
        if name != "load_config" and not isinstance(getattr(ragtune, name), type):
            assert "Args:" in doc and "Returns:" in doc, name


@pytest.mark.slow  # a whole run with the real model: 25-50 s of the fast loop's 3 minutes on an AVX2 EPYC
def test_docstring_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_CACHE_DIR", str(tmp_path / "cache"))
    write_jsonl(tmp_path / "pairs.jsonl", toy_rows(40))
    write_jsonl(tmp_path / "corpus.jsonl", CORPUS)
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    ran = []
    for name in EXAMPLES:
        for test in finder.find(getattr(ragtune, name), name, globs={"ragtune": ragtune}):
            if test.examples:
                result = runner.run(test)
                assert result.failed == 0, f"the example of ragtune.{name} failed (output above)"
                ran.append(name)
    assert ran == EXAMPLES
    assert json.loads((tmp_path / "runs" / "example" / "results.json").read_text())["recommended_model"]
