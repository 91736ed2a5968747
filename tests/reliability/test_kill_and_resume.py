"""kill -9 each long flow at seeded random points, re-run, and check the README's promises: nothing is lost and
duplicates stay within the stated bound per kill.

For each flow, one input is run ``KILLS`` times in a row, each run killed at its own kill point, then once to
the end (all on the same journal and the same emulators). A kill point is drawn from a seeded RNG:

- ``journal+N``: once the journal holds N more complete records than when the run started;
- ``requests+N``: once the emulator has received N more requests than when the run started;
- ``delay=S``: S seconds after the run started (kills during startup, listing, planning as well).

The seed is in the test id (``RELIABILITY_SEED=<n>`` picks another one) and every kill is logged with the
state it landed in, so a failure reproduces. Bounds checked (README, "Flows"): Micrio at most one batch
(``batch_size`` images) added twice per kill; the backfill at most ``concurrency`` events sent twice per kill;
the skin analysis at most ``batch_size × parallel_batches`` analyses computed again per kill, no subject twice,
bytes uploaded again only for uploads that had not finished (also within that bound).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
from pydantic import SecretStr

from blocks import HautCredentials, MicrioCredentials, MinivizCredentials
from emulators.haut.results import metric_scores
from emulators.launcher import running_emulators
from tests.conftest import TEST_TIME_SCALE
from tests.images import jpeg_bytes
from tests.reliability.flowkit import (
    FlowProcess,
    journal_lines,
    run_flow,
    s3_client,
    save_s3_block,
    wait_until,
    warm_up,
)

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

# RELIABILITY_SEED=3 (or 3,4,5) picks other kill points; the seed is in each test id.
SEEDS = [int(s) for s in os.environ.get("RELIABILITY_SEED", "1122").split(",")]
seeded = pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed={s}")
KILLS = 5
HANG_GUARD = 120.0  # seconds; only a guard against a hang, never a timing assertion


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("kill-emulators") / "emulators.json"
    config.write_text(
        json.dumps(
            {
                "miniviz": {"projects": [{"project_id": "kill", "token": "mvz-kill-token", "plan": "pro"}],
                            "data_interval": {"free": 0, "pro": 0}},
                "haut": {"processing_seconds": 60},  # 0.6 s here: kills land while results are awaited
            }
        )
    )  # fmt: skip
    with running_emulators(
        only=["micrio", "miniviz", "haut", "s3"], time_scale=TEST_TIME_SCALE, config_path=str(config)
    ) as running:
        warm_up()  # the forkserver imports Prefect and the flows once, before any kill point is timed
        yield running


@pytest.fixture(scope="module")
def blocks(emu, prefect_harness):
    m = emu["micrio"].credentials
    MicrioCredentials(
        organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
    ).save("kill-micrio", overwrite=True)
    MinivizCredentials(
        project_id="kill",
        token=SecretStr("mvz-kill-token"),
        base_url=emu["miniviz"].url,
        data_interval_seconds=0,
    ).save("kill-miniviz", overwrite=True)
    h = emu["haut"].credentials
    HautCredentials(
        base_url=emu["haut"].url, company_id=h["company_id"], private_token=SecretStr(h["private_token"])
    ).save("kill-haut", overwrite=True)
    save_s3_block(emu["s3"], "kill-s3")


# --- kill points ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    kind: str  # "journal", "requests" or "delay"
    amount: float

    def __str__(self) -> str:
        return f"delay={self.amount:.2f}s" if self.kind == "delay" else f"{self.kind}+{int(self.amount)}"


def kill_plan(seed: int, flow: str, ranges: dict[str, tuple[float, float]]) -> list[KillPoint]:
    """``KILLS`` kill points for ``flow``: every kind at least once, amounts drawn from ``ranges``."""
    rng = random.Random(f"{seed}:{flow}")
    kinds = list(ranges) + [rng.choice(list(ranges)) for _ in range(KILLS - len(ranges))]
    rng.shuffle(kinds)
    points = []
    for kind in kinds:
        lo, hi = ranges[kind]
        amount = round(rng.uniform(lo, hi), 2) if kind == "delay" else rng.randint(int(lo), int(hi))
        points.append(KillPoint(kind, amount))
    return points


def total_requests(service) -> int:
    return sum(service.received()["requests"].values())


def reached_condition(
    point: KillPoint, journal: Path, requests: Callable[[], int]
) -> Callable[[FlowProcess], bool]:
    """Whether a run has reached ``point``; call it just before the run starts (counts are taken then)."""
    if point.kind == "journal":
        target = journal_lines(journal) + point.amount
        return lambda run: journal_lines(journal) >= target
    if point.kind == "requests":
        target = requests() + point.amount
        return lambda run: requests() >= target
    return lambda run: time.monotonic() - run.started >= point.amount


def kill_at_each_point(
    flow: str,
    params: dict,
    workdir: Path,
    plan: list[KillPoint],
    journal: Path,
    requests: Callable[[], int],
    seed: int,
) -> list[dict]:
    """Run the flow once per kill point and ``kill -9`` it there; what each kill landed on."""
    log.warning("%s: seed %s, kill points %s", flow, seed, [str(p) for p in plan])
    landed = []
    for number, point in enumerate(plan, 1):
        start_records, start_requests = journal_lines(journal), requests()
        reached_by = reached_condition(point, journal, requests)
        run = FlowProcess(flow, params, workdir, number)
        try:
            every = 0.02 if point.kind == "requests" else 0.005  # an HTTP call per poll: not too often
            reached = wait_until(functools.partial(reached_by, run), run, HANG_GUARD, every=every)
            killed_after = time.monotonic() - run.started
            run.kill()
            code = run.proc.exitcode
        finally:
            run.stop_if_running()
        where = {
            "kill": number,
            "point": str(point),
            "seconds": round(killed_after, 2),
            "journal_records": f"{start_records} -> {journal_lines(journal)}",
            "requests": f"{start_requests} -> {requests()}",
        }
        log.warning("%s kill %s", flow, where)
        assert reached and code == -9, (
            f"{flow}: kill point {number} ({point}) came after the run had finished (exit {code}); "
            f"the workload is too small for seed {seed}. Kills so far: {landed}\n{run.log_tail()}"
        )
        landed.append(where)
    return landed


# --- Micrio migration -----------------------------------------------------------------------------------------

MICRIO_IMAGES, MICRIO_BATCH = 120, 4


@seeded
def test_micrio_migration_kill_and_resume(emu, blocks, tmp_path, seed):
    micrio, s3 = emu["micrio"], s3_client(emu["s3"])
    micrio.reset()
    # slower tiling, 3 at a time: kills land while batches are added and while images are in flight
    httpx.post(
        f"{micrio.url}/_emulator/config",
        json={"max_concurrent": 3, "stage_durations": {"downloading": 0.5, "processing": 2, "tiling": 5}},
    ).raise_for_status()
    # 0.2 s per images/add: adding lasts long enough (whatever the machine) for five kills, some mid-request
    micrio.faults(latency=20, path_pattern="images/add")
    prefix = f"kill-{seed}/micrio/"
    keys = [f"{prefix}img-{i:03d}.jpg" for i in range(MICRIO_IMAGES)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="demo-bucket", Key=key, Body=jpeg_bytes(64 + i, 48, text=str(i)))
    journal = tmp_path / "journal.jsonl"
    params = {
        "source": f"s3://demo-bucket/{prefix}",
        "micrio_block": "kill-micrio",
        "s3_bucket_block": "kill-s3",
        "target": {"folder_id": micrio.credentials["root_folder_id"]},
        "adding": {"batch_size": MICRIO_BATCH},
        "polling": {"initial_seconds": 0.05, "max_seconds": 0.2},
        "outputs": {"journal": str(journal), "report": str(tmp_path / "report.csv")},
    }
    plan = kill_plan(seed, "micrio", {"journal": (1, 5), "requests": (1, 4), "delay": (0.1, 1.0)})
    kills = kill_at_each_point(
        "micrio", params, tmp_path, plan, journal, lambda: total_requests(micrio), seed
    )
    micrio.faults()

    summary = run_flow("micrio", params, tmp_path, len(plan) + 1)
    context = f"seed {seed}, kills {kills}"
    assert (summary["done"], summary["failed"], summary["rejected"], summary["in_flight"]) == (
        MICRIO_IMAGES,
        0,
        0,
        0,
    ), context
    report = pd.read_csv(tmp_path / "report.csv")
    assert sorted(report["source"]) == sorted(f"s3://demo-bucket/{k}" for k in keys), context
    assert set(report["status"]) == {"ready"}, context
    got = micrio.received()
    duplicates = got["duplicates"].get("image", 0)
    assert got["accepted"]["image"] - duplicates == MICRIO_IMAGES, context  # every source reached Micrio
    log.warning(
        "micrio: %d kills, %d images added twice (bound %d)",
        len(kills),
        duplicates,
        len(kills) * MICRIO_BATCH,
    )
    assert duplicates <= len(kills) * MICRIO_BATCH, context  # at most one batch per kill


# --- Miniviz backfill -----------------------------------------------------------------------------------------

BACKFILL_ROWS, BACKFILL_CONCURRENCY = 1500, 8
T0 = 1_704_067_200_000


@seeded
def test_miniviz_backfill_kill_and_resume(emu, blocks, tmp_path, seed):
    miniviz = emu["miniviz"]
    miniviz.reset()
    source = tmp_path / "history.csv"
    pd.DataFrame(
        {
            "timestamp": [T0 + i * 1000 for i in range(BACKFILL_ROWS)],
            "label_key": [f"dev_{i % 5}" for i in range(BACKFILL_ROWS)],
            "v": range(BACKFILL_ROWS),
        }
    ).to_csv(source, index=False)
    expected = sorted((f"dev_{i % 5}", T0 + i * 1000, i) for i in range(BACKFILL_ROWS))
    journal = tmp_path / "journal.jsonl"
    params = {
        "source": str(source),
        "miniviz_block": "kill-miniviz",
        "pacing": {"concurrency": BACKFILL_CONCURRENCY, "batch_size": 100},
        "outputs": {"journal": str(journal), "report": str(tmp_path / "report.csv")},
    }
    miniviz.faults(latency=3)  # 30 ms per request: a run lasts long enough to be killed several times
    plan = kill_plan(seed, "backfill", {"journal": (2, 15), "requests": (20, 100), "delay": (0.1, 1.0)})
    kills = kill_at_each_point(
        "backfill", params, tmp_path, plan, journal, lambda: total_requests(miniviz), seed
    )
    miniviz.faults()

    summary = run_flow("backfill", params, tmp_path, len(plan) + 1)
    context = f"seed {seed}, kills {kills}"
    events = miniviz.control("GET", "events", params={"project_id": "kill", "limit": 100_000})["events"]
    stored = sorted((e["label_key"], e["timestamp"], e["payload"]["v"]) for e in events)
    got = miniviz.received()
    duplicates = got["duplicates"].get("data", 0)
    assert sorted(set(stored)) == expected, context  # no row lost
    assert len(stored) == BACKFILL_ROWS + duplicates, context
    log.warning("backfill: %d kills, %d events sent twice (bound %d)", len(kills), duplicates,
                len(kills) * BACKFILL_CONCURRENCY)  # fmt: skip
    assert duplicates <= len(kills) * BACKFILL_CONCURRENCY, context  # events in flight, per kill
    assert summary["events_already_sent"] + summary["events_sent"] == BACKFILL_ROWS, context
    assert summary["events_failed"] == 0 and summary["rows_rejected"] == 0, context
    assert set(pd.read_csv(tmp_path / "report.csv")["status"]) == {"done"}, context


# --- skin analysis --------------------------------------------------------------------------------------------

SKIN_IMAGES, SKIN_BATCH, SKIN_PARALLEL = 32, 2, 2


@seeded
def test_skin_analysis_kill_and_resume(emu, blocks, tmp_path, seed):
    haut = emu["haut"]
    haut.reset()
    src = tmp_path / "selfies"
    src.mkdir()
    files = {}
    for i in range(SKIN_IMAGES):
        files[f"subject-{i:02d}.jpg"] = data = jpeg_bytes(320, 320, text=f"face {i}")
        (src / f"subject-{i:02d}.jpg").write_bytes(data)
    journal = tmp_path / "journal.jsonl"
    params = {
        "source": str(src),
        "haut_block": "kill-haut",
        "analysis": {"dataset_name": f"kill-{seed}"},
        "upload": {"batch_size": SKIN_BATCH, "parallel_batches": SKIN_PARALLEL, "concurrency": 2},
        "polling": {"initial_delay": 0.05, "max_delay": 0.2, "results_timeout": 30.0},
        "privacy": {"include_file_names": True},  # to match each report row with its file
        "outputs": {"journal": str(journal), "report": str(tmp_path / "report.csv")},
    }
    haut.faults(latency=15, path_pattern="compute")  # 0.15 s per compute
    plan = kill_plan(seed, "skin", {"journal": (1, 6), "requests": (3, 20), "delay": (0.1, 1.0)})
    kills = kill_at_each_point("skin", params, tmp_path, plan, journal, lambda: total_requests(haut), seed)
    haut.control("DELETE", "faults")

    summary = run_flow("skin", params, tmp_path, len(plan) + 1)
    context = f"seed {seed}, kills {kills}"
    bound = len(kills) * SKIN_BATCH * SKIN_PARALLEL
    assert (summary["done"], summary["failed"], summary["rejected"]) == (SKIN_IMAGES, 0, 0), context
    report = pd.read_csv(tmp_path / "report.csv")
    for row in report.to_dict("records"):  # the metrics of the bytes on disk: the right image, intact
        data = files[Path(row["image"]).name]
        assert row["pores.pores_score"] == metric_scores(data)["pores"], context
    got = haut.received()
    accepted, duplicates = got["accepted"], got["duplicates"]
    log.warning("skin: %d kills, computes again %s, uploads %d, signed URLs %d (bound %d per kind)", len(kills),
                duplicates.get("compute", 0), accepted["upload"], accepted["signed_upload_url"], bound)  # fmt: skip
    assert accepted["create_subject"] == SKIN_IMAGES and not duplicates.get("create_subject"), context
    uploads = Counter(s["sha256"] for s in got["recent_accepted"] if s["op"] == "upload")
    assert set(uploads) == {hashlib.sha256(d).hexdigest() for d in files.values()}, context
    assert sum(uploads.values()) - SKIN_IMAGES <= bound, context  # bytes again only if unfinished
    assert duplicates.get("compute", 0) <= bound, context
    assert accepted["signed_upload_url"] - SKIN_IMAGES <= bound, context  # orphaned image records


def test_micrio_kills_around_one_add_do_not_use_up_its_attempts(emu, blocks, tmp_path):
    """Three kills, each just after the first batch's intent is journaled: the batch is still added."""
    micrio, s3 = emu["micrio"], s3_client(emu["s3"])
    micrio.reset()
    keys = [f"kill-attempts/img-{i}.jpg" for i in range(4)]
    for i, key in enumerate(keys):
        s3.put_object(Bucket="demo-bucket", Key=key, Body=jpeg_bytes(64 + i, 48, text=str(i)))
    journal = tmp_path / "journal.jsonl"
    params = {
        "source": "s3://demo-bucket/kill-attempts/",
        "micrio_block": "kill-micrio",
        "s3_bucket_block": "kill-s3",
        "target": {"folder_id": micrio.credentials["root_folder_id"]},
        "adding": {"batch_size": 4, "max_attempts": 3},
        "polling": {"initial_seconds": 0.05, "max_seconds": 0.2},
        "outputs": {"journal": str(journal), "report": str(tmp_path / "report.csv")},
    }
    plan = [KillPoint("journal", 1)] * 3
    kill_at_each_point("micrio", params, tmp_path, plan, journal, lambda: total_requests(micrio), 0)
    summary = run_flow("micrio", params, tmp_path, len(plan) + 1)
    report = pd.read_csv(tmp_path / "report.csv")
    assert summary["done"] == len(keys), report[["name", "status", "error"]].to_string()
