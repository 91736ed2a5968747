"""Two flow runs in two processes sending to one Miniviz project at once: a snapshot harvest and a backfill.

Each run has its own client (a worker runs each flow run in a process of its own), so only the pacing shared
by the machine's processes (clients/shared_pacing.py) keeps them apart; on two workers (two directories, two
pacing directories), only the pacing shared through Redis (clients/redis_pacing.py). The emulator stamps every arrival and
answers 429 to a data event within the project's interval (Pro: 15 s, 0.15 s here) and to a second image of a
label within its image interval: zero 429 at ``/_emulator/received`` means neither run took the other's slot.
With pacing per process, the backfill's events land between the harvest's and both collect 429s.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pydantic import SecretStr

from blocks import MinivizCredentials, VizioSenseCredentials
from clients.shared_pacing import PACING_URL_ENV
from emulators.launcher import running_emulators
from tests.conftest import TEST_TIME_SCALE
from tests.reliability.flowkit import FlowProcess, save_s3_block, warm_up
from tests.reliability.prefect_stack import REDIS_HOST, REDIS_PORT, require_services

pytestmark = pytest.mark.integration

PROJECT, TOKEN = "shared-project", "mvz-shared-project"
DATA_INTERVAL = 15 * TEST_TIME_SCALE  # the Pro interval on the emulator's scaled clock
IMAGE_INTERVAL = 30.0  # real seconds, for the emulator and the block alike
BACKFILL_ROWS = 80  # 12 s of paced events: the harvest starts well within them, even on a busy machine
T0 = 1_704_067_200_000
TIMEOUT = 240  # a hang guard only


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("pacing-emulators") / "emulators.json"
    miniviz = {
        "projects": [{"project_id": PROJECT, "token": TOKEN, "plan": "pro"}],  # Pro: 15 s per data event
        "image_interval": IMAGE_INTERVAL / TEST_TIME_SCALE,
    }
    config.write_text(json.dumps({"miniviz": miniviz}))
    with running_emulators(
        only=["viziosense", "miniviz", "s3"], time_scale=TEST_TIME_SCALE, config_path=str(config)
    ) as emu:
        yield emu


@pytest.fixture(scope="module")
def blocks(emu, prefect_harness):
    """One Miniviz block for both runs (the same project), as two deployments would name it."""
    v = emu["viziosense"]
    VizioSenseCredentials(base_url=v.url, api_key=SecretStr(v.credentials["api_key"])).save(
        "vzs-pacing-test", overwrite=True
    )
    MinivizCredentials(
        project_id=PROJECT,
        token=SecretStr(TOKEN),
        base_url=emu["miniviz"].url,
        data_interval_seconds=DATA_INTERVAL,
        image_interval_seconds=IMAGE_INTERVAL,
    ).save("mvz-pacing-test", overwrite=True)
    save_s3_block(emu["s3"], "s3-pacing-test")
    warm_up()  # the forkserver imports Prefect and the flows once
    return {"miniviz_block": "mvz-pacing-test"}


def harvest_params(blocks, tmp_path) -> dict:
    return {
        **blocks,
        "viziosense_block": "vzs-pacing-test",
        "s3_bucket_block": "s3-pacing-test",
        "timing": {
            "ready_after_seconds": 20 * TEST_TIME_SCALE,
            "poll_interval_seconds": 0.02,
            "image_timeout_seconds": 5.0,
        },
        "outputs": {"state": str(tmp_path / "harvest-state.json"), "report": str(tmp_path / "harvest.csv")},
    }


def backfill_params(blocks, tmp_path) -> dict:
    source = tmp_path / "meter.csv"
    pd.DataFrame(
        {"timestamp": [T0 + i * 60_000 for i in range(BACKFILL_ROWS)], "kwh": range(BACKFILL_ROWS)}
    ).to_csv(source, index=False)
    return {
        **blocks,
        "source": str(source),
        "events": {"label_key": "meter-1"},
        "outputs": {"journal": str(tmp_path / "journal.jsonl"), "report": str(tmp_path / "backfill.csv")},
    }


def finished(run: FlowProcess) -> dict:
    code = run.wait(TIMEOUT)
    assert code == 0, f"the flow run exited with {code}; log tail:\n{run.log_tail()}"
    return run.summary()


def workers(tmp_path, shared_by: str) -> list[dict[str, str] | None]:
    """The settings of the two runs' processes: on one machine (the test's pacing directory), or on two
    workers in directories of their own, each with its own pacing directory and one Redis between them."""
    if shared_by == "machine":
        return [None, None]
    require_services({"Redis": (REDIS_HOST, REDIS_PORT)})
    dirs = [tmp_path / "worker-a", tmp_path / "worker-b"]
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    for d in dirs:
        d.mkdir()
    return [{"PWD": str(d), "PIPELINES_PACING_DIR": str(d / "pacing"), PACING_URL_ENV: url} for d in dirs]


@pytest.mark.parametrize("shared_by", ["machine", "redis"])
def test_a_harvest_and_a_backfill_on_one_project_at_once_collect_no_429(emu, blocks, tmp_path, shared_by):
    miniviz = emu["miniviz"]
    for service in emu.values():
        service.reset()
    backfill_env, harvest_env = workers(tmp_path, shared_by)
    backfill = FlowProcess("backfill", backfill_params(blocks, tmp_path), tmp_path, 1, backfill_env)
    harvest = FlowProcess("harvest", harvest_params(blocks, tmp_path), tmp_path, 2, harvest_env)
    try:
        backfilled, harvested = finished(backfill), finished(harvest)
    finally:
        backfill.stop_if_running()
        harvest.stop_if_running()

    got = miniviz.received()
    assert got["rejected_by_status"] == {}, got["rejected_by_status"]  # no 429: neither took the other's slot
    # both runs delivered everything they had
    assert backfilled["run_state"] == "COMPLETED" and backfilled["events_sent"] == BACKFILL_ROWS
    assert harvested["run_state"] == "COMPLETED", harvested["run_message"]
    online = harvested["cameras"] - harvested["skipped"]
    assert harvested["images_pushed"] == online and harvested["images_failed"] == 0
    assert harvested["data_events_sent"] >= 1 and harvested["data_events_failed"] == 0
    assert got["accepted"] == {"data": BACKFILL_ROWS + harvested["data_events_sent"], "image": online}
    # and they ran at once: the project received harvest events between the backfill's first and last
    stored = miniviz.control("GET", "events", params={"project_id": PROJECT, "limit": 1000})["events"]
    labels = [event["label_key"] for event in stored]  # in arrival order
    first, last = labels.index("meter-1"), len(labels) - 1 - labels[::-1].index("meter-1")
    assert any(label != "meter-1" for label in labels[first:last])
