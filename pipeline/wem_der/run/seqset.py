"""A set of input record numbers, held as a bitmap.

A resume skips the records its run has already finished, a migration's million of them
perhaps. One bit per record number up to the highest finished holds a million in 125 kB,
where a set of ints takes tens of MB and grows with every run resumed.
"""

from __future__ import annotations


class SeqSet:
    """Record numbers (`seq`, counted from 0 over a run's inputs): `add` and `in` only."""

    __slots__ = ("_bits",)

    def __init__(self) -> None:
        self._bits = bytearray()

    def add(self, seq: int) -> None:
        if seq < 0:
            raise ValueError(f"a record number is never negative, not {seq}")
        index = seq >> 3
        missing = index + 1 - len(self._bits)
        if missing > 0:
            self._bits.extend(bytes(missing))
        self._bits[index] |= 1 << (seq & 7)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int) or seq < 0:
            return False
        index = seq >> 3
        return index < len(self._bits) and bool(self._bits[index] & (1 << (seq & 7)))
