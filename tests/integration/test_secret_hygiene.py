"""Every client, run with distinctive secrets and DEBUG logging everywhere (httpx and httpcore included), never
prints, logs or raises one of them: not on success, not on refusal, not when a service is down."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from clients.errors import ApiError
from clients.haut import HautClient
from clients.micrio import MicrioClient
from clients.miniviz import MinivizClient
from clients.transport import HttpSettings, RetryPolicy
from clients.viziosense import VizioSenseClient
from emulators.launcher import running_emulators
from tests.conftest import TEST_TIME_SCALE
from tests.images import jpeg_bytes

pytestmark = pytest.mark.integration

MINIVIZ_TOKEN = "mvz-SECRET-7f3a9c1e55"
VIZIO_PASSWORD = "vzs-SECRET-pass-42d8e1"
VIZIO_API_KEY = "vzs-SECRET-key-0b6c3f"
MICRIO_API_KEY = "5ec2e7a1-0b1c-4d2e-9f3a-7b8c9d0e1f2a"
HAUT_TOKEN = "haut-SECRET-token-91e4ab"
HAUT_PASSWORD = "haut-SECRET-pass-3c7d2f"
SECRETS = [MINIVIZ_TOKEN, VIZIO_PASSWORD, VIZIO_API_KEY, MICRIO_API_KEY, HAUT_TOKEN, HAUT_PASSWORD]
FAST = HttpSettings(retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_elapsed=2))


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    from emulators.registry import service_module

    haut = service_module("haut").DEFAULT_CONFIG
    micrio = service_module("micrio").DEFAULT_CONFIG["organisations"][0]
    config = {
        "miniviz": {
            "projects": [{"project_id": "p1", "token": MINIVIZ_TOKEN, "plan": "pro"}],
            "data_interval": {"free": 0, "pro": 0},
        },
        "viziosense": {
            "users": [
                {"email": "ops@example.test", "password": VIZIO_PASSWORD, "name": "Ops", "role": ["admin"]}
            ],
            "api_keys": {VIZIO_API_KEY: "ops@example.test"},
        },
        "micrio": {"organisations": [{**micrio, "api_key": MICRIO_API_KEY}]},
        "haut": {
            "users": [{**haut["users"][0], "password": HAUT_PASSWORD}],
            "private_tokens": [{**haut["private_tokens"][0], "token": HAUT_TOKEN}],
        },
    }
    path = tmp_path_factory.mktemp("secrets") / "emulators.json"
    path.write_text(json.dumps(config))
    with running_emulators(
        only=list(config) + ["s3"], time_scale=TEST_TIME_SCALE, config_path=str(path)
    ) as emu:
        yield emu


@pytest.fixture
def debug_everything():
    loggers = [logging.getLogger(n) for n in ("", "httpx", "httpcore", "clients")]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    yield
    for lg, level in zip(loggers, old, strict=True):
        lg.setLevel(level)


async def exercise(emu) -> list[str]:
    """Happy paths, refusals and an unreachable service for every client; returns every error's text."""
    errors: list[str] = []

    async def expect_error(coro) -> None:
        try:
            await coro
        except (ApiError, ValueError) as exc:
            errors.append(f"{exc} | {exc!r} | {getattr(exc, 'detail', '')}")
        else:
            raise AssertionError("expected an error")

    async with MinivizClient("p1", MINIVIZ_TOKEN, emu["miniviz"].url, data_interval=0) as c:
        await c.send_data("s1", {"t": 1})
        await c.send_image("cam", jpeg_bytes(), "a.jpg")
    async with MinivizClient(
        "p1", MINIVIZ_TOKEN, emu["miniviz"].url, auth_mode="query", data_interval=0
    ) as c:
        await c.send_data("s1", {"t": 2})
    async with MinivizClient("nope", MINIVIZ_TOKEN, emu["miniviz"].url, settings=FAST) as c:
        await expect_error(c.send_data("s1", {"t": 1}))

    async with VizioSenseClient(
        emu["viziosense"].url, email="ops@example.test", password=VIZIO_PASSWORD, share_session=False
    ) as c:
        devices = await c.list_all_devices()
        request = await c.request_image(
            next(d.uuid for d in devices if d.is_online), ready_after=20 * TEST_TIME_SCALE
        )
        await c.fetch_image(request, "raw", poll_interval=0.05)
    async with VizioSenseClient(emu["viziosense"].url, api_key=VIZIO_API_KEY) as c:
        await c.get_device(devices[0].uuid)
    async with VizioSenseClient(
        emu["viziosense"].url,
        email="ops@example.test",
        password=VIZIO_PASSWORD + "x",
        share_session=False,
        settings=FAST,
    ) as c:
        await expect_error(c.list_all_devices())

    micrio = emu["micrio"].credentials
    async with MicrioClient(micrio["organisation_id"], MICRIO_API_KEY, emu["micrio"].url) as c:
        added = await c.add_images(
            micrio["root_folder_id"], [{"sourceUrl": f"{emu['s3'].url}/demo-bucket/none.jpg"}]
        )
        await c.image_status([a.id for a in added])
        await expect_error(c.folder_status("zzzzzz"))
    async with MicrioClient(
        micrio["organisation_id"], "00000000-0000-4000-8000-000000000000", emu["micrio"].url
    ) as c:
        await expect_error(c.folder_status(micrio["root_folder_id"]))

    company = emu["haut"].credentials["company_id"]
    async with HautClient(company, emu["haut"].url, private_token=HAUT_TOKEN) as c:
        dataset = await c.create_dataset("secrets study")
        subject = await c.create_subject(dataset.id, "someone")
        await c.request_upload_v1(subject.id)
    async with HautClient(
        company,
        emu["haut"].url,
        username="demo@haut-emulator.local",
        password=HAUT_PASSWORD,
        share_session=False,
    ) as c:
        await c.list_datasets()
    async with HautClient(
        company,
        emu["haut"].url,
        username="demo@haut-emulator.local",
        password=HAUT_PASSWORD + "x",
        share_session=False,
        settings=FAST,
    ) as c:
        await expect_error(c.list_datasets())

    # A service that is down: the connection error must not carry a secret either.
    async with MinivizClient(
        "p1", MINIVIZ_TOKEN, "http://127.0.0.1:9", auth_mode="query", settings=FAST
    ) as c:
        await expect_error(c.send_data("s1", {"t": 1}))
    return errors


async def test_no_secret_in_logs_output_or_errors(emu, debug_everything, caplog, capsys):
    with caplog.at_level(logging.DEBUG):
        errors = await exercise(emu)
    out = capsys.readouterr()
    seen = "\n".join([caplog.text, out.out, out.err, *errors])
    assert "HTTP Request" in caplog.text and len(errors) >= 6  # the logging and the failures really happened
    leaked = [s for s in SECRETS if s in seen]
    assert leaked == [], f"secrets found in output: {leaked}"


def test_emulators_do_not_echo_secrets_in_their_records(emu):
    for name in ("miniviz", "viziosense", "micrio", "haut"):
        text = httpx.get(f"{emu[name].url}/_emulator/received").text
        assert not [s for s in SECRETS if s in text], name
