"""How the migration flow rebuilds its state from the journal after a crash."""

from __future__ import annotations

from emulators.micrio.backend import source_identity
from flows.micrio_migration import Item, _manifest_item, replay


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
    assert _manifest_item(2, "https://x/a.jpg", None, seen).rejected == "duplicate of row 1"
    assert "whitespace" in _manifest_item(3, "https://x/a b.jpg", None, seen).rejected
    assert _manifest_item(4, float("nan"), None, seen).rejected == "source_url is empty"
    assert _manifest_item(5, "s3://bucket/k.jpg", float("nan"), seen).url is None  # presigned when added


def test_emulator_counts_a_re_presigned_object_as_the_same_source():
    a = "http://h/b/k.jpg?AWSAccessKeyId=x&Signature=s1&Expires=1"
    b = "http://h/b/k.jpg?X-Amz-Algorithm=y&X-Amz-Signature=s2&X-Amz-Expires=5"
    assert source_identity(a) == source_identity(b) == "http://h/b/k.jpg"
    assert source_identity("http://h/img?id=5") == "http://h/img?id=5"
