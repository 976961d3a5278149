"""Labelled questions rewritten the way users type them, added to the train split only."""

import pytest
from pydantic import ValidationError

from ragtune.config import TrainConfig
from ragtune.rewrite import rewrite

TEMPLATED = [
    "What are the symptoms of Hantavirus ?",
    "What is (are) Diabetic mastopathy ?",
    "what research (or clinical trials) is being done for Spinal Cord Infarction ?",
    "How many people are affected by carnitine palmitoyltransferase II deficiency ?",
]


def one_edit(a: str, b: str) -> bool:
    """b is a with one letter dropped, doubled, or swapped with the next."""
    cuts = range(len(a))
    return (
        any(a[:i] + a[i + 1 :] == b for i in cuts)
        or any(a[:i] + a[i] + a[i:] == b for i in cuts)
        or any(a[:i] + a[i + 1] + a[i] + a[i + 2 :] == b for i in range(len(a) - 1))
    )


def test_keywords_keep_the_content_words_and_lower_drops_the_template_punctuation():
    assert rewrite(TEMPLATED[0], "keywords") == "symptoms hantavirus"
    assert rewrite(TEMPLATED[1], "keywords") == "diabetic mastopathy"
    assert rewrite(TEMPLATED[3], "keywords") == "people affected carnitine palmitoyltransferase ii deficiency"
    assert rewrite(TEMPLATED[0], "lower") == "what are the symptoms of hantavirus"
    assert rewrite(TEMPLATED[2], "lower") == "what research is being done for spinal cord infarction"
    # Nothing new to train on: None, not a copy of the question.
    assert rewrite("glaucoma symptoms", "lower") is None
    assert rewrite("What is it?", "keywords") is None


def test_a_typo_is_one_letter_off_in_one_long_word_and_the_same_on_every_run():
    for question in TEMPLATED:
        lower, typo = rewrite(question, "lower"), rewrite(question, "typo")
        changed = [(a, b) for a, b in zip(lower.split(" "), typo.split(" "), strict=True) if a != b]
        assert len(changed) == 1, (lower, typo)
        ((word, misspelt),) = changed
        assert len(word) >= 6 and one_edit(word, misspelt), (word, misspelt)
        assert rewrite(question, "typo") == typo
    seeds = {rewrite(TEMPLATED[3], "typo", seed=s) for s in range(20)}
    assert len(seeds) > 3  # the seed chooses the word and the edit
    assert rewrite("what is it", "typo") is None  # no word long enough


def test_rewrites_are_checked_by_the_config_and_the_function():
    assert TrainConfig(query_rewrites=["keywords", "typo"]).query_rewrites == ["keywords", "typo"]
    with pytest.raises(ValidationError):
        TrainConfig(query_rewrites=["paraphrase"])
    with pytest.raises(ValueError, match="unknown rewrite style 'paraphrase'"):
        rewrite("What is glaucoma?", "paraphrase")


def test_training_rows_gain_one_row_per_style_that_changes_the_question():
    import datasets

    from ragtune.train import _with_rewrites

    rows = datasets.Dataset.from_list(
        [
            {"query": TEMPLATED[0], "positive": "Hantavirus causes...", "negative_1": "Glaucoma is..."},
            {"query": "glaucoma", "positive": "Glaucoma is...", "negative_1": "Hantavirus causes..."},
        ]
    )
    assert _with_rewrites(rows, []) is rows
    grown = _with_rewrites(rows, ["keywords", "lower", "typo"]).to_list()
    # Row 1: three new questions; row 2 ("glaucoma"): no style changes it but typo ("glucoma").
    assert len(grown) == 2 + 3 + 1
    added = grown[2:]
    assert [r["query"] for r in added[:3]] == [
        "symptoms hantavirus",
        "what are the symptoms of hantavirus",
        rewrite(TEMPLATED[0], "typo"),
    ]
    assert all(r["positive"] == "Hantavirus causes..." and r["negative_1"] == "Glaucoma is..." for r in added[:3])
    assert added[3]["positive"] == "Glaucoma is..." and one_edit("glaucoma", added[3]["query"])
