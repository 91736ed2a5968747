"""The backfill's fan-out pieces without a server: which files a shard keeps, and the parent's counts rebuilt
from the shards' reports (flows/miniviz_backfill/shards.py)."""

from __future__ import annotations

import pandas as pd

from flows.miniviz_backfill import BackfillSpec, DeadLetterWriter, SentIndex, file_id
from flows.miniviz_backfill.plan import Tally, scan_backfill
from flows.miniviz_backfill.report import _report_frame
from flows.miniviz_backfill.run import take_shard
from flows.miniviz_backfill.shards import absorb
from tasks.fan_out import ShardRange, key_ranges

T0 = 1_704_067_200_000
FILES = [
    f"s3://bucket/history/{name}" for name in ("AAPL.csv", "AMZN.csv", "GOOG.parquet", "IBM.csv", "MSFT.csv")
]


def shards_of(files: list[str], size: int) -> list[ShardRange]:
    ranges = key_ranges(files, size)
    return [ShardRange(number=n, of=len(ranges), **r) for n, r in enumerate(ranges, 1)]


def test_each_file_falls_in_exactly_one_shard_of_at_most_shard_size_files():
    shards = shards_of(list(reversed(FILES)), 2)  # the listing's order does not matter
    kept = [take_shard(FILES, s) for s in shards]
    assert kept == [FILES[:2], FILES[2:4], FILES[4:]]
    # a file that appears between the parent's listing and a shard's falls in exactly one range too
    later = ["s3://bucket/history/0first.csv", "s3://bucket/history/GOOG2.csv", "s3://bucket/history/ZZZ.csv"]
    for new in later:
        assert sum(new in take_shard([*FILES, new], s) for s in shards) == 1, new


def test_a_shard_keeps_whole_files_and_a_run_that_is_no_shard_keeps_them_all():
    assert take_shard(FILES, ShardRange()) == FILES
    one_big = shards_of(["s3://bucket/history/huge.parquet"], 2)
    assert len(one_big) == 1 and take_shard(["s3://bucket/history/huge.parquet"], one_big[0]) == [
        "s3://bucket/history/huge.parquet"
    ]


async def test_the_parent_rebuilds_the_report_a_shard_wrote_row_for_row(tmp_path):
    good, dupes, empty, broken = (tmp_path / n for n in ("good.csv", "dupes.csv", "empty.csv", "broken.csv"))
    pd.DataFrame({"timestamp": [T0, T0 + 1, T0 + 2, T0 + 3], "label_key": ["a", None, "b", "b"],
                  "t": [1.0, 2.0, 3.0, 4.0]}).to_csv(good, index=False)  # fmt: skip
    pd.DataFrame({"timestamp": [T0, T0], "label_key": ["a", "a"], "t": [1.0, 1.0]}).to_csv(dupes, index=False)
    empty.write_text("timestamp,label_key,t\n")
    broken.write_text("when,t\n1,2\n")  # no timestamp column
    files = [str(p) for p in (good, dupes, empty, broken)]
    sent = SentIndex([{"t": "sent", "f": file_id(str(good)), "r": [[0, 1]]}])
    writer = DeadLetterWriter(str(tmp_path / "dl.csv"))
    tally, _ = await scan_backfill.fn(files, BackfillSpec(), 100, sent, writer)
    writer.close()
    tally.cell(str(good), "b")["sent"] += 1  # one of b's two events sent, the other not: pending
    tally.unsent[str(good)] = "not all sent: the run stopped early (503); a re-run sends the rest"
    shard_report = _report_frame(tally, dry_run=False)

    rows = shard_report.astype(object).where(shard_report.notna(), None).to_dict("records")
    rebuilt = Tally()
    for row in rows:
        absorb(rebuilt, row)
    rebuilt.files = list(dict.fromkeys(rebuilt.files))

    pd.testing.assert_frame_equal(_report_frame(rebuilt, dry_run=False), shard_report)
    assert {f: rebuilt.total(f) for f in Tally.FIELDS} == {f: tally.total(f) for f in Tally.FIELDS}
    assert rebuilt.file_errors == tally.file_errors and sorted(rebuilt.files) == sorted(tally.files)
    statuses = dict(zip(shard_report.source + "/" + shard_report.label_key, shard_report.status, strict=True))
    assert statuses[f"{good}/b"] == "pending" and statuses[f"{broken}/"] == "failed"
    assert statuses[f"{empty}/"] == "empty"
