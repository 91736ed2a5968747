"""What a crash leaves half-written must not damage what comes after: a torn journal line, and report values that
hold the characters CSV uses to end rows; and input files that are cut short are refused with their name."""

from __future__ import annotations

import gzip
import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.errors import InputError
from tasks.journal import Journal
from tasks.tables import iter_table_chunks, write_table


@pytest.mark.parametrize(
    ("tail", "kept"),
    [
        ('{"t":"b","x":"to', []),  # cut inside the record: dropped, as readers already did
        ('{"t":"b"}', [{"t": "b"}]),  # cut just before its newline: complete, so readers kept it; still kept
    ],
    ids=["torn-record", "missing-newline"],
)
def test_an_append_after_a_torn_last_line_is_not_glued_to_it(tmp_path, tail, kept):
    path = tmp_path / "j.jsonl"
    path.write_text('{"t":"a"}\n' + tail)
    before = Journal(str(path)).read()
    assert before == [{"t": "a"}, *kept]
    journal = Journal(str(path))
    journal.append({"t": "c"})
    journal.append({"t": "d"})
    # each acknowledged append is readable, and the journal is not reported as damaged
    assert Journal(str(path)).read() == [*before, {"t": "c"}, {"t": "d"}]


def test_a_torn_record_longer_than_the_read_block_is_found(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"t":"a"}\n{"t":"big","x":"' + "y" * 200_000)  # no newline for 200 KB
    Journal(str(path)).append({"t": "c"})
    assert Journal(str(path)).read() == [{"t": "a"}, {"t": "c"}]


def test_csv_report_values_with_carriage_returns_and_newlines_stay_in_their_row(tmp_path):
    names = ["a\rb", "c\nd", "e\r\nf", 'quote " and, comma', "plain"]
    path = tmp_path / "report.csv"
    write_table(pd.DataFrame({"name": names, "n": range(5)}), str(path))
    back = pd.read_csv(path)
    assert list(back["name"]) == names and list(back["n"]) == list(range(5))


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"a": [1, 2, 3]}), buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "cut.csv.gz",
            _half(gzip.compress(b"a,b\n" + b"1,2\n" * 10_000)),
            "cannot be read as gzipped CSV: EOFError",
        ),
        ("bad.csv.gz", b"\x1f\x8b" + b"\x00" * 30, "cannot be read as gzipped CSV"),
        ("cut.parquet", _half(_parquet_bytes()), "cannot be read as Parquet"),
        ("bad.jsonl", b'{"a": 1}\n{not json\n', "cannot be read as JSON Lines"),
        ("latin1.csv", "a,b\n\xe9t\xe9,1\n".encode("latin-1"), "cannot be read as CSV: UnicodeDecodeError"),
        ("empty.csv", b"", "cannot be read as CSV: EmptyDataError"),
    ],
    ids=["cut-gzip", "bad-gzip", "cut-parquet", "bad-jsonl", "latin1-csv", "empty-csv"],
)
def test_unreadable_files_raise_input_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=rf"{name} {message}"):
        list(iter_table_chunks(str(path)))
