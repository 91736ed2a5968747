"""How the migration flow rebuilds its state from the journal after a crash."""

from __future__ import annotations

import pytest

from emulators.micrio.backend import source_identity
from flows.micrio_migration.folder_index import FolderIndex, folder_index_location
from flows.micrio_migration.items import Item
from flows.micrio_migration.parameters import ExistingFolder, NewFolder
from flows.micrio_migration.run_journal import replay
from flows.micrio_migration.sources import _manifest_item, source_kind, url_identity
from tasks.micrio import micrio_format_problem


def items(*keys):
    return {k: Item(row=i, key=k, name=None) for i, k in enumerate(keys, 1)}


def test_added_images_are_not_added_again_and_finals_are_kept():
    state = items("a", "b", "c")
    r = replay(
        [
            {"t": "intent", "batch": 0, "keys": ["a", "b"]},
            {"t": "added", "batch": 0, "ids": {"a": "ID_A", "b": "ID_B"}, "failed": {}},
            {"t": "final", "items": [["a", "ID_A", "ready", None, 10, 20, "http://t/a.jpg"]]},
        ],
        state,
    )
    assert r.unknown == [] and r.next_batch == 1
    assert state["a"].status == "ready" and state["a"].width == 10 and not state["a"].needs_add(3)
    assert state["b"].in_flight() and not state["b"].needs_add(3)
    assert state["c"].needs_add(3) and state["c"].attempts == 0


def test_a_batch_with_intent_but_no_ids_was_in_flight_at_the_crash():
    state = items("a", "b", "c")
    r = replay(
        [
            {"t": "intent", "batch": 0, "keys": ["a"]},
            {"t": "added", "batch": 0, "ids": {"a": "ID_A"}, "failed": {}},
            {"t": "intent", "batch": 1, "keys": ["b", "c"]},
        ],
        state,
    )
    assert r.unknown == ["b", "c"] and r.next_batch == 2
    assert state["b"].needs_add(1) and state["b"].attempts == 0  # a crash is not a refusal: no attempt used


def test_transient_error_is_retried_until_attempts_run_out_and_final_errors_are_not():
    state = items("t", "f")
    replay(
        [
            {"t": "intent", "batch": 0, "keys": ["t", "f"]},
            {"t": "added", "batch": 0, "ids": {"t": "T1", "f": "F1"}, "failed": {}},
            {
                "t": "final",
                "items": [
                    ["t", "T1", "error", "uploadError", None, None, None],
                    ["f", "F1", "error", "originalNotFound", None, None, None],
                ],
            },
        ],
        state,
    )
    assert state["t"].needs_add(2) and not state["t"].needs_add(1)
    assert not state["f"].needs_add(5) and state["f"].finished(5)


def test_a_refused_add_does_not_use_up_an_attempt():
    state = items("a")
    replay(
        [
            {"t": "intent", "batch": 0, "keys": ["a"]},
            {"t": "added", "batch": 0, "ids": {}, "failed": {"a": "HTTP 503"}},
        ],
        state,
    )
    assert state["a"].attempts == 0 and state["a"].needs_add(1)


def test_manifest_rows_are_checked():
    seen: dict[str, int] = {}
    assert _manifest_item(1, "https://x/a.jpg", "  A ", seen).name == "A"
    again = _manifest_item(2, "https://x/a.jpg", None, seen)
    assert (again.skipped, again.source) == (
        "duplicate of row 1",
        "https://x/a.jpg",
    )  # by design, not an error
    assert "whitespace" in _manifest_item(3, "https://x/a b.jpg", None, seen).rejected
    assert _manifest_item(4, float("nan"), None, seen).rejected == "source_url is empty"
    ftp = _manifest_item(5, "ftp://x/y.jpg", None, seen)
    assert ftp.rejected and ftp.source == "ftp://x/y.jpg"  # the offending source is echoed
    s3 = _manifest_item(6, "s3://bucket/k.jpg", float("nan"), seen)
    assert s3.url is None and not s3.checked  # checked by content, then presigned when added


def test_an_s3_uri_that_names_no_table_file_is_a_prefix():
    assert source_kind("s3://b/photos") == ("prefix", "s3://b/photos/")
    assert source_kind("s3://b/photos/") == ("prefix", "s3://b/photos/")
    assert source_kind("s3://b") == ("prefix", "s3://b/")
    assert source_kind("s3://b/lists/m.csv.gz") == ("manifest", "s3://b/lists/m.csv.gz")
    assert source_kind("s3://b/lists/m.parquet") == ("manifest", "s3://b/lists/m.parquet")
    assert source_kind("lists/m.txt") == ("manifest", "lists/m.txt")  # a local file: refused as a table later


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(28), None),
        (b"\x89PNG\r\n\x1a\n" + bytes(24), None),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(16), None),
        (b"II*\x00" + bytes(28), None),  # TIFF, and RAW files built on it
        (b"8BPS\x00\x01" + bytes(26), None),  # Photoshop
        (b"GIF89a" + bytes(26), "GIF is not a format Micrio accepts"),
        (b"<html>not an image</html>", "not an image: not a recognised image format"),
        (b"", "not an image: empty (0 bytes)"),
    ],
)
def test_sources_are_judged_by_content(head, problem):
    got = micrio_format_problem(head)
    assert got == problem if problem is None else got.startswith(problem)


def test_url_identity_ignores_spelling_and_presigning():
    a = url_identity("HTTPS://Photos.Example.org:443/a/b.jpg?X-Amz-Signature=s1&X-Amz-Expires=5&v=2#top")
    b = url_identity("https://photos.example.org/a/b.jpg?v=2&X-Amz-Signature=s2")
    assert a == b == "https://photos.example.org/a/b.jpg?v=2"
    assert url_identity("http://h:8080/x.jpg") != url_identity("http://h/x.jpg")


def test_the_folder_index_lives_beside_the_journal():
    assert folder_index_location("state/run.jsonl", "abcdef") == "state/folders/abcdef.jsonl"
    assert folder_index_location("run.jsonl", "abcdef") == "./folders/abcdef.jsonl"
    assert folder_index_location("s3://b/state/run/", "abcdef") == "s3://b/state/folders/abcdef/"


async def test_the_folder_index_knows_what_other_runs_added(tmp_path):
    location = str(tmp_path / "folders" / "abcdef.jsonl")
    prefix_run = FolderIndex(location, None, run="prefix.jsonl", source="s3://b/p/")
    await prefix_run.add({"s3://b/p/a.jpg#e1": "ID_A", "s3://b/p/b.jpg#e2": "ID_B"})
    await prefix_run.gone({"s3://b/p/b.jpg#e2": "ID_B"})  # ended in error: may be added again
    manifest_run = FolderIndex(location, None, run="manifest.jsonl", source="m.csv")
    manifest_run.load()
    assert "ID_A" in manifest_run.elsewhere("s3://b/p/a.jpg#e1") and "s3://b/p/" in manifest_run.elsewhere(
        "s3://b/p/a.jpg#e1"
    )
    assert manifest_run.elsewhere("s3://b/p/b.jpg#e2") is None
    assert manifest_run.elsewhere("s3://b/p/a.jpg#NEW-ETAG") is None  # overwritten: a new image
    again = FolderIndex(location, None, run="prefix.jsonl", source="s3://b/p/")
    again.load()
    assert again.elsewhere("s3://b/p/a.jpg#e1") is None  # its own additions are the journal's business


def test_retry_records_make_failed_images_new_again():
    state = items("s3://b/f.jpg")
    replay(
        [
            {"t": "intent", "batch": 0, "keys": ["s3://b/f.jpg"], "identities": ["s3://b/f.jpg#e"]},
            {"t": "added", "batch": 0, "ids": {"s3://b/f.jpg": "F1"}, "failed": {}},
            {"t": "final", "items": [["s3://b/f.jpg", "F1", "error", "originalNotFound", None, None, None]]},
        ],
        state,
    )
    item = state["s3://b/f.jpg"]
    assert item.failed_final(3) and item.identity == "s3://b/f.jpg#e"
    replay([{"t": "retry", "keys": ["s3://b/f.jpg"]}], state)
    assert item.needs_add(3) and not item.checked and item.identity is None and item.micrio_id is None


def test_the_target_is_one_of_two_choices():
    assert ExistingFolder.model_validate({"folder_id": "abcdef"}).kind == "existing"
    new = NewFolder.model_validate({"parent_id": "abcdef", "name": "Archive", "type": "album"})
    assert (new.kind, new.name) == ("new", "Archive")
    with pytest.raises(ValueError):
        ExistingFolder.model_validate({"folder_id": "abcdef", "parent_id": "ghijkl"})  # not both


def test_emulator_counts_a_re_presigned_object_as_the_same_source():
    a = "http://h/b/k.jpg?AWSAccessKeyId=x&Signature=s1&Expires=1"
    b = "http://h/b/k.jpg?X-Amz-Algorithm=y&X-Amz-Signature=s2&X-Amz-Expires=5"
    assert source_identity(a) == source_identity(b) == "http://h/b/k.jpg"
    assert source_identity("http://h/img?id=5") == "http://h/img?id=5"
