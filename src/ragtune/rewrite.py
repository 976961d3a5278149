"""Rewrite labelled questions the way users type them, to train on both.

Teams' labelled questions are templated ("What are the symptoms of Glaucoma ?"); their users type "glaucoma
symptoms", lower-case, with typos. Each style below rewrites a question deterministically (the random ones from a
seed and the question itself, so a rerun makes the same rows):
- `keywords`: the content words only, lower-case, no punctuation ("symptoms glaucoma");
- `lower`: lower-case, no template parentheses ("(are)") and no closing punctuation ("what are the symptoms of
  glaucoma");
- `typo`: `lower` with one letter dropped, doubled or swapped in one word of six letters or more.
They are applied to the train split only, after the split, so a rewritten test question never trains.
Not a library's job: nlpaug and the like rewrite with models or WordNet, which need downloads this tool cannot make.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Literal

Style = Literal["keywords", "lower", "typo"]
STYLES: tuple[str, ...] = ("keywords", "lower", "typo")

# Question words and function words: what a keyword query leaves out.
_STOP = frozenset(
    (  # noqa: SIM905 (a word list reads better as words)
        "a an the of for to in on at by with about from into and or but not no is are was were be been being am do "
        "does did have has had can could will would should shall may might must what which who whom whose when where "
        "why how this that these those it its i me my we our you your he she they them their there here as if than "
        "then so such some any each other more most much many very also just only own same too s t"
    ).split()
)
_WORD = re.compile(r"[\w'-]+")
_TEMPLATE_PARENS = re.compile(r"\s*\((?:are|is|or [^)]*)\)")


def _lower(question: str) -> str:
    text = _TEMPLATE_PARENS.sub("", question).lower()
    return re.sub(r"\s+", " ", re.sub(r"[\s?!.]+$", "", text)).strip()


def _keywords(question: str) -> str:
    words = [w.strip("'-") for w in _WORD.findall(_TEMPLATE_PARENS.sub("", question).lower())]
    return " ".join(w for w in words if w and w not in _STOP)


def _typo(question: str, rng: random.Random) -> str:
    words = _lower(question).split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 6 and w.isalpha()]
    if not long:
        return ""
    i = rng.choice(long)
    word, at = words[i], rng.randrange(1, len(words[i]) - 1)
    edit = rng.choice(("drop", "double", "swap"))
    if edit == "drop":
        word = word[:at] + word[at + 1 :]
    elif edit == "double":
        word = word[:at] + word[at] + word[at:]
    else:
        word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    words[i] = word
    return " ".join(words)


def rewrite(question: str, style: str, seed: int = 42) -> str | None:
    """`question` in `style`, or None when the style leaves it unchanged or empty (nothing new to train on)."""
    if style == "keywords":
        out = _keywords(question)
    elif style == "lower":
        out = _lower(question)
    elif style == "typo":
        out = _typo(question, random.Random(zlib.crc32(f"{seed}\0{question}".encode())))
    else:
        raise ValueError(f"unknown rewrite style {style!r}; known: {', '.join(STYLES)}")
    return out if out and out != question else None
