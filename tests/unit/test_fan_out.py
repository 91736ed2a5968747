"""Splitting a job into shards (tasks/fan_out.py): every item in exactly one shard, whatever appears later."""

from __future__ import annotations

import pytest

from clients.errors import InputError
from tasks.fan_out import ShardRange, check_fan_out, split_keys, split_rows
from tasks.state import StateRoot


def test_row_ranges_cover_every_row_once_and_the_last_is_open():
    ranges = split_rows(25, 10)
    assert ranges == [(1, 11), (11, 21), (21, 0)]
    shards = [ShardRange(number=n, of=3, first_row=a, stop_row=b) for n, (a, b) in enumerate(ranges, 1)]
    for row in range(1, 40):  # rows past the end (a manifest that grew) go to the last shard
        assert sum(s.holds_row(row) for s in shards) == 1


def test_key_ranges_hold_keys_that_appear_after_the_split():
    keys = [f"s3://b/p/img-{i:03d}.jpg" for i in range(0, 50, 2)]
    ranges = split_keys(keys, 10)
    assert len(ranges) == 3 and ranges[0][0] == "" and ranges[-1][1] == ""
    shards = [ShardRange(number=n, of=3, first_key=a, stop_key=b) for n, (a, b) in enumerate(ranges, 1)]
    later = [f"s3://b/p/img-{i:03d}.jpg" for i in range(1, 50, 2)] + ["s3://b/p/a.jpg", "s3://b/p/z.jpg"]
    for key in keys + later:
        assert sum(s.holds_key(key) for s in shards) == 1, key


def test_shards_need_a_state_root_every_worker_reaches():
    check_fan_out(StateRoot("s3://bucket/state", configured=True))
    check_fan_out(StateRoot("/srv/shared/state", configured=True))
    with pytest.raises(InputError, match="fan_out.*other workers cannot see it"):
        check_fan_out(StateRoot())  # .pipeline-state under each worker's own directory
