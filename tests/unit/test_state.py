"""Where state lives (``StateRoot``) and how whole files of it are written (``Location``)."""

from __future__ import annotations

import os

import pytest

from clients.errors import InputError
from tasks.state import Location, StateRoot

# --- Location: files written whole ----------------------------------------------------------------------------


def test_location_replaces_a_file_whole_or_not_at_all(tmp_path):
    where = Location(str(tmp_path / "deep" / "state.json"))
    assert where.read_bytes() is None
    where.write_bytes(b"old")
    with pytest.raises(RuntimeError), where.writer() as fh:
        fh.write(b"half of the new")
        raise RuntimeError("crashed while writing")
    assert where.read_bytes() == b"old"
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["state.json"]  # no temp file left


def test_location_s3_needs_a_bucket_block_and_a_key():
    with pytest.raises(InputError, match="S3 bucket block"):
        Location("s3://bucket/state.json", field="state")
    with pytest.raises(InputError, match="not s3://bucket/key"):
        Location("s3://bucket/", object(), field="state")


def test_default_state_names_a_job_by_its_identity():
    root = StateRoot()
    a = root.location("flow", {"source": "x", "target": 1})
    assert a == root.location("flow", {"target": 1, "source": "x"}) != root.location("flow", {"source": "y"})
    assert a.startswith(".pipeline-state/flow/") and a.endswith(".jsonl")


def test_the_default_root_needs_no_setting_and_allows_every_path():
    root = StateRoot()
    root.check_local(["/etc/passwd", "../x.csv"], "source")  # the embedded default: a single user's machine
    assert root.location("f", "id").startswith(".pipeline-state/f/")
    assert root.report("micrio-migration").startswith("reports/micrio-migration-")


def test_a_configured_root_refuses_local_paths_outside_the_allowed_folders(tmp_path):
    data, state = tmp_path / "data", tmp_path / "state"
    data.mkdir()
    (data / "escape").symlink_to(tmp_path)  # a link inside that points outside
    root = StateRoot(str(state), local_root=str(data), configured=True)
    root.check_local(
        [str(data / "a.csv"), str(state / "j.jsonl"), "s3://b/k", "https://x/y.jpg", ""], "source"
    )
    for path in ("/etc/passwd", str(data / ".." / "other.csv"), str(data / "escape" / "other.csv")):
        with pytest.raises(InputError, match="source.*outside the folders runs may use"):
            root.check_local([path], "source")
    assert root.report("f").startswith(f"{state}/reports/f-")


def test_an_s3_root_without_a_local_root_allows_no_local_path(tmp_path):
    root = StateRoot("s3://bucket/state", configured=True)
    root.check_local(["s3://bucket/in/", None], "source")
    with pytest.raises(InputError, match=r"allowed: no local folder \(only s3:// and URLs\)"):
        root.check_local([os.path.join(str(tmp_path), "report.csv")], "outputs")
    assert root.location("skin-analysis", ["a"]).startswith("s3://bucket/state/skin-analysis/")
