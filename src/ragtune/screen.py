"""Least similar corpus items from a bfloat16 product, with a proven bound on how far it is from float32.

Why by hand: FAISS's exact search runs the float32 product, which at 20,000 rows is the whole cost of least-similar
mining on a CPU, and no library offers a low-precision search that stays exact. On CPUs with AMX tiles a bfloat16
product runs several times faster than float32; its rounding is bounded (inputs to 8 significant bits, float32
accumulation, output to 8 bits), so a screened score `s` is within `error + RELATIVE * |s|` of the float32 score.

`Screener.lists` screens a block of rows against the items a walk has not used yet: each row keeps every item that
screens at or below a per-row threshold (`bound`), which is at least its `k`-th lowest screened score, so every item
not kept screens above it. The walk then rescores in float32 only the few kept items whose bounds overlap the lowest
free one (`Screened.pick`, `Screened.tentative_picks`) and asks an exact search when an unlisted item could still
win: its picks are the float32 picks.

The threshold comes without sorting a row: items are grouped (`group` strided columns, then `supergroup` groups),
the group minima are reduced with elementwise minima, and the `k`-th smallest super-group minimum is an upper bound
on the row's `k`-th smallest score (k super-groups each hold an item at or below it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RELATIVE = 2.0**-8 / (1 - 2.0**-8)  # bfloat16 output rounding, relative to the rounded value
_BLOCK_BYTES = 32 << 20  # one block's scores (256 rows of 20,000 items); at 100,000 items 32 MB beat 4-16 and 64


def available() -> bool:
    """Whether this CPU has AMX tiles, the only hardware on which the screen was measured faster than FAISS."""
    try:
        import torch

        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch without the probe: assume not
        return False


@dataclass
class Screened:
    """Per row i, `ids[offsets[i]:offsets[i+1]]` are corpus items ascending by screened similarity `scores`; every
    item not listed screens above `bound[i]` (inf: every item is listed). `error[i]`: the additive part of row i's
    bound on |screened - float32| (the relative part is `RELATIVE * |screened|`)."""

    offsets: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    bound: np.ndarray
    error: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def taken_share(self, start: int, stop: int, used: np.ndarray) -> np.ndarray:
        """Per row in [start, stop): the share of its listed items already used."""
        counts = np.diff(self.offsets[start : stop + 1])
        taken = np.ones(stop - start)  # a row with no items is as stuck as one whose items are all taken
        listed = np.flatnonzero(counts)
        if len(listed):
            at = self.offsets[start + listed]
            taken[listed] = np.add.reduceat(used[self.ids[at[0] : self.offsets[stop]]], at - at[0]) / counts[listed]
        return taken

    def pick(
        self,
        i: int,
        used: np.ndarray,
        forbidden: set[int],
        blocked: np.ndarray | None,
        vector: np.ndarray,
        corpus_vectors: np.ndarray,
    ) -> int | None:
        """Row i's least similar item that is free, allowed and not forbidden, by float32 score; None when the list
        cannot prove it (every listed item is taken, or an unlisted one could still score lower)."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        ids = self.ids[lo:hi]
        free = ~used[ids]
        if blocked is not None:
            free &= ~blocked[ids]
        e, scores = float(self.error[i]), self.scores[lo:hi]
        limit = None  # the highest float32 score the lowest free item can have
        window: list[int] = []
        for j in np.flatnonzero(free).tolist():
            c = int(ids[j])
            if limit is None:
                if c in forbidden:
                    continue
                s = float(scores[j])
                limit = s + e + RELATIVE * abs(s)
                t = float(self.bound[i])
                if t != np.inf and limit >= t - e - RELATIVE * abs(t):  # an unlisted item may score as low
                    return None
            else:
                s = float(scores[j])
                if s - e - RELATIVE * abs(s) > limit:  # this and every later item scores higher
                    break
                if c in forbidden:
                    continue
            window.append(c)
        if len(window) <= 1:
            return window[0] if window else None
        return min(zip((corpus_vectors[window] @ vector).tolist(), window, strict=True))[1]  # a tie: the lower id

    def tentative_picks(
        self,
        used: np.ndarray,
        forbidden: list[set[int]],
        blocked: list[np.ndarray | None],
        row_vectors: np.ndarray,
        corpus_vectors: np.ndarray,
    ) -> np.ndarray:
        """`pick` for every row at once, all against `used` as it is now (-1 where `pick` gives None).

        Free items only get fewer, so row j's pick is still its pick when the walk reaches it unless an earlier row
        took that very item: the walk takes it after that one check, and asks `pick` only for the rest (the
        per-row Python of `pick` was most of the walk's time)."""
        ids, scores, starts = self.ids, self.scores, self.offsets[:-1]
        rows = len(self)
        row = np.repeat(np.arange(rows), np.diff(self.offsets))
        ok = ~used[ids]
        masks: dict[int, tuple[np.ndarray, list[int]]] = {}
        for r in range(rows):
            if blocked[r] is not None:
                masks.setdefault(id(blocked[r]), (blocked[r], []))[1].append(r)
        for mask, members in masks.values():
            in_rows = np.zeros(rows, dtype=bool)
            in_rows[members] = True
            at = np.flatnonzero(in_rows[row])
            ok[at] &= ~mask[ids[at]]
        # A forbidden set is a row's positives and the like: few items, so only candidates among them are checked.
        suspects = set().union(*forbidden)
        if suspects:
            marked = np.zeros(len(used), dtype=bool)
            marked[list(suspects)] = True
            for at in np.flatnonzero(marked[ids] & ok).tolist():
                ok[at] = int(ids[at]) not in forbidden[int(row[at])]
        lowest = np.full(rows, np.inf)
        listed = np.flatnonzero(np.diff(self.offsets))
        if len(listed):  # reduceat over the listed rows only: an empty row would read its neighbour's first item
            lowest[listed] = np.minimum.reduceat(np.where(ok, scores, np.inf), starts[listed])
        error, bound = self.error, self.bound
        limit = lowest + error + RELATIVE * np.abs(lowest)
        with np.errstate(invalid="ignore"):  # an infinite bound (every free item listed) proves every pick
            floor = np.where(np.isinf(bound), np.inf, bound - error - RELATIVE * np.abs(bound))
        provable = np.isfinite(lowest) & (limit < floor)
        window = np.flatnonzero(ok & provable[row] & (scores - error[row] - RELATIVE * np.abs(scores) <= limit[row]))
        picks = np.full(rows, -1, dtype=np.int64)
        if not len(window):
            return picks
        exact = np.einsum("ij,ij->i", corpus_vectors[ids[window]], row_vectors[row[window]])
        order = np.lexsort((ids[window], exact, row[window]))  # per row by score; a tie goes to the lower id
        rows_in_order = row[window][order]
        first = np.flatnonzero(np.r_[True, rows_in_order[1:] != rows_in_order[:-1]])
        picks[rows_in_order[first]] = ids[window][order][first]
        return picks


class Screener:
    """Screens rows against the corpus items a least-similar walk has not used yet, a block of rows at a time as the
    walk reaches them: the lists then hold free items only, so they stay short, and the product shrinks as items are
    used (the free items are packed again whenever an eighth of the packed ones has been used since).

    Lists hold at least `k` items per row (fewer only when fewer are free). Items are grouped for the threshold when
    at least 2 * group * supergroup * k are packed (so that k super-groups hold a free item), else the threshold is
    the k-th lowest score itself. Rows are screened at most `block` at a time, fewer when a block's scores would
    pass `_BLOCK_BYTES`, so that they stay in cache between the product and the passes over them."""

    def __init__(self, corpus_vectors: np.ndarray, k: int = 64, group: int = 4, supergroup: int = 16, block: int = 256):
        import torch

        corpus = torch.from_numpy(np.ascontiguousarray(corpus_vectors, dtype=np.float32))
        self.corpus_bf16 = corpus.bfloat16()
        residual, norm, norm_bf16 = _norms(corpus, self.corpus_bf16)
        self.corpus_norms = (residual.max(), norm.max(), norm_bf16.max())  # maxima bound every subset too
        self.k, self.group, self.supergroup, self.block = k, group, supergroup, block
        self._items = np.empty(0, dtype=np.int64)  # corpus ids of the packed columns
        self._packed = None
        self._used_when_packed = -1

    def lists(self, row_vectors: np.ndarray, used: np.ndarray) -> Screened:
        """Each row's screened least similar items among those not `used` (ids are corpus indices)."""
        import torch

        taken = int(used.sum())
        if (
            self._packed is None
            or taken < self._used_when_packed
            or 8 * (taken - self._used_when_packed) > len(self._items)
        ):
            self._pack(used)
        n, padded = len(self._items), self._packed.shape[0]
        stale = np.flatnonzero(used[self._items])  # packed items used since
        free = n - len(stale)
        k = min(self.k, free)
        group, supergroup = (self.group, self.supergroup) if n >= 2 * self.group * self.supergroup * k else (1, 1)
        x = torch.from_numpy(np.ascontiguousarray(row_vectors, dtype=np.float32))
        xb = x.bfloat16()
        error = _additive_error(x, xb, self.corpus_norms)
        out = _Growing(len(xb) * (k * 3 // 2 + 1))
        bound = np.full(len(xb), np.inf, dtype=np.float32)
        if k == 0:
            out.add(np.zeros(len(xb), dtype=np.int64), np.empty(0, np.int32), np.empty(0, np.float32))
        stale_columns = torch.from_numpy(stale)
        width = padded // group  # group j holds the columns j, j + width, j + 2 * width, ...
        strides = torch.arange(group) * width
        block = max(16, min(self.block, _BLOCK_BYTES // (2 * padded)))  # a block's scores stay in cache
        s = torch.empty(min(block, len(xb)), padded, dtype=torch.bfloat16)
        for start in range(0, len(xb) if k else 0, block):
            s = torch.mm(xb[start : start + block], self._packed.T, out=s[: min(block, len(xb) - start)])
            s[:, n:] = float("inf")
            if len(stale):
                s.index_fill_(1, stale_columns, float("inf"))
            group_min = _strided_min(s, group)
            threshold = _strided_min(group_min, supergroup).float().topk(k, largest=False, sorted=False).values
            threshold = threshold.amax(1).bfloat16()
            rows, groups = (group_min <= threshold[:, None]).nonzero(as_tuple=True)
            columns = groups[:, None] + strides
            values = s.view(-1)[(rows * padded)[:, None] + columns]  # one flat index: faster than (rows, cols)
            keep = (values <= threshold[rows][:, None]).view(-1).nonzero().squeeze(1)
            row_of = rows[torch.div(keep, group, rounding_mode="floor")].int()
            value = values.view(-1)[keep]
            order = (row_of * 65536 + _sortable(value)).argsort()  # by row, then by score within the row
            out.add(
                torch.bincount(row_of, minlength=len(s)).numpy(),
                self._items[columns.view(-1)[keep][order].numpy()].astype(np.int32),
                value[order].float().numpy(),
            )
            bound[start : start + len(s)] = threshold.float().numpy()
        offsets, ids, scores = out.arrays()
        bound[np.diff(offsets) == free] = np.inf  # every free item is listed
        return Screened(offsets, ids, scores, bound, error)

    def _pack(self, used: np.ndarray) -> None:
        import torch

        self._items = np.flatnonzero(~used)
        unit = self.group * self.supergroup
        padded = max(unit, -(-len(self._items) // unit) * unit)
        self._packed = None  # the old packing goes before the new one is made
        packed = torch.zeros(padded, self.corpus_bf16.shape[1], dtype=torch.bfloat16)
        torch.index_select(self.corpus_bf16, 0, torch.from_numpy(self._items), out=packed[: len(self._items)])
        self._packed = packed
        self._used_when_packed = int(used.sum())


class _Growing:
    """The screen's lists, written block by block into arrays that grow by half when full (collecting the blocks
    and concatenating them held every list twice at the end, and set the miner's peak memory)."""

    def __init__(self, capacity: int):
        self.ids = np.empty(capacity, dtype=np.int32)
        self.scores = np.empty(capacity, dtype=np.float32)
        self.counts: list[np.ndarray] = []
        self.size = 0

    def add(self, counts: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        end = self.size + len(ids)
        if end > len(self.ids):
            capacity = max(end, len(self.ids) * 3 // 2)
            self.ids = np.resize(self.ids, capacity)
            self.scores = np.resize(self.scores, capacity)
        self.ids[self.size : end], self.scores[self.size : end] = ids, scores
        self.size = end
        self.counts.append(counts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts = np.concatenate(self.counts)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return offsets, self.ids[: self.size], self.scores[: self.size]


def _strided_min(s, g: int):
    """(b, g * w) -> (b, w): the minimum over the g slices of width w, by halving (elementwise minima vectorise;
    a reduction over a short last axis did not, and took 3x as long)."""
    import torch

    while g > 1:
        half = s.shape[1] // 2
        s = torch.minimum(s[:, :half], s[:, half:])
        g //= 2
    return s


def _sortable(values):
    """bfloat16 values -> int32 keys in [0, 65536) with the same order (IEEE bits: negatives flipped, sign set on
    positives), so one integer sort orders (row, score) exactly."""
    import torch

    bits = values.view(torch.int16).int() & 0xFFFF
    return torch.where(bits >= 0x8000, 0xFFFF - bits, bits + 0x8000)


def _additive_error(x, xb, corpus_norms: tuple[float, float, float]) -> np.ndarray:
    """Per row: a bound on |x.y - float32 x.y| plus |x.y - bfloat16 product before output rounding|, for every corpus y.

    x.y - xb.yb = (x - xb).y + xb.(y - yb), bounded by Cauchy-Schwarz with each vector's own rounding residual
    (exact in float32: the bits bfloat16 dropped); float32 sums of d products (ours and the reference's) are each
    within d * 2^-24 of |x| |y|. `corpus_norms`: the corpus's largest residual, norm and bfloat16 norm. 1% slack
    covers the float32 arithmetic of the norms."""
    residual_x, norm_x, norm_xb = _norms(x, xb)
    residual_y, norm_y, norm_yb = corpus_norms
    dim = x.shape[1]
    gamma = dim * 2.0**-24 / (1 - dim * 2.0**-24)
    bound = residual_x * norm_y + norm_xb * residual_y + gamma * (norm_xb * norm_yb + norm_x * norm_y)
    return 1.01 * bound + 1e-7


def _norms(v, vb, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per vector: |v - bfloat16(v)|, |v|, |bfloat16(v)|, a chunk at a time (float32 copies of the whole set are
    what would set the miner's peak memory)."""
    out = np.empty((3, len(v)), dtype=np.float64)
    for s in range(0, len(v), chunk):
        a, b = v[s : s + chunk], vb[s : s + chunk].float()
        out[0, s : s + chunk] = (a - b).norm(dim=1).numpy()
        out[1, s : s + chunk] = a.norm(dim=1).numpy()
        out[2, s : s + chunk] = b.norm(dim=1).numpy()
    return out[0], out[1], out[2]
