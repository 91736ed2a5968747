"""The fault suite's kit: fault profiles, and per flow its input, arguments and the accounting of a run.

Shared by ``tests/reliability/test_faults.py`` (time scale 0.01, flows in-process) and
``benchmarks/fault_suite.py`` (time scale 0.1, flows in a subprocess), so both judge a run the same way.

Every fault duration is in *emulated* seconds (``FaultInjector``): a 30 s outage lasts 0.3 s at time scale
0.01 and 3 s at 0.1, a 2 s latency spike 20 ms / 200 ms, and ``Retry-After`` is announced in real seconds.

Accounting of a run (``Accounting``): every input item must appear exactly once in the flow's report as
done, rejected (with a reason) or failed (with an error); ``lost`` counts the items that do not (missing,
twice, no outcome, or no reason), plus "done" items whose side effect is not where it should be (an object
not in S3, an event not in Miniviz). ``duplicates`` are the emulators' own counts of side effects received
twice; ``duplicate_bound`` is what the flow's documentation allows for the faults that were injected.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from demo.setup import s3_client, sample_selfie, save_demo_blocks
from emulators.launcher import RunningEmulators

SERVICES = ["micrio", "viziosense", "miniviz", "haut", "s3"]
# Miniviz's data limit off (the backfill and harvest send as fast as the client allows); everything else default.
EMULATOR_CONFIG: dict[str, Any] = {"miniviz": {"data_interval": {"free": 0, "pro": 0}}}


def mixed_faults(outage_after: int, seed: int = 1, **overrides: Any) -> dict[str, Any]:
    """The issue's mix for one emulator: 5 % 503s, bursts of three 429s (Retry-After 5 s) every 40 requests,
    2 s latency spikes on 10 % of requests, 2 % of connections dropped before the request is handled, and a
    30 s outage that starts after ``outage_after`` requests (mid-run, however fast the machine)."""
    return {
        "error_rate": 0.05,
        "error_status": 503,
        "burst_429": 3,
        "burst_429_every": 40,
        "retry_after": 5,
        "latency": 2,
        "latency_rate": 0.1,
        "drop_rate": 0.02,
        "outage": {"start_after_requests": outage_after, "duration": 30},
        "seed": seed,
        **overrides,
    }


def lost_answers(path_pattern: str, drop_rate: float = 0.3, seed: int = 2) -> dict[str, Any]:
    """Connections dropped AFTER the request took effect (the answer is lost) on the side-effecting routes:
    the case where only the flow's own guard (journal, lookups) can keep duplicates within its stated bound."""
    return {"drop_rate": drop_rate, "drop_after_processing": True, "path_pattern": path_pattern, "seed": seed}


def refused(path_pattern: str) -> dict[str, Any]:
    """Every matching call answered HTTP 500, which clients do not retry."""
    return {"error_rate": 1.0, "error_status": 500, "path_pattern": path_pattern}


def inject(emu: RunningEmulators, faults: dict[str, dict[str, Any]]) -> None:
    for service, config in faults.items():
        emu[service].faults(**config)


def clear(emu: RunningEmulators) -> None:
    """Every emulator back to its configured state: no faults, no counts, no stored images or events."""
    for service in emu.values():
        service.reset()


def _block_types() -> dict[str, Any]:
    from prefect_aws import S3Bucket

    from blocks import HautCredentials, MicrioCredentials, MinivizCredentials, VizioSenseCredentials

    return {"micrio": MicrioCredentials, "miniviz": MinivizCredentials, "viziosense": VizioSenseCredentials,
            "haut": HautCredentials, "s3": S3Bucket}  # fmt: skip


async def save_blocks(emu: RunningEmulators, time_scale: float) -> dict[str, str]:
    """The demo blocks (``demo.setup``) saved again as ``faults-<service>``, with Miniviz's data interval off.
    Returns the block name per service."""
    demo = await save_demo_blocks(emu, time_scale)
    names = await copy_blocks(demo, "faults", list(demo))
    miniviz = await _block_types()["miniviz"].aload(names["miniviz"])
    miniviz.data_interval_seconds = 0.0
    await miniviz.asave(names["miniviz"], overwrite=True)
    return names


async def copy_blocks(
    names: dict[str, str], prefix: str, services: list[str], **changes: Any
) -> dict[str, str]:
    """Copies of the ``services``' blocks as ``<prefix>-<service>`` with ``changes`` (e.g. a shorter retry
    budget); the other services keep their block. Returns the block name per service."""
    out = dict(names)
    for service in services:
        block = await _block_types()[service].aload(names[service])
        for field_name, value in changes.items():
            setattr(block, field_name, value)
        out[service] = f"{prefix}-{service}"
        await block.asave(out[service], overwrite=True)
    return out


# --- what a run did ------------------------------------------------------------------------------------------


@dataclass
class Accounting:
    flow: str
    items: int
    done: int = 0
    rejected: int = 0
    failed: int = 0
    lost: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    duplicate_bound: int = 0
    requests: int = 0  # API requests the emulators received (fault answers included)
    faults_injected: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why items count as lost
    failures: list[str] = field(default_factory=list)  # the errors of the failed items

    def lose(self, why: str) -> None:
        self.lost += 1
        self.problems.append(why)

    @property
    def duplicate_count(self) -> int:
        return sum(self.duplicates.values())

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duplicate_count": self.duplicate_count}


def account_rows(acc: Accounting, expected: Iterable[Any], rows: Iterable[tuple[Any, str, Any]]) -> None:
    """Check ``(item id, outcome, reason)`` rows against the expected item ids: each exactly once, with an
    outcome of done / rejected / failed, and a reason unless done. Fills the counts; the rest is lost."""
    expected = list(expected)
    seen: Counter[Any] = Counter()
    for item, outcome, reason in rows:
        seen[item] += 1
        if item not in expected:
            acc.problems.append(f"{item!r}: in the report but not an input item")  # not lost: extra
            continue
        if seen[item] > 1:
            continue
        has_reason = isinstance(reason, str) and reason.strip() != ""
        if outcome == "done":
            acc.done += 1
        elif outcome in ("rejected", "failed") and has_reason:
            setattr(acc, outcome, getattr(acc, outcome) + 1)
            if outcome == "failed":
                acc.failures.append(reason)
        else:
            acc.lose(f"{item!r}: outcome {outcome!r} with reason {reason!r}")
    for item in expected:
        if seen[item] == 0:
            acc.lose(f"{item!r}: not in the report")
        elif seen[item] > 1:
            acc.lose(f"{item!r}: {seen[item]} times in the report")


def received(emu: RunningEmulators, services: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {s: emu[s].received() for s in services}


def add_emulator_counts(acc: Accounting, got: dict[str, dict[str, Any]]) -> None:
    for service, state in got.items():
        acc.requests += sum(state["requests"].values()) + sum(
            n for kind, n in state["faults_injected"].items() if kind not in ("latency", "drop_after")
        )
        for op, n in state["duplicates"].items():
            acc.duplicates[f"{service}.{op}"] = n
        for kind, n in state["faults_injected"].items():
            acc.faults_injected[kind] = acc.faults_injected.get(kind, 0) + n


def _cell(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


# --- the four flows ------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A prepared run: the flow's arguments and the ids of its input items."""

    args: dict[str, Any]
    items: list[Any]

    @property
    def report_path(self) -> str:
        return self.args["outputs"]["report"]


class Case:
    """One flow in the fault suite: ``prepare`` its input and arguments, then ``account`` for a run (from its
    report files and the emulators' counts only, so a run that ended Failed is accounted for the same way)."""

    name: str
    target: str  # module:flow
    services: list[str]  # emulators the flow calls (S3 aside: moto has no fault injection)
    resumable = True  # a re-run of the same input finishes what the last one left failed
    work_routes: dict[str, str]  # service -> path pattern of the call every item needs

    def faults(self) -> dict[str, dict[str, Any]]:
        """The mixed profile on every emulator the flow calls, the outage placed mid-run."""
        raise NotImplementedError

    def lost_answer_faults(self) -> dict[str, dict[str, Any]]:
        """Answers lost after the side effect happened, on the routes that create something."""
        raise NotImplementedError

    def refusal_faults(self) -> dict[str, dict[str, Any]]:
        """HTTP 500 (not retried) on every call that does an item's work: every item fails."""
        return {service: refused(pattern) for service, pattern in self.work_routes.items()}

    def long_outage_faults(self, duration: float = 500.0) -> dict[str, dict[str, Any]]:
        """Only the outage, ``duration`` emulated seconds long (for blocks whose retry budget is shorter)."""
        return {
            service: {"outage": {**config["outage"], "duration": duration}}
            for service, config in self.faults().items()
        }

    def prepare(self, emu: RunningEmulators, workdir: Path, blocks: dict[str, str], scale: float) -> Run:
        raise NotImplementedError

    def account(self, emu: RunningEmulators, run: Run) -> Accounting:
        raise NotImplementedError


class MicrioCase(Case):
    """A manifest of S3 images (+ two rows rejected as input) migrated into the demo folder."""

    name, target, services = "micrio_migration", "flows.micrio_migration:migrate_to_micrio", ["micrio"]
    images, batch_size = 30, 5
    work_routes = {"micrio": r"/v2/images/add$"}

    def faults(self):
        return {"micrio": mixed_faults(outage_after=6)}  # of ~10 requests: during the adds

    def lost_answer_faults(self):
        return {"micrio": lost_answers(r"/v2/images/add$")}

    def prepare(self, emu, workdir, blocks, scale):
        from tests.images import jpeg_bytes

        s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
        rows = []
        for i in range(self.images):
            key = f"faults/micrio/img-{i:03d}.jpg"
            s3.put_object(Bucket=bucket, Key=key, Body=jpeg_bytes(64 + i, 48, text=str(i)))
            rows.append({"source_url": f"s3://{bucket}/{key}", "name": f"photo {i}"})
        rows += [{"source_url": rows[0]["source_url"], "name": "again"}, {"source_url": "ftp://x/y.jpg"}]
        pd.DataFrame(rows).to_csv(workdir / "manifest.csv", index=False)
        args = {
            "source": str(workdir / "manifest.csv"),
            "micrio_block": blocks["micrio"],
            "s3_bucket_block": blocks["s3"],
            "target": {"folder_id": emu["micrio"].credentials["root_folder_id"]},
            "adding": {"batch_size": self.batch_size},
            "polling": {"initial_seconds": 5 * scale, "max_seconds": 20 * scale},
            "outputs": {"journal": str(workdir / "journal.jsonl"), "report": str(workdir / "report.csv")},
        }
        # the report's row numbers
        return Run(args, list(range(1, len(rows) + 1)))

    def account(self, emu, run):
        report = pd.read_csv(run.report_path)
        acc = Accounting(self.name, items=len(run.items))
        # skipped: the manifest row repeating row 1, not delivered by design (row 1 delivers its image)
        outcome = {"skipped": "rejected"}
        account_rows(acc, run.items,
                     ((r.row, outcome.get(r.outcome, r.outcome), _cell(r.error)) for r in report.itertuples()))  # fmt: skip
        got = received(emu, self.services)
        add_emulator_counts(acc, got)
        # README: a connection broken after images/add was sent adds that batch again: one batch per lost answer.
        acc.duplicate_bound = self.batch_size * got["micrio"]["faults_injected"].get("drop_after", 0)
        return acc


class HarvestCase(Case):
    """The demo fleet (13 cameras, 2 offline): originals to S3, a fitted copy and a data event to Miniviz."""

    name, target = "snapshot_harvest", "flows.snapshot_harvest:harvest_snapshots"
    services = ["viziosense", "miniviz"]
    resumable = False  # every run takes new snapshots
    work_routes = {"viziosense": r"/devices/[^/]+/image$"}

    def faults(self):  # of ~35 VizioSense and ~24 Miniviz requests
        return {"viziosense": mixed_faults(outage_after=20), "miniviz": mixed_faults(outage_after=8, seed=3)}

    def lost_answer_faults(self):
        return {
            "viziosense": lost_answers(r"/devices/[^/]+/image$"),
            "miniviz": lost_answers(r"^/api/project/"),
        }

    def prepare(self, emu, workdir, blocks, scale):
        args = {
            "viziosense_block": blocks["viziosense"],
            "s3_bucket_block": blocks["s3"],
            "miniviz_block": blocks["miniviz"],
            "s3_layout": {"prefix": "faults/snapshots"},
            "timing": {
                "ready_after_seconds": 20 * scale,
                "poll_interval_seconds": 2 * scale,
                "image_timeout_seconds": 500 * scale,
            },
            "outputs": {"state": str(workdir / "pacing.json"), "report": str(workdir / "report.csv")},
        }
        # before any fault: the whole fleet
        return Run(args, _device_uuids(emu))

    def account(self, emu, run):
        report = pd.read_csv(run.report_path)
        acc = Accounting(self.name, items=len(run.items))
        # deferred (a Miniviz push waits for its pacing slot) is delivered as far as the suite is concerned
        outcome = {"done": "done", "deferred": "done", "skipped": "rejected", "rejected": "rejected",
                   "failed": "failed"}  # fmt: skip
        rows = [
            (r.device_uuid, outcome.get(r.outcome, r.outcome), _cell(r.reason)) for r in report.itertuples()
        ]
        account_rows(acc, run.items, rows)
        s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
        for r in report[report.outcome.isin(["done", "deferred"])].itertuples():
            for key in (r.s3_raw_key, r.s3_annotated_key):
                if not _s3_has(s3, bucket, key):
                    acc.lose(f"{r.device_uuid}: done, but {key!r} is not in S3")
        # Each camera's Miniviz image and data event are outcomes too: sent, or not sent with a reason.
        for r in report.itertuples():
            for what, status, reason in (("image push", r.image_push, r.image_push_reason),
                                         ("data event", r.data_event, r.data_event_reason)):  # fmt: skip
                if status in ("deferred", "failed", "skipped") and not _cell(reason):
                    acc.lose(f"{r.device_uuid}: {what} {status} without a reason")
                elif status == "pending":
                    acc.lose(f"{r.device_uuid}: {what} still pending at the end of the run")
        got = received(emu, self.services)
        images = got["miniviz"]["accepted"].get("image", 0) - got["miniviz"]["duplicates"].get("image", 0)
        if images < (report.image_push == "sent").sum():
            acc.lose("Miniviz holds fewer images than the report says were pushed")
        add_emulator_counts(acc, got)
        acc.duplicate_bound = 0  # no POST is retried and nothing resumes: nothing may arrive twice
        return acc


class BackfillCase(Case):
    """A CSV of 160 readings of 4 meters (3 rows bad) into a Miniviz project with the data limit off."""

    name, target, services = "miniviz_backfill", "flows.miniviz_backfill:miniviz_backfill", ["miniviz"]
    rows = 160
    work_routes = {"miniviz": r"^/api/project/[^/]+$"}

    def faults(self):
        return {"miniviz": mixed_faults(outage_after=60)}  # of ~160 requests

    def lost_answer_faults(self):
        return {"miniviz": lost_answers(r"^/api/project/[^/]+$", drop_rate=0.05)}

    def prepare(self, emu, workdir, blocks, scale):
        times = pd.date_range("2024-01-01", periods=self.rows, freq="1min", tz="UTC")
        rows = [{"timestamp": f"{t:%Y-%m-%dT%H:%M:%SZ}", "label_key": f"meter-{i % 4}", "v": i}
                for i, t in enumerate(times)]  # fmt: skip
        rows[7]["timestamp"] = "not a time"
        rows[8]["label_key"] = None
        rows[9]["v"] = None
        pd.DataFrame(rows).to_csv(workdir / "history.csv", index=False)
        args = {
            "source": str(workdir / "history.csv"),
            "miniviz_block": blocks["miniviz"],
            "pacing": {"concurrency": 8, "batch_size": 60},
            "outputs": {
                "journal": str(workdir / "journal.jsonl"),
                "report": str(workdir / "report.csv"),
                "dead_letter": str(workdir / "dead-letter.csv"),
            },
        }
        return Run(args, list(range(self.rows)))  # the dead-letter file's row numbers (v = row)

    def account(self, emu, run):
        """Rejected and failed rows are in the dead-letter file; every other row must be in Miniviz (done),
        or belong to a label the report shows unfinished *with the reason* (a run that stopped early)."""
        acc = Accounting(self.name, items=len(run.items))
        dead_letter = Path(run.args["outputs"]["dead_letter"])
        dead = pd.read_csv(dead_letter) if dead_letter.exists() else pd.DataFrame(columns=["row"])
        # a row skipped by design (no metric value) is, like a rejected one, not sent and given a reason
        rows = [
            (
                int(r.row),
                "rejected" if r.status == "skipped" else r.status,
                _cell(r.detail) or _cell(r.reason),
            )
            for r in dead.itertuples()
        ]
        listed = {row for row, _, _ in rows}
        events = emu["miniviz"].control(
            "GET", "events", params={"project_id": _project(emu), "limit": 100_000}
        )
        stored = {int(e["payload"]["v"]) for e in events["events"] if "v" in e["payload"]}
        labels = pd.read_csv(run.args["source"])["label_key"]
        report = pd.read_csv(run.args["outputs"]["report"], keep_default_na=False)
        unfinished = {
            r.label_key: r.error for r in report.itertuples() if r.status not in ("done", "rejected")
        }
        for i in run.items:
            if i in listed:
                continue
            if i in stored:
                rows.append((i, "done", None))
            elif labels[i] in unfinished:
                rows.append((i, "failed", unfinished[labels[i]]))
        account_rows(acc, run.items, rows)
        got = received(emu, self.services)
        add_emulator_counts(acc, got)
        # A lost answer leaves its event failed (not retried in the run); a re-run sends it again, so at most
        # one duplicate per lost answer (flow docstring: failed events are not journaled, a re-run retries them).
        acc.duplicate_bound = got["miniviz"]["faults_injected"].get("drop_after", 0)
        return acc


class SkinCase(Case):
    """Six subjects' selfies in a local folder (v1). No unusable file: a rejected one would make every run
    Failed (the rule of tasks/run_state.py); rejections are covered by the flow's and the hostile-input tests."""

    name, target, services = "skin_analysis", "flows.skin_analysis:skin_analysis", ["haut"]
    subjects = 6
    work_routes = {"haut": r"/compute/$"}

    def faults(self):
        return {"haut": mixed_faults(outage_after=15)}  # of ~35 requests

    def lost_answer_faults(self):
        return {"haut": lost_answers(r"/subjects/$|/signed_upload_url/$|/compute/$")}

    def prepare(self, emu, workdir, blocks, scale):
        root = workdir / "selfies"
        for i in range(self.subjects):
            (root / f"subject-{i:02d}").mkdir(parents=True)
            (root / f"subject-{i:02d}" / "front.jpg").write_bytes(sample_selfie(i, size=384))
        args = {
            "source": str(root),
            "haut_block": blocks["haut"],
            "analysis": {"dataset_name": "fault-suite"},
            "upload": {"batch_size": 4},
            "polling": {
                "initial_delay": 20 * scale,
                "max_delay": 50 * scale,
                "results_timeout": 2000 * scale,
            },
            "outputs": {"journal": str(workdir / "journal.jsonl"), "report": str(workdir / "report.csv")},
        }
        return Run(args, list(range(1, self.subjects + 1)))  # the report's item numbers

    def account(self, emu, run):
        report = pd.read_csv(run.report_path)
        acc = Accounting(self.name, items=len(run.items))
        account_rows(acc, run.items, ((r.item, r.status, _cell(r.reason)) for r in report.itertuples()))
        got = received(emu, self.services)
        add_emulator_counts(acc, got)
        # README: no subject is ever created twice, a compute whose answer was lost is checked before it is
        # sent again, bytes are not uploaded twice once an upload finished: nothing may arrive twice.
        acc.duplicate_bound = 0
        return acc


CASES: dict[str, Case] = {c.name: c for c in (MicrioCase(), HarvestCase(), BackfillCase(), SkinCase())}


# --- helpers -------------------------------------------------------------------------------------------------


def _device_uuids(emu: RunningEmulators) -> list[str]:
    """Every camera of the VizioSense fleet (read before any fault is injected)."""
    import httpx

    v = emu["viziosense"]
    headers = {"Authorization": f"Bearer {v.credentials['api_key']}"}
    uuids, page, last = [], 1, 1
    while page <= last:
        answer = httpx.get(f"{v.url}/api/v1/devices", params={"per_page": 100, "page": page},
                           headers=headers, timeout=30)  # fmt: skip
        answer.raise_for_status()
        uuids += [d["uuid"] for d in answer.json()["data"]]
        page, last = page + 1, answer.json()["meta"]["last_page"]
    return uuids


def _project(emu: RunningEmulators) -> str:
    return emu["miniviz"].credentials["projects"][0]["project_id"]


def _s3_has(s3: Any, bucket: str, key: Any) -> bool:
    if not isinstance(key, str) or not key:
        return False
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception:
        return False
    return True


class RetryCounter(logging.Filter):
    """Counts the clients' "retrying in" debug lines (``clients.transport``), i.e. the retries a run made,
    per service, without letting those debug lines through to the console."""

    SERVICES = ("micrio", "viziosense", "miniviz", "haut")

    def __init__(self) -> None:
        super().__init__()
        self.retries: Counter[str] = Counter()
        self._shown: dict[str, int] = {}  # the level each logger let through before
        self._own: dict[str, int] = {}  # its own level setting, restored on exit

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.DEBUG and "retrying in" in record.getMessage():
            self.retries[record.name.removeprefix("clients.")] += 1
        return record.levelno >= self._shown.get(record.name, logging.NOTSET)

    def __enter__(self) -> RetryCounter:
        for service in self.SERVICES:
            logger = logging.getLogger(f"clients.{service}")
            self._shown[logger.name], self._own[logger.name] = logger.getEffectiveLevel(), logger.level
            logger.setLevel(logging.DEBUG)
            logger.addFilter(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, level in self._own.items():
            logger = logging.getLogger(name)
            logger.removeFilter(self)
            logger.setLevel(level)


def dumps(acc: Accounting) -> str:
    return json.dumps(acc.as_dict(), indent=1, default=str)
