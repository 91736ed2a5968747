"""A user's own flow composed of the thin tasks keeps the project's promises, through the service sessions.

Each service's thin tasks are called the ways a user composes them (sequentially, ``.map`` on worker threads with
an event loop each, ``asyncio.gather``, nested in the user's own task), with the block object and with its saved
name. The emulators then show zero 429 and one login per account (``/_emulator/received``), and the process
holds one session per account. Before the sessions, four sequential ``send_miniviz_data`` calls in a user flow
drew 3 × 429 and four mapped ones 3-6 × 429.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prefect import flow, task, unmapped
from pydantic import SecretStr

from blocks import HautCredentials, MicrioCredentials, MinivizCredentials, VizioSenseCredentials
from clients.auth import clear_shared_sessions
from clients.session import close_sessions, open_sessions
from emulators.launcher import running_emulators
from tasks.haut import list_haut_applications, list_haut_datasets
from tasks.micrio import add_micrio_images, create_micrio_folder, get_micrio_folder_status
from tasks.miniviz import send_miniviz_data, send_miniviz_image
from tasks.viziosense import get_viziosense_device, list_viziosense_devices
from tests.conftest import TEST_TIME_SCALE
from tests.images import jpeg_bytes

pytestmark = pytest.mark.integration
TS = 1_731_129_600_000
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emu():
    with running_emulators(
        only=["miniviz", "viziosense", "haut", "micrio"], time_scale=TEST_TIME_SCALE
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(emu):
    for service in emu.values():
        service.reset()
    close_sessions()
    clear_shared_sessions()  # the reset emulators forgot every token
    yield
    close_sessions()


def rejected_429(service) -> int:
    return service.received()["rejected_by_status"].get("429", 0)


# --- Miniviz: the documented rate limits (data 15 s per project, images 60 s per label), scaled ---------------
def miniviz_block(svc) -> MinivizCredentials:
    p = next(p for p in svc.credentials["projects"] if p["plan"] == "pro")
    return MinivizCredentials(
        project_id=p["project_id"],
        token=SecretStr(p["token"]),
        base_url=svc.url,
        data_interval_seconds=15 * TEST_TIME_SCALE,
        image_interval_seconds=60 * TEST_TIME_SCALE,
    )


@task
async def users_own_miniviz_task(credentials: MinivizCredentials | str, label: str) -> list[str]:
    return [(await send_miniviz_data(credentials, label, {"t": i}, TS + i)).id for i in range(2)]


@flow
async def miniviz_user_flow(block: MinivizCredentials, name: str) -> int:
    sent = 0
    for i in range(4):  # sequential, alternating the block and its saved name
        await send_miniviz_data(block if i % 2 else name, "seq", {"t": i}, TS + i)
        sent += 1
    mapped = send_miniviz_data.map(unmapped(name), ["map"] * 4, [{"t": i} for i in range(4)], [TS] * 4)
    sent += len(mapped.result())
    gathered = await asyncio.gather(*(send_miniviz_data(block, "gather", {"t": i}, TS + i) for i in range(4)))
    sent += len(gathered)
    nested = await asyncio.gather(
        users_own_miniviz_task(block, "nested-a"), users_own_miniviz_task(name, "b")
    )
    sent += sum(len(ids) for ids in nested)
    for n in range(2):  # the same label twice: the second image waits for the label's 60 s
        await send_miniviz_image(block, "camera", jpeg_bytes(text=str(n)), f"{n}.jpg", TS + n)
    return sent


async def test_a_miniviz_user_flow_never_sees_a_429(emu, prefect_harness):
    svc = emu["miniviz"]
    block = miniviz_block(svc)
    await block.save("session-miniviz", overwrite=True)
    assert await miniviz_user_flow(block, "session-miniviz") == 16
    got = svc.received()
    assert got["accepted"] == {"data": 16, "image": 2}
    assert sum(got["requests"].values()) == 18 and rejected_429(svc) == 0
    assert open_sessions() == 1  # the block and its saved name reached one session


# --- VizioSense and Haut.ai: one login per account and process ------------------------------------------------
def vizio_block(svc) -> VizioSenseCredentials:
    c = svc.credentials
    return VizioSenseCredentials(base_url=svc.url, email=c["email"], password=SecretStr(c["password"]))


@task
async def users_own_vizio_task(credentials: VizioSenseCredentials | str, uuid: str) -> str:
    return (await get_viziosense_device(credentials, uuid)).name


@flow
async def vizio_user_flow(block: VizioSenseCredentials, name: str) -> int:
    devices = await list_viziosense_devices(name)
    uuids = [d.uuid for d in devices[:4]]
    await list_viziosense_devices(block, is_online="Online")
    mapped = get_viziosense_device.map(unmapped(block), uuids).result()
    gathered = await asyncio.gather(*(get_viziosense_device(name, u) for u in uuids))
    nested = await asyncio.gather(*(users_own_vizio_task(block, u) for u in uuids))
    assert [d.uuid for d in mapped] == [d.uuid for d in gathered] == uuids
    return len(nested)


async def test_a_viziosense_user_flow_logs_in_once(emu, prefect_harness):
    svc = emu["viziosense"]
    block = vizio_block(svc)
    await block.save("session-vizio", overwrite=True)
    assert await vizio_user_flow(block, "session-vizio") == 4
    got = svc.received()
    assert got["accepted"].get("login") == 1 and rejected_429(svc) == 0
    assert "400" not in got["rejected_by_status"]  # no token was refused on the way
    assert open_sessions() == 1


def haut_block(svc) -> HautCredentials:
    c = svc.credentials
    return HautCredentials(
        base_url=svc.url,
        company_id=c["company_id"],
        username=c["username"],
        password=SecretStr(c["password"]),
    )


@task
async def users_own_haut_task(credentials: HautCredentials | str) -> int:
    return len(await list_haut_applications(credentials))


@flow
async def haut_user_flow(block: HautCredentials, name: str) -> int:
    calls = 0
    for source in (block, name, block):
        await list_haut_datasets(source)
        calls += 1
    mapped = list_haut_datasets.map(unmapped(block), [None, "a", "b", "c"]).result()
    calls += len(mapped)
    await asyncio.gather(*(list_haut_applications(name) for _ in range(4)))
    calls += 4
    await asyncio.gather(users_own_haut_task(block), users_own_haut_task(name))
    calls += 2
    return calls


async def test_a_haut_user_flow_logs_in_once(emu, prefect_harness):
    svc = emu["haut"]
    block = haut_block(svc)
    await block.save("session-haut", overwrite=True)
    assert await haut_user_flow(block, "session-haut") == 13
    got = svc.received()
    assert got["accepted"].get("login") == 1 and rejected_429(svc) == 0
    assert open_sessions() == 1


def test_the_haut_emulator_throttles_logins_as_firebase_does(emu):
    """Contract: logging in per request is blocked (DOC warning; docs/service-api-facts.md §4.3): past the configured attempts
    per username and minute (default 30), 429 in the DRF error shape with a Retry-After on the scaled clock."""
    svc = emu["haut"]
    c = svc.credentials
    body = {"username": c["username"], "password": c["password"]}
    with httpx.Client(base_url=svc.url, timeout=10) as http:
        answers = [http.post("/api/v1/auth/login/", json=body) for _ in range(31)]
    assert [a.status_code for a in answers[:30]] == [200] * 30
    refused = answers[30]
    assert refused.status_code == 429
    assert refused.json()["type"] == "client_error"
    assert refused.json()["errors"][0]["code"] == "throttled"
    assert 0 < float(refused.headers["Retry-After"]) <= 60 * TEST_TIME_SCALE  # real seconds: 60 s scaled
    assert svc.received()["accepted"].get("login") == 30


# --- Micrio: no login, no documented limit; the tasks still share one client --------------------------------
def micrio_block(svc) -> MicrioCredentials:
    c = svc.credentials
    return MicrioCredentials(
        organisation_id=c["organisation_id"], api_key=SecretStr(c["api_key"]), base_url=svc.url
    )


@flow
async def micrio_user_flow(block: MicrioCredentials, name: str, root: str) -> int:
    folder = await create_micrio_folder(name, root, "From a user flow")
    sources = [[{"sourceUrl": f"http://127.0.0.1:9/{n}.jpg"}] for n in range(4)]
    added = add_micrio_images.map(unmapped(block), unmapped(folder.id), sources).result()
    await asyncio.gather(*(get_micrio_folder_status(name, folder.id) for _ in range(3)))
    return sum(len(a) for a in added)


async def test_a_micrio_user_flow_shares_one_session(emu, prefect_harness):
    svc = emu["micrio"]
    block = micrio_block(svc)
    await block.save("session-micrio", overwrite=True)
    assert await micrio_user_flow(block, "session-micrio", svc.credentials["root_folder_id"]) == 4
    assert rejected_429(svc) == 0 and svc.received()["accepted"]["image"] == 4
    assert open_sessions() == 1


# --- closing at exit ------------------------------------------------------------------------------------------
def test_sessions_close_at_exit_without_warnings(emu):
    """A process that used sessions and exits closes their connections itself: nothing unclosed, no warning."""
    svc = emu["miniviz"]
    p = next(p for p in svc.credentials["projects"] if p["plan"] == "pro")
    script = (
        "import asyncio\n"
        "from pydantic import SecretStr\n"
        "from blocks import MinivizCredentials\n"
        "from tasks.miniviz import send_miniviz_data\n"
        f"b = MinivizCredentials(project_id={p['project_id']!r}, token=SecretStr({p['token']!r}), "
        f"base_url={svc.url!r}, data_interval_seconds=0)\n"
        "async def main():\n"
        "    for i in range(3):\n"
        f"        await send_miniviz_data.fn(b, 'exit', {{'t': i}}, {TS} + i)\n"
        "asyncio.run(main())\n"
        "print('sent')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "sent"
    assert "Warning" not in done.stderr and "nclosed" not in done.stderr, done.stderr[-2000:]
    assert svc.received()["accepted"] == {"data": 3}
