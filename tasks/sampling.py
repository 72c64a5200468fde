"""Seeded row hashes, and the choices made from them: splits, samples and subsets that depend on nothing but
the seed and each row's position, so they are the same on any machine, in any number of batches.

A row's hash is splitmix64 of its position and the seed: a bijection of 64-bit integers, so no two
rows of a file share one. Taking "the k rows with the smallest hashes" is then an exact, unique choice,
found in a stream with bounded memory (`smallest_hashes`), and "the first k rows of each class in hash
order" (a stratified split) likewise (`class_thresholds`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

# splitmix64's constants.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
# Histogram bins of a narrowing pass (on the hash's top bits).
_BITS = 12
_BINS = 1 << _BITS


def hash_positions(positions: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """A uint64 per row position, from the seed (and a salt, for a choice independent of the split)."""
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + (np.uint64(seed) + np.uint64(salt) * _MIX_1) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _MIX_1
        z = (z ^ (z >> np.uint64(27))) * _MIX_2
        return z ^ (z >> np.uint64(31))


def row_hash(positions: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per row position (the hash's top 53 bits)."""
    return (hash_positions(positions, seed) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def class_thresholds(
    batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], ranks: dict[int, list[int]], classes: int
) -> dict[int, list[np.uint64]]:
    """For each class c and each rank r in ranks[c], the hash of the class's r-th row in hash order (1-based).

    `batches()` yields (class codes, hashes) of every row, in the same order each time it is called;
    it is called twice: a histogram of each class's hashes over their top bits finds the bin that
    holds each wanted rank, then the hashes falling in those bins are collected and sorted. Memory:
    a histogram per class and about rows / 4096 hashes per wanted rank.
    """
    histogram = np.zeros((classes, _BINS), dtype=np.int64)
    for codes, hashes in batches():
        np.add.at(histogram, (codes, (hashes >> np.uint64(64 - _BITS)).astype(np.int64)), 1)
    cumulative = np.cumsum(histogram, axis=1)
    wanted: dict[tuple[int, int], tuple[int, int]] = {}  # (class, bin) -> rank within the bin, for each rank
    targets: dict[int, list[tuple[int, int]]] = {}
    for code, positions in ranks.items():
        for rank in positions:
            bin_ = int(np.searchsorted(cumulative[code], rank))  # first bin whose cumulative count reaches rank
            before = int(cumulative[code, bin_ - 1]) if bin_ else 0
            targets.setdefault(code, []).append((bin_, rank - before))
            wanted[(code, bin_)] = (code, bin_)
    found: dict[tuple[int, int], list[np.ndarray]] = {key: [] for key in wanted}
    wanted_bins = np.full((classes, _BINS), False)
    for code, bin_ in wanted:
        wanted_bins[code, bin_] = True
    for codes, hashes in batches():
        bins = (hashes >> np.uint64(64 - _BITS)).astype(np.int64)
        keep = wanted_bins[codes, bins]
        for code, bin_, value in zip(codes[keep], bins[keep], hashes[keep], strict=True):
            found[(int(code), int(bin_))].append(value)
    thresholds: dict[int, list[np.uint64]] = {}
    for code, places in targets.items():
        thresholds[code] = [
            np.sort(np.asarray(found[(code, bin_)], dtype=np.uint64))[rank - 1] for bin_, rank in places
        ]
    return thresholds


def smallest_hashes(hashes: Callable[[], Iterable[np.ndarray]], k: int) -> np.uint64:
    """The k-th smallest of the hashes `hashes()` yields (1-based; it is called twice): a row is among the k
    smallest when its hash is at most this."""
    return class_thresholds(lambda: ((np.zeros(len(part), dtype=np.int64), part) for part in hashes()), {0: [k]}, 1)[0][
        0
    ]


def position_hashes(rows: int, seed: int, salt: int = 0, chunk: int = 1 << 20) -> Iterator[np.ndarray]:
    """The hashes of positions 0 .. rows - 1, a chunk at a time."""
    for start in range(0, rows, chunk):
        yield hash_positions(np.arange(start, min(rows, start + chunk)), seed, salt)


class SmallestRows:
    """The `k` rows with the smallest hashes among all rows added (a seeded sample of bounded size that does not
    depend on how the rows were batched): `add(hashes, rows)` batch by batch, then `rows()`."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.hashes = np.empty(0, dtype=np.uint64)
        self.parts: list = []

    def add(self, hashes: np.ndarray, rows: object) -> None:
        """`rows` is a DataFrame (or an array) with one row per hash."""
        import pandas as pd

        self.parts.append(rows)
        self.hashes = np.concatenate([self.hashes, hashes])
        if len(self.hashes) > 2 * self.k:
            self._trim(pd)

    def _trim(self, pd: object) -> None:
        merged = _concat(self.parts)
        keep = np.argpartition(self.hashes, self.k - 1)[: self.k] if len(self.hashes) > self.k else slice(None)
        self.hashes = self.hashes[keep]
        self.parts = [merged.iloc[keep] if hasattr(merged, "iloc") else merged[keep]]

    def rows(self) -> object:
        """The kept rows, in hash order."""
        import pandas as pd

        if not self.parts:
            return None
        self._trim(pd)
        merged = _concat(self.parts)
        order = np.argsort(self.hashes, kind="stable")
        return merged.iloc[order] if hasattr(merged, "iloc") else merged[order]

    def __len__(self) -> int:
        return min(len(self.hashes), self.k)


def _concat(parts: list) -> object:
    import pandas as pd

    if len(parts) == 1:
        return parts[0]
    if hasattr(parts[0], "iloc"):
        return pd.concat(parts, ignore_index=True)
    return np.concatenate(parts)
