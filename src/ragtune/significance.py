"""Is a difference between two systems real? Paired bootstrap intervals and a paired permutation test.

Both systems are scored on the same queries, so the unit of resampling is the query: the per-query differences are
resampled with replacement (bootstrap, for a 95% interval of the mean difference) and sign-flipped at random
(permutation, for a p-value). A difference is called significant when its interval excludes zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

RESAMPLES = 10_000
_CHUNK = 500


@dataclass
class Comparison:
    metric: str
    baseline: str
    system: str
    delta: float  # system minus baseline, mean over queries
    ci_low: float
    ci_high: float
    p_value: float
    queries: int
    p_holm: float | None = None  # p adjusted for the other comparisons made on the same queries (`holm`)

    @property
    def significant(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def verdict(self) -> str:
        return "significant" if self.significant else "not significant"

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant, "verdict": self.verdict}

    @classmethod
    def from_dict(cls, d: dict) -> Comparison:
        """Back from `to_dict` (its derived fields dropped)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        idx = rng.integers(0, len(values), size=(count, len(values)))
        means[start : start + count] = values[idx].mean(axis=1)
    return means


def mean_ci(values: dict[str, float] | np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap percentile interval of a mean over queries."""
    v = np.fromiter(values.values(), float) if isinstance(values, dict) else np.asarray(values, float)
    if len(v) == 0:
        return float("nan"), float("nan")
    means = _bootstrap_means(v, resamples, np.random.default_rng(seed))
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(
    baseline: dict[str, float],
    system: dict[str, float],
    metric: str = "ndcg@10",
    names: tuple[str, str] = ("baseline", "system"),
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of per-query values ({qid: value}); both must cover the same queries."""
    if set(baseline) != set(system):
        raise ValueError("paired comparison needs both systems scored on the same queries")
    qids = sorted(baseline)
    d = np.array([system[q] - baseline[q] for q in qids], dtype=float)
    rng = np.random.default_rng(seed)
    observed = float(d.mean()) if len(d) else 0.0
    means = _bootstrap_means(d, resamples, rng)
    low, high = float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
    flips = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(count, len(d)))
        flips[start : start + count] = (signs * d).mean(axis=1)
    p = float((np.sum(np.abs(flips) >= abs(observed) - 1e-12) + 1) / (resamples + 1))
    return Comparison(metric, names[0], names[1], observed, low, high, p, len(d))


def holm(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm's step-down adjustment of the p-values of comparisons made on the same queries, set as `p_holm`.

    Several comparisons (tuned vs base, vs BM25, on three metrics) give several chances of a small p by luck; the
    adjusted p keeps the chance of any false "significant" at the nominal level. Five lines, so not statsmodels."""
    order = sorted(range(len(comparisons)), key=lambda i: comparisons[i].p_value)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(comparisons) - rank) * comparisons[i].p_value))
        comparisons[i].p_holm = running
    return comparisons
