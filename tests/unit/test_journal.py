"""The journal survives crashes: complete records are read back in order, a torn tail is ignored."""

from __future__ import annotations

import asyncio
import multiprocessing
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


def test_two_s3_writers_on_one_prefix_lose_nothing_and_keep_their_own_order():
    s3 = FakeS3()
    a, b = Journal("s3://bucket/index", s3_client=s3), Journal("s3://bucket/index", s3_client=s3)
    for n in range(3):  # both opened the prefix at the same count: their sequence numbers meet
        a.append({"w": "a", "n": n})
        b.append({"w": "b", "n": n})
    records = Journal("s3://bucket/index", s3_client=s3).read()
    assert len(records) == 6 == len(s3.objects)
    assert (
        [r["n"] for r in records if r["w"] == "a"] == [0, 1, 2] == [r["n"] for r in records if r["w"] == "b"]
    )


def _append_many(path: str, writer: str) -> None:
    journal = Journal(path)
    for n in range(200):
        journal.append({"w": writer, "n": n, "pad": "x" * 3000})  # a record bigger than a pipe's atomic write


def test_processes_appending_to_one_local_journal_write_whole_records(tmp_path):
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w)) for w in "abc"]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    records = Journal(path).read()
    assert sorted((r["w"], r["n"]) for r in records) == [(w, n) for w in "abc" for n in range(200)]


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
