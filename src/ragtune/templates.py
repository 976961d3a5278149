"""How templated a set of queries is: a warning that a test split's gain may overstate the gain on real questions.

Labelled pairs are often written from a template ("What are the symptoms of X ?"); users' questions are not. A model
tuned on templates is then tested on the same templates, and the report's gain flatters (MedQuAD: +5.6 NDCG@10
points on its own split, +0.4 on MedicationQA's consumer questions). Two statistics, both cheap and explainable:
- `shared_opening`: the share of queries whose first three words open many other queries too (at least
  `max(3, 2%)` of the set): near 1 for templates, low for people writing freely;
- `distinct_bigrams`: distinct word bigrams per bigram, on a fixed-size sample so that sets of different sizes
  compare: low for templates.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass

_WORD = re.compile(r"[a-z0-9]+")
OPENING_WORDS = 3
SAMPLE = 300  # queries the bigram statistic is computed on (fewer if the set is smaller)
TEMPLATED = 0.5  # shared_opening above this: the warning fires


@dataclass
class TemplateStats:
    queries: int
    shared_opening: float
    distinct_bigrams: float
    top_openings: list[tuple[str, int]]

    @property
    def templated(self) -> bool:
        return self.shared_opening >= TEMPLATED

    def to_dict(self) -> dict:
        return {**asdict(self), "templated": self.templated}


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def template_stats(queries: list[str], seed: int = 0) -> TemplateStats:
    """The statistics above for `queries` (the texts)."""
    words = [_words(q) for q in queries]
    openings = Counter(" ".join(w[:OPENING_WORDS]) for w in words if w)
    common = max(3, round(0.02 * len(queries)))
    shared = sum(1 for w in words if w and openings[" ".join(w[:OPENING_WORDS])] >= common)
    sample = list(words)
    if len(sample) > SAMPLE:
        sample = random.Random(seed).sample(sample, SAMPLE)
    bigrams = [(a, b) for w in sample for a, b in zip(w, w[1:], strict=False)]
    return TemplateStats(
        queries=len(queries),
        shared_opening=shared / len(queries) if queries else 0.0,
        distinct_bigrams=len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        top_openings=openings.most_common(5),
    )


def template_warning(test: TemplateStats, others: dict[str, TemplateStats] | None = None) -> str | None:
    """A plain sentence when the test queries look templated, naming the eval sets that do not; None otherwise."""
    if not test.templated:
        return None
    text = (
        f"{test.shared_opening:.0%} of the test queries open like many others (e.g. "
        f"'{test.top_openings[0][0]} …'): they look written from templates, so the gain measured on them is likely to "
        "overstate the gain on your users' real questions."
    )
    varied = {name: s for name, s in (others or {}).items() if not s.templated}
    if varied:
        names = ", ".join(f"{n} ({s.shared_opening:.0%})" for n, s in varied.items())
        text += f" Trust the eval sets of freely written questions more: {names}."
    else:
        text += " Add real users' questions as an eval set (eval_sets: in the config) to measure that gain."
    return text
