"""The generation check's split of rows over ranks: equal calls, the same kind per call, every row once."""

from __future__ import annotations

import pytest

from codepercept_rl.data.batching import lockstep_shard


def test_lockstep_shard_pads_each_kind_and_counts_every_item_once() -> None:
    kinds = [True, True, True, False, False]  # three rows with images, two without
    assert lockstep_shard(kinds, 0, 2) == [(0, True), (2, True), (3, True)]
    assert lockstep_shard(kinds, 1, 2) == [(1, True), (0, False), (4, True)]
    assert lockstep_shard(kinds, 0, 1) == [(i, True) for i in range(5)]


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_rank_makes_the_same_calls_of_the_same_kinds(world: int) -> None:
    kinds = [False, True, True, False, True, True, True]
    shards = [lockstep_shard(kinds, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    for k in range(len(shards[0])):
        assert len({kinds[s[k][0]] for s in shards}) == 1  # call k: images on every rank or on none
    counted = sorted(i for s in shards for i, c in s if c)
    assert counted == list(range(len(kinds)))
