"""The journal survives crashes: complete records are read back in order, a torn tail is ignored."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tasks.journal import GroupCommit, Journal


def test_append_and_read_back_in_order(tmp_path):
    j = Journal(str(tmp_path / "sub" / "j.jsonl"))
    assert j.read() == []
    j.append({"a": 1}, {"a": 2})
    j.append({"a": 3})
    assert [r["a"] for r in Journal(j.location).read()] == [1, 2, 3]


def test_torn_last_line_is_ignored_but_damage_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"a":1}\n{"a":2}\n{"a":')
    assert Journal(str(path)).read() == [{"a": 1}, {"a": 2}]
    path.write_text('{"a":1}\nnot json\n{"a":2}\n')
    with pytest.raises(ValueError, match="line 2"):
        Journal(str(path)).read()


def test_records_appended_before_kill_9_survive(tmp_path):
    path = tmp_path / "j.jsonl"
    code = (
        "import os, signal\n"
        "from tasks.journal import Journal\n"
        f"j = Journal({str(path)!r})\n"
        "for i in range(50):\n"
        "    j.append({'i': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -9
    assert [r["i"] for r in Journal(str(path)).read()] == list(range(50))


class FakeS3:
    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def put_object(self, Bucket, Key, Body):
        self.objects[f"{Bucket}/{Key}"] = Body

    def get_object(self, Bucket, Key):
        import io

        return {"Body": io.BytesIO(self.objects[f"{Bucket}/{Key}"])}

    def get_paginator(self, name):
        s3 = self

        class P:
            def paginate(self, Bucket, Prefix):
                keys = sorted(k.split("/", 1)[1] for k in s3.objects if k.startswith(f"{Bucket}/{Prefix}"))
                yield {"Contents": [{"Key": k} for k in keys]}

        return P()


def test_s3_journal_writes_one_object_per_append_and_reads_them_in_order():
    s3 = FakeS3()
    j = Journal("s3://bucket/journals/run1", s3_client=s3)
    j.append({"a": 1})
    j.append({"a": 2}, {"a": 3})
    assert len(s3.objects) == 2
    again = Journal("s3://bucket/journals/run1/", s3_client=s3)
    assert [r["a"] for r in again.read()] == [1, 2, 3]
    again.append({"a": 4})
    assert [r["a"] for r in Journal("s3://bucket/journals/run1", s3_client=s3).read()] == [1, 2, 3, 4]


def test_s3_journal_needs_a_client():
    with pytest.raises(ValueError, match="S3 client"):
        Journal("s3://bucket/prefix")


# --- GroupCommit: the one way async code appends --------------------------------------------------------------


class CountingJournal(Journal):
    """A local journal that counts its writes and can be told to fail the next one."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.writes = 0
        self.fail_next = False

    def append(self, *records):
        self.writes += 1
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        super().append(*records)


async def test_group_commit_writes_concurrent_appends_together_in_order(tmp_path):
    journal = CountingJournal(str(tmp_path / "j.jsonl"))
    commit = GroupCommit(journal)
    await asyncio.gather(*(commit.append({"n": n}) for n in range(50)))
    assert [r["n"] for r in journal.read()] == list(range(50))
    assert journal.writes < 50 and commit.figures()["journal_commits"] == journal.writes


async def test_group_commit_failure_reaches_its_group_and_the_next_append_writes_again(tmp_path):
    journal = CountingJournal(str(tmp_path / "j.jsonl"))
    commit = GroupCommit(journal)
    journal.fail_next = True
    with pytest.raises(OSError, match="disk full"):
        await commit.append({"n": 1})
    await commit.append({"n": 2})
    assert journal.read() == [{"n": 2}]


async def test_a_cancelled_appender_does_not_strand_the_others(tmp_path):
    journal = CountingJournal(str(tmp_path / "j.jsonl"))
    commit = GroupCommit(journal)
    first = asyncio.create_task(commit.append({"n": 1}))  # starts the write
    await asyncio.sleep(0)
    others = [asyncio.create_task(commit.append({"n": n})) for n in (2, 3)]
    first.cancel()
    await asyncio.wait_for(asyncio.gather(*others), timeout=10)
    await commit.aclose()
    assert [r["n"] for r in journal.read()] == [1, 2, 3]  # a cancelled caller's record is still written


async def test_group_commit_pack_merges_a_group_and_no_journal_keeps_nothing(tmp_path):
    journal = CountingJournal(str(tmp_path / "j.jsonl"))
    commit = GroupCommit(journal, pack=lambda records: [{"sum": sum(r["n"] for r in records)}])
    await asyncio.gather(*(commit.append({"n": n}) for n in range(1, 11)))
    assert sum(r["sum"] for r in journal.read()) == 55 and len(journal.read()) == journal.writes
    await GroupCommit(None).append({"n": 1})  # a batch that need not resume
