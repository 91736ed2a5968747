"""MinivizClient, block and tasks against the Miniviz emulator over real HTTP."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prefect import flow
from pydantic import SecretStr

from blocks import MinivizCredentials
from clients.errors import ApiError, AuthError, InputError, OutcomeUnknownError
from clients.miniviz import MinivizClient
from flows.miniviz_backfill import SentIndex
from tasks.journal import Journal
from tasks.miniviz import (
    MinivizDataSender,
    SendingStopped,
    get_miniviz_image,
    send_miniviz_data,
    send_miniviz_data_batch,
    send_miniviz_image,
)
from tests.conftest import TEST_TIME_SCALE, start_service
from tests.images import jpeg_bytes

pytestmark = pytest.mark.integration
TS = 1_731_129_600_000


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("miniviz", tmp_path_factory) as emu:
        yield emu["miniviz"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


def creds(svc, plan="pro", **kw) -> MinivizCredentials:
    p = next(p for p in svc.credentials["projects"] if p["plan"] == plan)
    # Intervals scaled like the emulator's clock (documented 15 s / 60 s).
    defaults = {
        "data_interval_seconds": (15 if plan == "pro" else 60) * TEST_TIME_SCALE,
        "image_interval_seconds": 60 * TEST_TIME_SCALE,
    }
    return MinivizCredentials(
        project_id=p["project_id"],
        token=SecretStr(p["token"]),
        plan=plan,
        base_url=svc.url,
        **{**defaults, **kw},
    )


async def test_send_data_paced_never_hits_429(svc):
    async with creds(svc).get_client() as client:
        acks = await asyncio.gather(*(client.send_data("sensor_1", {"t": i}, TS + i) for i in range(6)))
    assert len({a.id for a in acks}) == 6
    got = svc.received()
    assert got["accepted"] == {"data": 6} and "429" not in got["rejected_by_status"]


async def test_send_image_then_get_it_back(svc):
    content = jpeg_bytes(text="roundtrip")
    async with creds(svc).get_client() as client:
        ack = await client.send_image("camera_1", content, "snap.jpg", TS)
        stored = await client.get_image(ack.id)
    assert stored.content == content and stored.content_type == "image/jpeg"


async def test_image_pacing_per_label_and_wait_time(svc):
    async with creds(svc).get_client() as client:
        await client.send_image("cam_a", jpeg_bytes(), "a.jpg", TS)
        assert client.image_wait_time("cam_a") > 0.3
        assert client.image_wait_time("cam_b") == 0
        await client.send_image("cam_a", jpeg_bytes(), "a.jpg", TS + 1)  # waits for its slot, no 429
    assert "429" not in svc.received()["rejected_by_status"]


async def test_historical_timestamps_are_sent_as_they_are(svc):
    """No lower bound is documented: 1958 (negative ms) and 1989 (< 10^12 ms) go through the client."""
    project = creds(svc)
    async with project.get_client() as client:
        for ts in (-371_260_800_000, 600_000_000_000):
            assert (await client.send_data("historic", {"co2": 315.71}, ts)).id
    got = svc.control("GET", "events", params={"project_id": project.project_id})["events"]
    assert sorted(e["timestamp"] for e in got) == [-371_260_800_000, 600_000_000_000]


async def test_legacy_query_auth_works(svc):
    async with creds(svc, auth_mode="query").get_client() as client:
        assert (await client.send_data("s", {"t": 1}, TS)).id


async def test_wrong_token_is_an_auth_error_without_the_token(svc):
    bad = creds(svc).model_copy(update={"token": SecretStr("wrong-token-123456")})
    async with bad.get_client() as client:
        with pytest.raises(AuthError) as exc:
            await client.send_data("s", {"t": 1}, TS)
    assert exc.value.status == 403 and "wrong-token-123456" not in str(exc.value)


async def test_free_plan_image_is_refused_before_sending(svc):
    async with creds(svc, plan="free").get_client() as client:
        with pytest.raises(InputError, match="Pro plan"):
            await client.send_image("cam", jpeg_bytes(), "a.jpg", TS)
    assert svc.received()["requests"] == {}


@pytest.mark.parametrize(
    "call,fragment",
    [
        (lambda c: c.send_data("bad label", {"t": 1}, TS), "label_key: contains ' '"),
        (lambda c: c.send_data("x" * 129, {"t": 1}, TS), "at most 128"),
        (lambda c: c.send_data("s", {f"k{i}": i for i in range(9)}, TS), "payload: has 9 keys (at most 8)"),
        (lambda c: c.send_data("s", {"s": "x" * 400}, TS), "at most 400"),
        (lambda c: c.send_data("s", {"on": True}, TS), "payload.on: bool value not allowed"),
        (lambda c: c.send_data("s", {"t": float("nan")}, TS), "not a finite number"),
        (lambda c: c.send_data("s", {"t": 1}, 1.7e12), "timestamp: must be an integer, got float"),
        (lambda c: c.send_image("cam", b"GIF89a", "a.gif", TS), "neither JPEG nor PNG"),
        (
            lambda c: c.send_image("cam", b"\xff\xd8\xff" + b"0" * 204_800, "a.jpg", TS),
            "at most 204,800 bytes",
        ),
    ],
)
async def test_documented_constraints_are_checked_before_sending(svc, call, fragment):
    async with creds(svc).get_client() as client:
        with pytest.raises(InputError) as exc:
            await call(client)
    assert fragment in str(exc.value)
    assert svc.received()["requests"] == {}


async def test_retries_through_503s_and_429_bursts(svc):
    svc.faults(error_rate=0.5, seed=3)
    async with creds(svc, data_interval_seconds=0).get_client() as client:
        for i in range(10):
            await client.send_data("s", {"t": i}, TS + i)
    svc.faults(burst_429=2, retry_after=5)
    async with creds(svc, data_interval_seconds=0).get_client() as client:
        await client.send_data("s", {"t": 99}, TS + 99)
    got = svc.received()
    assert got["accepted"]["data"] == 11 and got["duplicates"] == {}
    assert got["faults_injected"]["429"] == 2 and got["faults_injected"]["503"] >= 1


async def test_dropped_connection_after_send_is_reported_not_retried(svc):
    svc.faults(drop_rate=1.0, drop_after_processing=True)
    async with creds(svc).get_client() as client:
        with pytest.raises(OutcomeUnknownError):
            await client.send_data("s", {"t": 1}, TS)
    got = svc.received()
    assert got["accepted"] == {"data": 1} and got["duplicates"] == {}


async def test_outage_longer_than_the_budget_fails_clearly(svc):
    svc.faults(outage={"duration": 10_000})  # 100 s real: longer than the retry budget below
    c = creds(svc, max_attempts=3, max_retry_seconds=1)
    async with c.get_client() as client:
        t0 = time.perf_counter()
        with pytest.raises(ApiError, match="HTTP 503"):
            await client.send_data("s", {"t": 1}, TS)
    assert time.perf_counter() - t0 < 5


# --- the tasks (tasks/miniviz.py) ----------------------------------------------------------------------------


def data_events(n: int, label: str = "s1") -> list[dict]:
    return [{"label_key": label, "payload": {"i": i}, "timestamp": TS + i, "seq": i} for i in range(n)]


async def test_thin_tasks_send_data_and_an_image_and_read_it_back(svc):
    c = creds(svc)
    ack = await send_miniviz_data.fn(c, "s1", {"t": 1}, TS)
    image = await send_miniviz_image.fn(c, "cam", jpeg_bytes(text="task"), "x.jpg", TS)
    stored = await get_miniviz_image.fn(c, image.id)
    assert ack.id and stored.content_type == "image/jpeg" and stored.content == jpeg_bytes(text="task")


def test_the_batch_task_by_block_name_in_a_flow_is_paced_beside_thin_tasks(svc, prefect_harness):
    """A user flow: a batch and single events to one project at once, all through the account's session:
    every event lands, none is refused with a 429."""
    creds(svc).save("miniviz-batch-task", overwrite=True)

    @flow
    async def user_flow() -> list:
        batch, *_ = await asyncio.gather(
            send_miniviz_data_batch("miniviz-batch-task", data_events(4)),
            send_miniviz_data("miniviz-batch-task", "s2", {"t": 1}, TS),
            send_miniviz_data("miniviz-batch-task", "s2", {"t": 2}, TS + 1),
        )
        return batch

    outcomes = asyncio.run(user_flow())
    assert [o.status for o in outcomes] == ["done"] * 4 and all(o.event_id for o in outcomes)
    got = svc.received()
    assert got["accepted"] == {"data": 6} and got["rejected_by_status"] == {}


async def test_each_event_of_a_batch_ends_done_rejected_or_failed(svc):
    c = creds(svc, data_interval_seconds=0, max_attempts=1)
    events = [
        {"label_key": "s1", "payload": {"t": 1}, "timestamp": TS},
        {"label_key": "bad key", "payload": {"t": 1}, "timestamp": TS},  # checked before sending
        {"payload": {"t": 1}},
    ]
    outcomes = await send_miniviz_data_batch.fn(c, events)
    assert [o.status for o in outcomes] == ["done", "rejected", "rejected"]
    assert "label_key" in outcomes[1].error and "no label_key" in outcomes[2].error
    # beyond 64 bits: the client lets any integer through, Miniviz answers 400 (the event itself is invalid)
    refused = await send_miniviz_data_batch.fn(c, [{**events[0], "timestamp": 2**70}])
    svc.faults(error_rate=1.0, error_status=503)
    failed = await send_miniviz_data_batch.fn(c, events[:1])
    svc.faults()
    assert (refused[0].status, failed[0].status) == ("rejected", "failed")
    assert "400" in refused[0].error and "503" in failed[0].error


async def test_a_shared_sender_journals_every_acknowledgement_across_batches(svc, tmp_path):
    """The backfill's use: one sender on the account's session, two batches at once, each acknowledged event
    journaled under its batch key (read back by the backfill's reader); a wrong token stops sending."""
    c = creds(svc, data_interval_seconds=0)
    journal = Journal(str(tmp_path / "journal.jsonl"))
    sender = MinivizDataSender(c.session(), 8, journal=journal)
    first, second = await asyncio.gather(
        send_miniviz_data_batch.fn(sender, data_events(60), key="a"),
        send_miniviz_data_batch.fn(sender, data_events(40, "s2"), key="b"),
    )
    await sender.aclose()
    assert {o.status for o in first + second} == {"done"}
    index = SentIndex.load(journal)
    assert all(index.is_sent("a", i) for i in range(60)) and all(index.is_sent("b", i) for i in range(40))
    assert (index.sent_count("a"), index.sent_count("b")) == (60, 40)
    got = svc.received()
    assert got["accepted"] == {"data": 100} and got["duplicates"] == {}

    wrong = c.model_copy(update={"token": SecretStr("wrong-token-1")})
    with pytest.raises(SendingStopped, match="refused the project or token") as stopped:
        await send_miniviz_data_batch.fn(MinivizDataSender(wrong.session(), 4), data_events(3))
    assert "wrong-token-1" not in str(stopped.value)


def test_client_repr_and_block_repr_hide_the_token(svc):
    c = creds(svc)
    assert c.token.get_secret_value() not in repr(c)
    client = MinivizClient("p", "tok-abcdef-123", svc.url)
    assert "tok-abcdef-123" not in repr(client)


async def test_httpx_log_lines_never_show_the_token_in_query_mode(svc, caplog):
    import logging

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("httpx").setLevel(logging.DEBUG)
        async with creds(svc, auth_mode="query").get_client() as client:
            await client.send_data("s", {"t": 1}, TS)
    token = next(p for p in svc.credentials["projects"] if p["plan"] == "pro")["token"]
    assert "HTTP Request" in caplog.text and token not in caplog.text


def test_emulator_answers_plain_httpx(svc):
    assert httpx.get(f"{svc.url}/_emulator/health").json()["ok"] is True
