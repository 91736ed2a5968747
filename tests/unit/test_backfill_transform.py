"""Unit tests of the Miniviz backfill transform (flows/miniviz_backfill/): rows -> events / rejections.

Plus the pieces that make resuming exact: the sent-index replay of the journal and the sender's bound on
unjournaled events (a fake client, no network).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clients.errors import InputError
from clients.miniviz import check_label_key, check_payload, check_timestamp_ms, payload_bytes
from flows.miniviz_backfill import (
    BackfillSpec,
    DeadLetterWriter,
    IntervalSet,
    LabelMapper,
    SentIndex,
    datetime_to_ms,
    file_id,
    iter_file_results,
    map_label_key,
    resample_milliseconds,
    split_payload,
    to_unix_ms,
    transform_frame,
)
from flows.miniviz_backfill.plan import scan_backfill
from tasks.journal import Journal
from tasks.miniviz import seq_ranges

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MIN = 60_000


def ms_of(values, unit="auto", tz="UTC", fmt=""):
    ms, codes = to_unix_ms(pd.Series(values), unit, tz, fmt)
    return [int(m) if c is None else c for m, c in zip(ms, codes, strict=True)]


def frame(n=3, **extra):
    data = {
        "timestamp": [T0 + i * MIN for i in range(n)],
        "label_key": ["s1"] * n,
        "t": [20.0 + i for i in range(n)],
    }
    data.update(extra)
    return pd.DataFrame(data)


def assert_sendable(events):
    """Every event passes the client's own documented checks."""
    for e in events:
        check_label_key(e.label_key)
        check_timestamp_ms(e.timestamp)
        check_payload(e.payload)


# --- timestamps -----------------------------------------------------------------------------------------


def test_iso_strings_with_offsets_and_z():
    got = ms_of(["2024-01-01T00:00:00Z", "2024-01-01T02:00:00+02:00", "2024-01-01 00:00:00.250+00:00"])
    assert got == [T0, T0, T0 + 250]


def test_naive_iso_times_are_read_in_the_given_time_zone():
    # Paris is UTC+1 in January and UTC+2 in July
    got = ms_of(["2024-01-01T01:00:00", "2024-07-01T02:00:00", "2024-07-01T00:00:00Z"], tz="Europe/Paris")
    assert got[0] == T0
    assert got[1] == got[2] == int(pd.Timestamp("2024-07-01T00:00:00Z").value // 10**6)
    # the same naive text in UTC
    assert ms_of(["2024-01-01T01:00:00"]) == [T0 + 60 * MIN]


def test_dst_gap_and_ambiguous_local_times_are_rejected_not_moved():
    got = ms_of(["2024-03-31T02:30:00", "2024-10-27T02:30:00", "2024-10-27T04:30:00"], tz="Europe/Paris")
    assert got[:2] == ["timestamp_local_time", "timestamp_local_time"]
    assert got[2] == int(pd.Timestamp("2024-10-27T03:30:00Z").value // 10**6)


def test_epoch_seconds_and_milliseconds_are_told_apart_by_magnitude():
    s = 1_704_067_200
    assert ms_of([s, s * 1000, s * 1_000_000, s * 1_000_000_000]) == [T0] * 4
    assert ms_of([s + 0.5, float(s * 1000 + 7)]) == [T0 + 500, T0 + 7]
    # epoch numbers written as text (CSV with some bad values is read as text)
    assert ms_of([str(s), str(s * 1000), "1704067200123456789", "x"]) == [
        T0,
        T0,
        T0 + 123,
        "timestamp_invalid",
    ]


def test_explicit_epoch_units():
    s = 1_704_067_200
    assert ms_of([s], "s") == [T0]
    assert ms_of([s * 1000], "ms") == [T0]
    assert ms_of([s * 1000], "s") == ["timestamp_out_of_range"]  # ms read as seconds: year 55,000
    assert ms_of([s], "ms") == [s]  # seconds read as ms: 1970-01-20, a real date (the user said ms)
    assert ms_of(["2024-01-01"], "s") == ["timestamp_invalid"]
    assert ms_of(["2024-01-01", s], fmt="ISO8601") == [T0, "timestamp_invalid"]


def test_missing_garbage_and_out_of_range_timestamps():
    got = ms_of(["2024-01-01T00:00:00Z", None, "yesterday", "1999-12-31T23:00:00Z", "6000-01-01T00:00:00Z"])
    assert got == [T0, "timestamp_missing", "timestamp_invalid", 946_681_200_000, 127_174_492_800_000]
    assert ms_of([10**17 * 1000], "s") == ["timestamp_out_of_range"]  # no calendar date
    assert ms_of([float("nan"), float("inf")]) == ["timestamp_missing", "timestamp_invalid"]


def test_datetime_columns_naive_and_aware():
    naive = pd.Series(pd.to_datetime(["2024-01-01 01:00", None]))
    assert ms_of(naive, tz="Europe/Paris") == [T0, "timestamp_missing"]
    aware = pd.Series(pd.to_datetime(["2024-01-01 01:00"]).tz_localize("Europe/Paris"))
    assert ms_of(aware, tz="America/New_York") == [T0]


def test_time_range_bounds_in_a_time_zone():
    assert datetime_to_ms(dt.datetime(2024, 1, 1, 1), "Europe/Paris") == T0
    assert datetime_to_ms(dt.datetime(2024, 1, 1, tzinfo=dt.UTC), "Europe/Paris") == T0
    assert datetime_to_ms(None, "UTC") is None


# --- labels ---------------------------------------------------------------------------------------------


def test_valid_labels_pass_unchanged():
    for label in ["sensor_1", "room-2.a", "site:@/x", "A" * 128]:
        assert map_label_key(label) == label


def test_labels_are_mapped_into_the_allowed_characters_stably():
    assert map_label_key("Room 1") == "Room_1"
    assert map_label_key("  Küche  ") == "Kuche"
    a, b = map_label_key("温度"), map_label_key("湿度")
    assert a != b and a.startswith("__-") and map_label_key("温度") == a  # distinct and stable
    assert map_label_key("a#b") != map_label_key("a$b")
    long = map_label_key("x" * 300)
    assert len(long) == 128 and long != map_label_key("x" * 299) and long == map_label_key("x" * 300)
    for label in [a, b, long, map_label_key("a#b"), map_label_key("é" * 200)]:
        assert check_label_key(label)


def test_label_numbers_and_empties():
    assert map_label_key(17) == "17" and map_label_key(17.0) == "17" and map_label_key(np.int64(3)) == "3"
    assert map_label_key(2.5) == "2.5"
    for empty in [None, float("nan"), "", "   ", pd.NA]:
        assert map_label_key(empty) is None


def test_label_mapper_reports_changes_and_collisions():
    mapper = LabelMapper()
    assert [mapper(v) for v in ["ok", "Room 1", "Room_1", "Room 1"]] == ["ok", "Room_1", "Room_1", "Room_1"]
    assert mapper.changed == {"Room 1": "Room_1"}
    assert mapper.collisions == {"Room_1": {"Room 1", "Room_1"}}


def test_label_column_and_fixed_label_in_the_transform():
    df = frame(3, label_key=["Room 1", None, "ok"])
    result = transform_frame(df, BackfillSpec())
    assert [e.label_key for e in result.events] == ["Room_1", "ok"]
    assert [(r.row, r.reason) for r in result.rejections] == [(1, "label_missing")]
    fixed = transform_frame(df, BackfillSpec(label_key="greenhouse_1", metrics=("t",)))
    assert [e.label_key for e in fixed.events] == ["greenhouse_1"] * 3


# --- values ---------------------------------------------------------------------------------------------


def test_booleans_become_1_and_0_and_nan_drops_the_key():
    df = frame(3, on=[True, False, True], h=[np.nan, 40.0, 41.0])
    events = transform_frame(df, BackfillSpec()).events
    assert [e.payload for e in events] == [
        {"t": 20.0, "on": 1},
        {"t": 21.0, "on": 0, "h": 40.0},
        {"t": 22.0, "on": 1, "h": 41.0},
    ]
    # a boolean column with gaps is read as objects
    df = frame(3, on=[True, None, False])
    assert [e.payload.get("on") for e in transform_frame(df, BackfillSpec()).events] == [1, None, 0]
    # nullable integers
    df = frame(2, count=pd.array([5, None], dtype="Int64"))
    assert [e.payload for e in transform_frame(df, BackfillSpec()).events] == [
        {"t": 20.0, "count": 5},
        {"t": 21.0},
    ]


def test_unsendable_values_reject_the_row_with_a_reason_naming_the_column():
    df = frame(
        6,
        extra=[[1, 2], {"a": 1}, np.array([1.0]), b"raw", "fine", 3],
        inf=[1.0, 1.0, 1.0, 1.0, 1.0, float("inf")],
    )
    result = transform_frame(df, BackfillSpec())
    reasons = {r.row: (r.reason, r.detail) for r in result.rejections}
    assert {row: code for row, (code, _) in reasons.items()} == {
        0: "value_nested",
        1: "value_nested",
        2: "value_nested",
        3: "value_unsupported",
        5: "value_not_finite",
    }
    assert "extra=[1, 2] (list)" in reasons[0][1] and "inf" in reasons[5][1]
    assert [e.payload for e in result.events] == [{"t": 24.0, "extra": "fine", "inf": 1.0}]
    assert result.rejections[0].data["extra"] == [1, 2]  # the source row goes to the dead letters


def test_text_and_datetime_metrics_are_sent_as_strings():
    df = frame(2, status=["ok", "low battery"], seen=pd.to_datetime(["2024-01-01 10:00", None]))
    events = transform_frame(df, BackfillSpec()).events
    assert events[0].payload == {"t": 20.0, "status": "ok", "seen": "2024-01-01T10:00:00"}
    assert events[1].payload == {"t": 21.0, "status": "low battery"}


def test_a_row_with_no_metric_left_is_rejected():
    df = frame(2, t=[np.nan, 1.0])
    result = transform_frame(df, BackfillSpec())
    assert [(r.row, r.reason) for r in result.rejections] == [(0, "no_metrics")]
    assert len(result.events) == 1


@pytest.mark.parametrize("chunk_rows", [1, 2, 10])
def test_exact_repeats_are_rejected_as_duplicates_whatever_the_chunking(chunk_rows):
    df = pd.DataFrame(
        {
            "timestamp": [T0, T0, T0 + MIN, T0, T0, T0],
            "label_key": ["s1", "s1", "s1", "s2", "s1", "s1"],
            "t": [1.0, 1.0, 1.0, 1.0, 2.0, 1.0],
        }
    )
    result = transform_frame(df, BackfillSpec(), chunk_rows=chunk_rows)
    assert [r.row for r in result.events] == [0, 2, 3, 4]  # other time, other label, other value: kept
    assert [(r.row, r.reason) for r in result.rejections] == [(1, "duplicate"), (5, "duplicate")]


def test_repeats_are_found_across_many_chunks_as_the_seen_rows_grow():
    # 12,000 distinct rows, then every 7th of them again: the seen-row array grows several times in between
    n = 12_000
    first = pd.DataFrame({"timestamp": T0 + np.arange(n) * MIN, "label_key": "s1", "t": np.arange(n) % 13})
    again = first.iloc[::7]
    result = transform_frame(pd.concat([first, again], ignore_index=True), BackfillSpec(), chunk_rows=1_000)
    assert len(result.events) == n
    assert [r.row for r in result.rejections] == list(range(n, n + len(again)))
    assert {r.reason for r in result.rejections} == {"duplicate"}


def test_csv_text_cells_are_typed_per_value_not_per_chunk(tmp_path):
    path = tmp_path / "mixed.csv"
    pd.DataFrame(
        {"timestamp": [T0, T0 + MIN, T0 + 2 * MIN], "label_key": "s1", "v": ["1", "abc", "true"]}
    ).to_csv(path, index=False)
    for chunk_rows in (1, 3):  # alone, "1" is read as a number; next to "abc", as text
        events = [e for r in iter_file_results(str(path), BackfillSpec(), chunk_rows) for e in r.events]
        assert [e.payload["v"] for e in events] == [1, "abc", 1]


def test_select_and_rename_metrics():
    df = frame(2, h=[1, 2], junk=["x", "y"])
    spec = BackfillSpec(metrics=("t", "h"), rename=(("t", "temperature"),))
    assert [e.payload for e in transform_frame(df, spec).events] == [
        {"temperature": 20.0, "h": 1},
        {"temperature": 21.0, "h": 2},
    ]
    with pytest.raises(InputError, match="two columns would become"):
        transform_frame(df, BackfillSpec(metrics=("t", "h"), rename=(("t", "h"),)))
    with pytest.raises(InputError, match="not in the file"):
        transform_frame(df, BackfillSpec(metrics=("nope",)))
    with pytest.raises(InputError, match="not in the file"):
        transform_frame(df, BackfillSpec(timestamp_column="time"))


# --- size: split or reject ------------------------------------------------------------------------------


def test_more_than_8_metrics_split_deterministically_in_column_order():
    wide = {f"m{i}": [float(i)] for i in range(11)}
    df = pd.DataFrame({"timestamp": [T0], "label_key": ["s1"], **wide})
    first = transform_frame(df, BackfillSpec())
    again = transform_frame(df, BackfillSpec())
    assert [(e.seq, e.part, e.payload) for e in first.events] == [
        (e.seq, e.part, e.payload) for e in again.events
    ]
    assert [list(e.payload) for e in first.events] == [[f"m{i}" for i in range(8)], ["m8", "m9", "m10"]]
    assert {(e.label_key, e.timestamp, e.row) for e in first.events} == {("s1", T0, 0)}
    assert_sendable(first.events)


def test_rows_over_400_bytes_split_by_size():
    texts = {f"note{i}": ["x" * 120] for i in range(5)}  # ~5 x 130 bytes
    df = pd.DataFrame({"timestamp": [T0], "label_key": ["s1"], **texts})
    events = transform_frame(df, BackfillSpec()).events
    assert len(events) == 2 and [e.part for e in events] == [0, 1]
    assert all(payload_bytes(e.payload) <= 400 for e in events)
    merged = {k: v for e in events for k, v in e.payload.items()}
    assert merged == {k: v[0] for k, v in texts.items()}
    assert_sendable(events)


def test_split_payload_packs_greedily_and_exactly_to_the_limit():
    payload = {"a": "x" * 190, "b": "y" * 190, "c": 1}
    parts = split_payload(payload)
    assert parts == [{"a": "x" * 190, "b": "y" * 190}, {"c": 1}]
    assert payload_bytes(parts[0]) == 2 + 196 + 1 + 196 - 0 and payload_bytes(parts[0]) <= 400
    assert split_payload({"big": "z" * 400}) == "value_too_big"
    assert split_payload({f"k{i}": i for i in range(17)}) == [
        {f"k{i}": i for i in range(8)},
        {f"k{i}": i for i in range(8, 16)},
        {"k16": 16},
    ]


def test_oversize_reject_and_unsplittable_values():
    wide = pd.DataFrame({"timestamp": [T0], "label_key": ["s1"], **{f"m{i}": [i] for i in range(9)}})
    result = transform_frame(wide, BackfillSpec(oversize="reject"))
    assert not result.events and [r.reason for r in result.rejections] == ["too_many_metrics"]
    big = frame(1, note=["n" * 390])
    result = transform_frame(big, BackfillSpec(oversize="reject"))
    assert [r.reason for r in result.rejections] == ["payload_too_big"]
    huge = frame(1, note=["n" * 500])
    result = transform_frame(huge, BackfillSpec())
    assert [r.reason for r in result.rejections] == ["value_too_big"] and "note" in result.rejections[
        0
    ].detail


# --- time range, numbering ------------------------------------------------------------------------------


def test_time_range_start_inclusive_end_exclusive_counted_not_rejected():
    df = frame(5)
    result = transform_frame(df, BackfillSpec(start_ms=T0 + MIN, end_ms=T0 + 3 * MIN))
    assert [e.timestamp for e in result.events] == [T0 + MIN, T0 + 2 * MIN]
    assert result.out_of_range_by_label == {"s1": 3} and not result.rejections


def test_rows_and_seqs_are_numbered_across_chunks():
    wide = {f"m{i}": [float(i)] * 5 for i in range(9)}  # every row splits in two
    stamps = [str(T0 + i * MIN) for i in range(5)]
    stamps[2] = "bad"
    df = pd.DataFrame({"timestamp": stamps, "label_key": ["s1"] * 5, **wide})
    whole = transform_frame(df, BackfillSpec())
    chunked = transform_frame(df, BackfillSpec(), chunk_rows=2)
    key = [(e.seq, e.row, e.part, e.timestamp) for e in whole.events]
    assert key == [(e.seq, e.row, e.part, e.timestamp) for e in chunked.events]
    assert [e.seq for e in whole.events] == list(range(8))
    assert [r.row for r in chunked.rejections] == [2]


def test_every_event_passes_the_client_checks():
    rng = np.random.default_rng(1)
    n = 300
    df = pd.DataFrame(
        {
            "timestamp": [T0 + i * 1000 for i in range(n)],
            "label_key": [f"dev {i % 7} ü" for i in range(n)],
            **{f"metric_{k}": rng.normal(size=n) for k in range(10)},
            "note": ["ok" * int(rng.integers(0, 90)) for _ in range(n)],
            "flag": rng.integers(0, 2, n).astype(bool),
        }
    )
    df.loc[df.index % 5 == 0, "metric_3"] = np.nan
    result = transform_frame(df, BackfillSpec(), chunk_rows=64)
    assert len({e.row for e in result.events}) == n and not result.rejections
    assert_sendable(result.events)


# --- resampling -----------------------------------------------------------------------------------------


def as_set(result):
    return sorted((e.label_key, e.timestamp, json.dumps(e.payload, sort_keys=True)) for e in result.events)


def minute_data(minutes=60, labels=("a", "b")):
    rows = []
    for i in range(minutes):
        for j, label in enumerate(labels):
            rows.append(
                {"timestamp": T0 + i * MIN, "label_key": label, "t": float(i + 100 * j), "state": f"s{i}"}
            )
    return pd.DataFrame(rows)


def test_resampling_means_per_label_and_bucket():
    df = minute_data(30)
    spec = BackfillSpec(resample_ms=15 * MIN)
    events = transform_frame(df, spec).events
    assert [(e.timestamp, e.label_key) for e in events] == [
        (T0, "a"),
        (T0, "b"),
        (T0 + 15 * MIN, "a"),
        (T0 + 15 * MIN, "b"),
    ]
    assert events[0].payload == {"t": 7.0, "state": "s14"}  # mean of 0..14; text: the last value
    assert events[3].payload == {"t": 122.0, "state": "s29"}
    assert [e.row for e in events] == [0, 1, 30, 31]  # first source row of each bucket
    assert_sendable(events)


@pytest.mark.parametrize("chunk_rows", [1, 7, 13, 29, 100])
def test_resampling_across_chunk_boundaries_matches_the_whole_file(chunk_rows):
    df = minute_data(47, labels=("a", "b", "c"))
    df.loc[df.index % 11 == 0, "t"] = np.nan  # gaps inside buckets
    spec = BackfillSpec(resample_ms=15 * MIN, resample_how="mean")
    whole = transform_frame(df, spec)
    chunked = transform_frame(df, spec, chunk_rows=chunk_rows)
    assert as_set(chunked) == as_set(whole)
    assert len(whole.events) == 4 * 3  # buckets 0, 15, 30, 45 for each label
    assert not chunked.rejections
    # and the means are those of pandas over the whole frame
    expected = df.assign(b=df.timestamp // (15 * MIN) * (15 * MIN)).groupby(["label_key", "b"])["t"].mean()
    for e in chunked.events:
        assert e.payload["t"] == pytest.approx(expected[(e.label_key, e.timestamp)])


def test_resampling_with_labels_in_blocks_not_interleaved():
    df = pd.concat([minute_data(40, labels=("a",)), minute_data(40, labels=("b",))], ignore_index=True)
    spec = BackfillSpec(resample_ms=15 * MIN, resample_how="max")
    whole = transform_frame(df, spec)
    chunked = transform_frame(df, spec, chunk_rows=9)
    assert sorted((e.label_key, e.timestamp, e.payload["t"]) for e in chunked.events) == sorted(
        (e.label_key, e.timestamp, e.payload["t"]) for e in whole.events
    )
    assert len(whole.events) == 6


def test_a_row_for_an_already_sent_bucket_is_rejected_as_out_of_order():
    df = minute_data(40, labels=("a",))
    late = pd.DataFrame([{"timestamp": T0 + 2 * MIN, "label_key": "a", "t": 999.0, "state": "late"}])
    df = pd.concat([df, late], ignore_index=True)
    result = transform_frame(df, BackfillSpec(resample_ms=15 * MIN), chunk_rows=10)
    assert [(r.row, r.reason) for r in result.rejections] == [(40, "out_of_order")]
    assert [e.payload["t"] for e in result.events] == [7.0, 22.0, 34.5]


def test_resample_frequency_parsing():
    assert resample_milliseconds("15min") == 15 * MIN and resample_milliseconds("1h") == 60 * MIN
    assert resample_milliseconds(None) is None and resample_milliseconds("") is None
    for bad in ["1M", "soon", "10ms"]:
        with pytest.raises(InputError):
            resample_milliseconds(bad)


# --- parameters -----------------------------------------------------------------------------------------


def test_spec_checks_and_fingerprint():
    with pytest.raises(InputError, match="unknown time zone"):
        BackfillSpec(timezone="Mars/Olympus").check()
    with pytest.raises(InputError, match="label_key"):
        BackfillSpec(label_key="bad label").check()
    with pytest.raises(InputError, match="start"):
        BackfillSpec(start_ms=2, end_ms=1).check()
    a, b = BackfillSpec(), BackfillSpec(timezone="Europe/Paris")
    assert a.fingerprint() == BackfillSpec().fingerprint() != b.fingerprint()
    assert BackfillSpec(metrics=("t",)).read_columns() == ["timestamp", "label_key", "t"]


# --- journal replay and dead letters --------------------------------------------------------------------


def test_ranges_and_interval_set():
    assert seq_ranges([5, 3, 4, 9]) == [[3, 6], [9, 10]]
    s = IntervalSet()
    for start, end in [(10, 12), (0, 3), (3, 5), (20, 21), (11, 21)]:
        s.add(start, end)
    assert (s.starts, s.ends) == ([0, 10], [5, 21])
    assert 4 in s and 5 not in s and 20 in s and 21 not in s and s.count() == 16


def test_sent_index_replays_the_journal_and_tolerates_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal(str(path))
    journal.append(
        {"t": "run", "spec": "abc"},
        {"t": "file", "f": "f1", "path": "a.csv", "fp": {"size": 1}},
        {"t": "sent", "f": "f1", "r": [[0, 3]]},
        {"t": "sent", "f": "f1", "r": [[4, 5]]},
    )
    with open(path, "a") as fh:
        fh.write('{"t": "sent", "f": "f1", "r": [[3, 4')  # killed mid-write
    index = SentIndex.load(journal)
    assert [index.is_sent("f1", i) for i in range(6)] == [True, True, True, False, True, False]
    assert (
        index.sent_count("f1") == 4 and index.fingerprints == {"f1": {"size": 1}} and index.specs == {"abc"}
    )
    assert len(list(journal.records())) == 4
    assert list(Journal(str(tmp_path / "none.jsonl")).records()) == []


def test_dead_letter_file_streams_rows_with_reasons(tmp_path):
    df = frame(3, label_key=["s1", None, "s1"], extra=[1, [1, 2], 3])
    result = transform_frame(df, BackfillSpec())
    writer = DeadLetterWriter(str(tmp_path / "dl.csv"))
    writer.rejected("in.csv", result.rejections)
    writer.failed("in.csv", result.events[0], "HTTP 503")
    writer.close()
    dl = pd.read_csv(tmp_path / "dl.csv")
    assert dl[["row", "status", "reason"]].values.tolist() == [
        [1, "rejected", "label_missing"],
        [0, "failed", "send_failed"],
    ]
    assert json.loads(dl.data[0])["extra"] == [1, 2]


async def test_scan_task_counts_each_file_and_writes_its_rejected_rows_to_the_dead_letters(tmp_path):
    good, other, broken = tmp_path / "good.csv", tmp_path / "other.csv", tmp_path / "broken.csv"
    frame(4, label_key=["s1", None, "s2", "s2"]).to_csv(good, index=False)
    pd.concat([frame(2), frame(2)]).to_csv(other, index=False)  # rows 2-3 repeat rows 0-1
    pd.DataFrame({"when": [T0], "t": [1.0]}).to_csv(broken, index=False)  # no timestamp column
    files = [str(good), str(other), str(broken)]
    sent = SentIndex([{"t": "sent", "f": file_id(str(good)), "r": [[0, 1]]}])
    writer = DeadLetterWriter(str(tmp_path / "dl.csv"))

    tally, fingerprints = await scan_backfill.fn(files, BackfillSpec(), 2, sent, writer)
    writer.close()

    counts = {
        (Path(source).name, label): {k: v for k, v in c.items() if v}
        for (source, label), c in tally.by_label.items()
    }
    assert counts == {
        ("good.csv", "s1"): {"rows": 1, "events": 1, "already_sent": 1},
        ("good.csv", ""): {"rows": 1, "rejected_rows": 1},
        ("good.csv", "s2"): {"rows": 2, "events": 2},
        ("other.csv", "s1"): {"rows": 4, "events": 2, "skipped_rows": 2},
    }
    assert tally.reasons == {"label_missing": 1, "duplicate": 2}
    assert tally.files == files and list(tally.file_errors) == [str(broken)]
    assert set(fingerprints) == {str(good), str(other)}  # an unreadable file gets no fingerprint
    dl = pd.read_csv(tmp_path / "dl.csv")
    assert dl[["source", "row", "status", "reason"]].values.tolist() == [
        [str(good), 1, "rejected", "label_missing"],
        [str(other), 2, "skipped", "duplicate"],
        [str(other), 3, "skipped", "duplicate"],
    ]
    assert writer.count == 3
