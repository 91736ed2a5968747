"""Skin-analysis fan-out without a server: which images and analyses a shard keeps, and the parent's report
when a shard never finished."""

from __future__ import annotations

from types import SimpleNamespace

from flows.skin_analysis.inputs import SkinInputs, group_units, images_from_files
from flows.skin_analysis.shards import _gather, take_shard
from flows.skin_analysis.tables import ReportBuilder, subject_key
from tasks.fan_out import Shard, ShardRange, ShardRun, shard_problems, split_keys

DATASET = "study"
FILES = [
    (f"/in/{name}", name)
    for name in [
        "Ada Byron_front.jpg", "Ada Byron_left.jpg", "Ada Byron_right.jpg", "Bo Diddley.jpg",
        "Cy Twombly_front.jpg", "Cy Twombly_left.jpg", "Di Fong.png", "Ed Wood.jpg", "Flo Jo_front.jpg",
        "x" * 600 + ".jpg",  # no usable subject name (too long): rejected as input, in no shard
    ]
]  # fmt: skip


def inputs() -> SkinInputs:
    return SkinInputs(images=images_from_files(FILES))


def shards_of(size: int) -> list[ShardRange]:
    subjects = {i.subject for i in inputs().images if i.subject}
    ranges = split_keys([subject_key(DATASET, s) for s in subjects], size)
    return [
        ShardRange(number=n, of=len(ranges), first_key=a, stop_key=b) for n, (a, b) in enumerate(ranges, 1)
    ]


def test_shards_take_whole_subjects_once_with_the_jobs_numbers():
    everything = inputs()
    all_units = group_units(everything.images, "v3")
    kept_units, kept_items = [], []
    for shard in shards_of(2):
        part = inputs()
        units = take_shard(part, group_units(part.images, "v3"), DATASET, shard)
        assert {u.subject for u in units} == {i.subject for i in part.images}  # a subject's images together
        assert len({u.subject for u in units}) <= 2
        kept_units += units
        kept_items += [i.item for i in part.images]
    assert sorted(u.unit for u in kept_units) == [
        u.unit for u in all_units
    ]  # each analysis once, same number
    rejected = [i.item for i in everything.images if i.subject is None]
    assert sorted(kept_items + rejected) == list(range(1, len(FILES) + 1))


def test_shards_that_never_finished_report_their_images_failed(tmp_path):
    everything, shards = inputs(), shards_of(4)
    run = SimpleNamespace(
        api_version="v3", s3=None, report=ReportBuilder(DATASET, "v3", file_names=False, subject_names=False)
    )
    runs = [
        ShardRun(Shard(shard, {}, str(tmp_path / f"shard-{shard.number}.parquet")), state, runs=3)
        for shard, state in zip(shards, ["Crashed", "Cancelled"], strict=True)
    ]
    (wide, tidy), problems = _gather(run, everything, runs), shard_problems(runs)

    for shard, state in zip(shards, ["Crashed", "Cancelled"], strict=True):
        mine = inputs()
        take_shard(mine, [], DATASET, shard)
        rows = wide[wide["item"].isin([i.item for i in mine.images])]
        assert len(rows) == len(mine.images) > 0 and set(rows["status"]) == {"failed"}
        why = f"shard {shard.number} of 2 did not finish (its last run ended {state} after 3 runs)"
        assert set(rows["reason"]) == {f"{why}; re-run to resume it"}
        assert f"{why}: a re-run resumes it" in problems
    assert wide.loc[wide["item"] == len(FILES), "status"].item() == "rejected"  # the nameless image
    assert list(wide["item"]) == list(range(1, len(FILES) + 1)) and tidy.empty
    assert "Ada" not in wide.to_csv()  # no names without the privacy options
