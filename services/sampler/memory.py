"""What the sampler remembers of its store, so most outputs are decided without a read.

A decision used to cost two SQLite reads (is the output decided? was its prompt seen?)
and a quota read per rule; at tens of thousands of outputs a second those reads were
most of the sampler's cost. The store stays the source of truth: every structure here
is filled from it when the sampler starts, changed only after a store transaction
committed (so a failed write leaves no trace here either), and falls back to a store
read whenever it cannot answer for certain:

- `DecidedIds`: a Bloom filter over every output id with a stored decision. "No" is
  certain (nearly every new output); "maybe" (a redelivery, or ~0.5% false positives)
  reads the store. Fixed memory per id, unlike a set of the ids.
- `PromptMemory`: the prompt hashes seen within the dedupe window, newest last,
  at most `max_entries`; a question about a time it no longer covers reads the store.
- `QuotaMemory`: quota counts read once per (rule, window, value), then kept up to
  date by the sampler's own writes.

They assume the sampler is the only writer of its store file (one replica per data
dir, as deployed); a second writer is still caught by the store's own checks at write
time (`SamplerStore.write_batch`), only later.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable

_BLOOM_START_BITS = 1 << 20  # 128 KiB; grows x4 when full
_BITS_PER_ID = 16  # with 3 probes: ~0.5% false positives at capacity


class DecidedIds:
    """The output ids that may have a stored decision (a Bloom filter, 3 probes)."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        """`load`: every decided output id in the store; called again when the filter grows."""
        self._load = load
        self._bits_n = _BLOOM_START_BITS
        self._rebuild()

    def _rebuild(self) -> None:
        ids = list(self._load())
        while len(ids) * _BITS_PER_ID > self._bits_n:
            self._bits_n *= 4
        self._bits = bytearray(self._bits_n // 8)
        self._mask = self._bits_n - 1
        self._count = 0
        for output_id in ids:
            self._set(output_id)

    def _probes(self, output_id: str) -> tuple[int, int, int]:
        # str hashes are per process, which is fine: the filter is rebuilt at every start
        h = hash(output_id) & 0xFFFF_FFFF_FFFF_FFFF
        a, b = h & self._mask, (h >> 32) | 1
        return a, (a + b) & self._mask, (a + 2 * b) & self._mask

    def _set(self, output_id: str) -> None:
        for i in self._probes(output_id):
            self._bits[i >> 3] |= 1 << (i & 7)
        self._count += 1

    def add(self, output_ids: Iterable[str]) -> None:
        """Ids whose decisions were just committed."""
        for output_id in output_ids:
            self._set(output_id)
        if self._count * _BITS_PER_ID > self._bits_n:
            self._bits_n *= 4
            self._rebuild()  # from the store, which holds everything added so far

    def __contains__(self, output_id: str) -> bool:
        # The probes of `_probes`, inline and one at a time: asked for every output, and
        # for a new one (nearly all) the first unset bit already answers "no".
        h = hash(output_id) & 0xFFFF_FFFF_FFFF_FFFF
        mask, bits = self._mask, self._bits
        a = h & mask
        if not bits[a >> 3] >> (a & 7) & 1:
            return False
        b = (h >> 32) | 1
        return all(bits[i >> 3] >> (i & 7) & 1 for i in ((a + b) & mask, (a + 2 * b) & mask))


class PromptMemory:
    """Prompt hash -> when it was last recorded, for the recent past.

    Invariant: every hash the store holds with seen_at >= `complete_from` is here, with
    its seen_at. Entries leave only from the front (oldest first: beyond the dedupe
    window, or over `max_entries`), each raising `complete_from` past itself."""

    def __init__(self, rows: Iterable[tuple[str, float]], complete_from: float,
                 lookup: Callable[[str], float | None], *, window_s: float, max_entries: int) -> None:
        """`rows`: the store's hashes with seen_at >= `complete_from`, oldest first (all of
        them, or the newest `max_entries` with `complete_from` just past the oldest
        left out); `lookup`: a hash's seen_at from the store."""
        self._seen: OrderedDict[str, float] = OrderedDict(rows)
        self._complete_from = complete_from
        self._lookup = lookup
        self._window_s = window_s
        self._max = max_entries

    def seen(self, prompt_hash: str, since: float) -> bool:
        """Was the hash recorded at or after `since`?"""
        at = self._seen.get(prompt_hash)
        if at is None and since < self._complete_from:
            at = self._lookup(prompt_hash)  # older than what is kept: ask the store
        return at is not None and at >= since

    def add(self, recorded: Iterable[tuple[str, float]], now: float) -> None:
        """Hashes just committed (INSERT OR REPLACE: the latest time wins)."""
        for prompt_hash, at in recorded:
            self._seen.pop(prompt_hash, None)
            self._seen[prompt_hash] = at
        cutoff = now - self._window_s
        while self._seen:
            prompt_hash, at = next(iter(self._seen.items()))
            if at >= cutoff and len(self._seen) <= self._max:
                break
            del self._seen[prompt_hash]
            self._complete_from = max(self._complete_from, math.nextafter(at, math.inf))


class QuotaMemory:
    """Quota counts: read from the store once per key, then counted along."""

    def __init__(self, lookup: Callable[[str, float, str], int], *, max_entries: int = 100_000) -> None:
        self._lookup = lookup
        self._counts: dict[tuple[str, float, str], int] = {}
        self._max = max_entries

    def count(self, rule: str, window_start: float, value: str) -> int:
        key = (rule, window_start, value)
        count = self._counts.get(key)
        if count is None:
            if len(self._counts) >= self._max:
                self._counts.clear()  # old windows' keys; anything needed is read again
            count = self._counts[key] = self._lookup(rule, window_start, value)
        return count

    def add(self, places: Iterable[tuple[str, float, str]]) -> None:
        """Places just committed. A key not read yet stays unread: its next read from
        the store includes them."""
        for key in places:
            if key in self._counts:
                self._counts[key] += 1
