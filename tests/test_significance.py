import numpy as np
import pytest

from ragtune.significance import compare, mean_ci


def _scores(values):
    return {f"q{i}": float(v) for i, v in enumerate(values)}


def test_identical_systems_are_not_significant():
    a = _scores(np.random.default_rng(0).uniform(size=200))
    c = compare(a, dict(a))
    assert c.delta == 0 and c.ci_low == 0 and c.ci_high == 0 and c.p_value == 1.0
    assert not c.significant and c.verdict == "not significant"


def test_a_large_planted_gain_is_significant():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.6, size=200)
    c = compare(_scores(base), _scores(base + 0.3 + rng.normal(0, 0.05, size=200)))
    assert c.significant and c.ci_low > 0.25 and c.p_value < 0.001 and c.verdict == "significant"
    assert c.delta == pytest.approx(0.3, abs=0.02)


def test_noise_around_zero_is_not_significant_and_sign_is_kept():
    rng = np.random.default_rng(2)
    base = rng.uniform(size=100)
    noisy = compare(_scores(base), _scores(base + rng.normal(0, 0.2, size=100) - 0.0))
    assert not noisy.significant and noisy.ci_low < 0 < noisy.ci_high
    worse = compare(_scores(base), _scores(base - 0.2))
    assert worse.significant and worse.ci_high < 0 and worse.delta == pytest.approx(-0.2)


def test_mean_ci_covers_the_mean_and_needs_same_queries():
    v = np.random.default_rng(3).uniform(size=300)
    low, high = mean_ci(v)
    assert low < v.mean() < high and high - low < 0.1
    with pytest.raises(ValueError, match="same queries"):
        compare({"a": 1.0}, {"b": 1.0})


def test_report_breaks_results_down_by_synthesis_method():
    from ragtune.report import by_method
    from ragtune.tables import by_method_table

    qids = [f"q{i}" for i in range(40)]
    methods = {q: ("title" if i < 20 else "ict") for i, q in enumerate(qids)}
    base = {q: 0.5 for q in qids}
    tuned = {q: (0.9 if methods[q] == "title" else 0.5) for q in qids}  # only title queries improve
    per_query = {"base": {"ndcg@10": base}, "tuned": {"ndcg@10": tuned}}
    rows = by_method(per_query, methods, ["base", "tuned"])
    assert rows["title"]["queries"] == 20 and rows["title"]["tuned"] == 0.9 and rows["ict"]["tuned"] == 0.5
    assert rows["title"]["tuned_vs_base"]["significant"] and not rows["ict"]["tuned_vs_base"]["significant"]
    table = by_method_table(rows, ["base", "tuned"])
    assert "| title | 20 | 0.5000 | 0.9000 | +40.00" in table


def test_holm_adjusts_by_rank_and_keeps_order():
    from ragtune.significance import Comparison, holm

    ps = [0.01, 0.04, 0.03, 0.5]
    comparisons = holm([Comparison("m", "a", f"s{i}", 0, 0, 0, p, 10) for i, p in enumerate(ps)])
    # sorted: 0.01*4, 0.03*3, 0.04*2, 0.5*1 -> 0.04, 0.09, 0.09 (monotone), 0.5
    assert [c.p_holm for c in comparisons] == pytest.approx([0.04, 0.09, 0.09, 0.5])
