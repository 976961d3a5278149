"""The bfloat16 screen behind exact least-similar mining: its error bound holds, its lists are complete up to their
bound, and the walk over them makes exactly the classic N x N recipe's picks."""

import numpy as np
import pytest
from test_mining import classic_least_similar

from ragtune.config import MiningConfig
from ragtune.mining import least_similar_assignment, least_similar_candidates
from ragtune.screen import RELATIVE, Screener


def screen(rows, corpus, **kwargs):
    """Every row's lists against a corpus with nothing used yet."""
    return Screener(corpus, **kwargs).lists(rows, np.zeros(len(corpus), dtype=bool))


def _clustered(n, d=48, centres=12, noise=0.5, seed=3):
    """Rows of one cluster compete for the same least similar items: the walk's hard case."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    v = (c[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, d))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _walk_margins(v, chosen, forbidden=None, blocked=None) -> np.ndarray:
    """Replays a least-similar walk in float64: asserts every pick is free and allowed, and returns per row how far
    its score is above the lowest free allowed score (0 for an exact pick) and the gap to the runner-up."""
    scores = v.astype(np.float64) @ v.astype(np.float64).T
    used = np.zeros(len(v), dtype=bool)
    out = []
    for i, pick in enumerate(chosen):
        s = scores[i].copy()
        s[used] = np.inf
        s[list(forbidden[i] if forbidden else {i})] = np.inf
        if blocked and blocked[i] is not None:
            s[blocked[i]] = np.inf
        assert np.isfinite(s[pick]), f"row {i}: pick {pick} is taken, forbidden or blocked"
        low, runner_up = np.partition(s, 1)[:2]
        out.append((s[pick] - low, runner_up - low))
        used[pick] = True
    return np.array(out)


def _assert_unambiguous(v, chosen, forbidden=None, blocked=None):
    """Equality with the N x N walk is a fair test only where float32 rounding (~4e-7 here) cannot decide a pick."""
    assert _walk_margins(v, chosen, forbidden, blocked)[:, 1].min() > 1e-5


@pytest.mark.parametrize("scale", [1.0, 37.0])
def test_every_listed_score_is_within_the_bound_and_every_unlisted_item_screens_above_it(scale):
    rng = np.random.default_rng(1)
    rows = (scale * rng.normal(size=(300, 64))).astype(np.float32)
    corpus = (scale * rng.normal(size=(2000, 64))).astype(np.float32)
    lists = screen(rows, corpus, k=20, group=4, supergroup=4)
    exact = rows @ corpus.T
    for i in range(len(rows)):
        ids = lists.ids[lists.offsets[i] : lists.offsets[i + 1]]
        screened = lists.scores[lists.offsets[i] : lists.offsets[i + 1]]
        assert len(ids) >= 20 and len(set(ids.tolist())) == len(ids)
        assert np.all(np.diff(screened) >= 0), "a row's list is not ascending"
        # The bound: every listed item's float32 score is within error + RELATIVE * |screened|.
        slack = lists.error[i] + RELATIVE * np.abs(screened)
        assert np.all(np.abs(exact[i, ids] - screened) <= slack)
        # Completeness: an unlisted item scores (float32) at least bound - its error.
        unlisted = np.setdiff1d(np.arange(len(corpus)), ids)
        t = lists.bound[i]
        assert np.all(exact[i, unlisted] >= t - lists.error[i] - RELATIVE * abs(t))
        # Every item whose float32 score is clearly below the bound is listed.
        clear = np.flatnonzero(exact[i] < t - 2 * (lists.error[i] + RELATIVE * abs(t)))
        assert set(clear.tolist()) <= set(ids.tolist())


def test_error_bound_is_tight_enough_to_be_useful():
    v = _clustered(1000)
    lists = screen(v, v, k=16)
    # Unit vectors: bfloat16 keeps 8 bits, so the additive part is a few thousandths, not a fraction of the range.
    assert 0 < lists.error.max() < 0.01


@pytest.mark.parametrize("k, group, supergroup", [(8, 4, 4), (16, 2, 8), (40, 1, 1)])
@pytest.mark.parametrize("block_rows", [512, 32])
def test_walk_over_screened_lists_makes_the_classic_picks(k, group, supergroup, block_rows, monkeypatch):
    # 32-row blocks use fewer items than the repacking threshold, so later blocks screen past used (masked) items.
    monkeypatch.setattr("ragtune.mining._SCREENED_ROWS", block_rows)
    v = _clustered(1500)
    screener = Screener(v, k=k, group=group, supergroup=supergroup)
    chosen, reused = least_similar_assignment(v, v, [{i} for i in range(len(v))], candidates=screener)
    assert chosen == classic_least_similar(v)
    _assert_unambiguous(v, chosen)
    assert reused == 0 and len(set(chosen)) == len(v)


def test_walk_over_screened_lists_honours_forbidden_and_blocked_items():
    v = _clustered(900, seed=4)
    blocked = np.zeros(len(v), dtype=bool)
    blocked[::4] = True
    masks = [blocked] * 600 + [None] * 300
    forbidden = [{i, (i + 11) % len(v), (i * 7) % len(v)} for i in range(len(v))]
    screener = Screener(v, k=12, group=4, supergroup=4)
    chosen, _ = least_similar_assignment(v, v, forbidden, blocked=masks, candidates=screener)
    assert not any(blocked[c] for c in chosen[:600])
    assert all(c not in forbidden[i] for i, c in enumerate(chosen))
    assert chosen == classic_least_similar(v, forbidden, masks)
    _assert_unambiguous(v, chosen, forbidden, masks)


def test_more_rows_than_passages_with_the_screen_reuses_and_counts():
    rows = _clustered(12, seed=2)
    corpus = rows[:8]
    chosen, reused = least_similar_assignment(
        rows, corpus, [set() for _ in range(12)], candidates=Screener(corpus, k=4)
    )
    assert reused == 4 and len(set(chosen[:8])) == 8


def test_config_switches_the_screen_and_both_give_the_same_negatives():
    v = _clustered(1200, seed=1)
    picks = {}
    for setting in ("on", "off"):
        stats: dict = {}
        search, candidates, k = least_similar_candidates(v, v, MiningConfig(screen=setting), stats)
        assert (stats["index"].get("screen") == "bfloat16") == (setting == "on")
        picks[setting], _ = least_similar_assignment(
            v, v, [{i} for i in range(len(v))], k=k, search=search, candidates=candidates
        )
    assert picks["on"] == picks["off"]
    _assert_unambiguous(v, picks["on"])
    # auto: below the size where the screen pays off, FAISS's search is used.
    stats = {}
    least_similar_candidates(v, v, MiningConfig(), stats)
    assert "screen" not in stats["index"]


def _near_ties(centres=60, copies=25, jitter=1e-3, d=48, seed=7):
    """Clusters of near-copies: scores within a cluster differ by ~1e-3, below bfloat16's resolution, so the
    screen cannot order them and its lists end inside a band of near-ties."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    v = (np.repeat(c, copies, axis=0) + jitter * rng.normal(size=(centres * copies, d))).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_pick_is_the_float32_argmin_or_none_never_a_guess():
    v = _near_ties()
    lists = screen(v, v, k=30, group=2, supergroup=2)  # a list holds one cluster of near-copies
    exact = v.astype(np.float64) @ v.T.astype(np.float64)
    used = np.zeros(len(v), dtype=bool)
    used[::5] = True  # some items taken, as mid-walk
    forbidden = [{i} for i in range(len(v))]
    allowed = np.where(used, np.inf, exact)
    np.fill_diagonal(allowed, np.inf)
    lowest = allowed.min(axis=1)
    one = [lists.pick(i, used, forbidden[i], None, v[i], v) for i in range(len(v))]
    many = lists.tentative_picks(used, forbidden, [None] * len(v), v, v)
    # The lowest float32 score, up to float32 rounding (near-copies can tie within it; bfloat16 misorders by ~1e-3).
    assert all(p is None or allowed[i, p] <= lowest[i] + 1e-5 for i, p in enumerate(one))
    assert all(p < 0 or allowed[i, p] <= lowest[i] + 1e-5 for i, p in enumerate(many.tolist()))
    assert [p is None for p in one] == [p < 0 for p in many.tolist()]
    # Both outcomes occur here: some rows are proven (after rescoring near-ties), others must be searched again.
    assert 0 < sum(p is None for p in one) < len(v)


def test_walk_over_near_ties_takes_the_lowest_free_item_every_time():
    v = _near_ties(centres=40, copies=30)
    screener = Screener(v, k=8, group=2, supergroup=2)
    chosen, _ = least_similar_assignment(v, v, [{i} for i in range(len(v))], candidates=screener)
    # Near-copies tie within float32 rounding, so the check is each pick against the lowest score at its turn.
    assert _walk_margins(v, chosen)[:, 0].max() <= 1e-5


def test_the_window_reaches_every_item_whose_bound_overlaps_the_lowest():
    """Hand-made lists at the edge of the bound: item 1 screens 0.015 above item 0 but scores lower in float32,
    within the stated error of 0.01; the pick must rescore it. Item 2 is beyond reach."""
    from ragtune.screen import Screened

    row = np.array([[1.0, 0.0]], dtype=np.float32)
    corpus = np.array([[0.009, 1.0], [0.006, 1.0], [0.5, 0.0]], dtype=np.float32)
    lists = Screened(
        offsets=np.array([0, 3]),
        ids=np.array([0, 1, 2], dtype=np.int32),
        scores=np.array([0.0, 0.015, 0.5], dtype=np.float32),
        bound=np.array([1.0], dtype=np.float32),
        error=np.array([0.01]),
    )
    used = np.zeros(3, dtype=bool)
    assert lists.pick(0, used, set(), None, row[0], corpus) == 1
    assert lists.tentative_picks(used, [set()], [None], row, corpus).tolist() == [1]
    # Once item 1 is taken, item 0 is the pick; with items 0 and 1 forbidden, item 2 (listed, below the bound) is.
    used[1] = True
    assert lists.pick(0, used, set(), None, row[0], corpus) == 0
    assert lists.pick(0, np.zeros(3, dtype=bool), {0, 1}, None, row[0], corpus) == 2
    # A bound within reach of the lowest free item: an unlisted item could score lower, so no pick is claimed.
    lists.bound[:] = 0.52
    assert lists.pick(0, np.zeros(3, dtype=bool), {0, 1}, None, row[0], corpus) is None
    assert lists.tentative_picks(np.zeros(3, dtype=bool), [{0, 1}], [None], row, corpus).tolist() == [-1]


@pytest.mark.parametrize("screened", [True, False])
def test_identical_passages_tie_to_the_lower_id_like_a_stable_sort(screened):
    v = _clustered(600, seed=2)
    v[[100, 300, 500]] = v[40]  # four copies of one passage: every row scores them exactly alike
    candidates = Screener(v, k=8) if screened else None  # else FAISS's search, which orders ties its own way
    chosen, _ = least_similar_assignment(v, v, [{i} for i in range(len(v))], k=8, candidates=candidates)
    assert chosen == classic_least_similar(v)  # argsort(kind="stable"): among equal scores the lowest index first
