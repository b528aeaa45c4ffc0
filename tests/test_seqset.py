"""The bitmap of finished record numbers a resume skips."""

import random

import pytest
from wem_der.run.seqset import SeqSet


def test_holds_exactly_the_numbers_added() -> None:
    """Against a set of ints, over sparse and dense numbers and byte boundaries."""
    rng = random.Random(7)
    added = {0, 7, 8, 9, 15, 16, 1_000_003} | {rng.randrange(5000) for _ in range(2000)}
    seqs = SeqSet()
    for seq in added:
        seqs.add(seq)
    for seq in range(-3, 5010):
        assert (seq in seqs) is (seq in added), seq
    assert 1_000_003 in seqs
    assert 1_000_002 not in seqs
    assert 1_000_004 not in seqs  # past the last byte
    assert 10**12 not in seqs
    assert "3" not in seqs


def test_adding_again_changes_nothing() -> None:
    seqs = SeqSet()
    seqs.add(5)
    seqs.add(5)
    seqs.add(4)
    assert [seq for seq in range(10) if seq in seqs] == [4, 5]


def test_refuses_a_negative_number() -> None:
    with pytest.raises(ValueError, match="never negative"):
        SeqSet().add(-1)
