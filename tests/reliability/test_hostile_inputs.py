"""A corpus of hostile inputs, each with its expected outcome: the run completes (no crash, no hang) and every
hostile item ends in the report as rejected (or failed) with a clear reason, or goes through after a
documented normalisation.

Each flow runs a handful of times over the whole corpus (a forked child per run, with a hang guard), then every
case is one test: ``test_hostile_input[<run>:<item>]`` looks up its item in that run's outcomes. Inputs are
generated into tmp dirs at test time (see ``corpus.py``); nothing big is committed.

Outcome vocabulary, per flow: backfill rows are ``sent`` or ``rejected`` (dead-letter reason code), backfill
files ``failed`` (the report's error) or their report status; skin images ``done``/``rejected``/``failed`` (the
report); Micrio sources ``done``/``failed``/``rejected`` (the report's outcome); harvest cameras ``done``.
``(run)`` items are about the run itself. A case marked xfail is a bug found here (see the reason).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import SecretStr

from blocks import HautCredentials, MicrioCredentials, MinivizCredentials, VizioSenseCredentials
from clients.miniviz import LABEL_KEY_RE, MAX_LABEL_KEY
from emulators.launcher import running_emulators
from flows.snapshot_harvest.keys import decode_metadata_value
from tests.conftest import TEST_TIME_SCALE
from tests.reliability import corpus
from tests.reliability.flowkit import FlowProcess, s3_client, save_s3_block, warm_up

pytestmark = pytest.mark.integration

HANG_GUARD = 180.0  # seconds per run: a guard against a hang, not a timing assertion
BUCKET = "demo-bucket"
T0 = 1_704_067_200_000
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Case:
    run: str  # the flow run that holds the item
    item: str  # the item's id in that run
    status: str  # expected outcome
    reason: str = ""  # a substring the reason must contain
    xfail: str | None = None  # a bug found here: the case flips to passing once it is fixed


@dataclass
class Outcome:
    status: str
    reason: Any = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reason = _text(self.reason)


def _text(value: Any) -> str:
    """Report cells as text: None and NaN (an empty cell) are ""."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


# --- emulators, blocks, runs ----------------------------------------------------------------------------------

HARVEST_DEVICES = {case: name for case, name in corpus.HOSTILE_NAMES.items()}


def _devices() -> list[dict[str, Any]]:
    devices = [
        {"name": name, "group": "hostile", "client_identifier": f"H-{n}", "geo_city": name[:60],
         "geo_country": "Ünïcødé", "is_online": 1, "uuid": f"00000000-0000-4000-8000-{n:012d}"}
        for n, name in enumerate(HARVEST_DEVICES.values())
    ]  # fmt: skip
    for n in (1, 2):  # two cameras with the same name
        devices.append({"name": "twin", "group": "hostile", "client_identifier": f"T-{n}", "is_online": 1,
                        "uuid": f"00000000-0000-4000-9000-{n:012d}"})  # fmt: skip
    return devices


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    config = tmp_path_factory.mktemp("hostile-emulators") / "emulators.json"
    config.write_text(
        json.dumps(
            {
                "miniviz": {"projects": [{"project_id": "hostile", "token": "mvz-hostile", "plan": "pro"}],
                            "data_interval": {"free": 0, "pro": 0}},
                "viziosense": {"devices": _devices(), "fleet": {"count": 0},
                               "image": {"width": 320, "height": 240, "quality": 85, "variants": 1,
                                         "render_workers": 1}},
            }
        )
    )  # fmt: skip
    with running_emulators(
        only=["micrio", "miniviz", "haut", "viziosense", "s3"],
        time_scale=TEST_TIME_SCALE,
        config_path=str(config),
    ) as running:
        warm_up()
        yield running


@pytest.fixture(scope="module")
def runs(emu, prefect_harness, tmp_path_factory):
    m, h, v = emu["micrio"].credentials, emu["haut"].credentials, emu["viziosense"].credentials
    MicrioCredentials(
        organisation_id=m["organisation_id"], api_key=SecretStr(m["api_key"]), base_url=emu["micrio"].url
    ).save("hostile-micrio", overwrite=True)
    MinivizCredentials(
        project_id="hostile",
        token=SecretStr("mvz-hostile"),
        base_url=emu["miniviz"].url,
        data_interval_seconds=0,
    ).save("hostile-miniviz", overwrite=True)
    HautCredentials(
        base_url=emu["haut"].url, company_id=h["company_id"], private_token=SecretStr(h["private_token"])
    ).save("hostile-haut", overwrite=True)
    VizioSenseCredentials(base_url=emu["viziosense"].url, api_key=SecretStr(v["api_key"])).save(
        "hostile-viziosense", overwrite=True
    )
    save_s3_block(emu["s3"], "hostile-s3")
    return Runs(emu, tmp_path_factory.mktemp("hostile-runs"))


class Runs:
    """Each flow run over its part of the corpus, run once on first use; outcomes by item."""

    def __init__(self, emu, workdir: Path) -> None:
        self.emu, self.workdir, self.s3 = emu, workdir, s3_client(emu["s3"])
        self._done: dict[str, dict[str, Outcome] | BaseException] = {}
        self._count = 0

    def outcomes(self, name: str) -> dict[str, Outcome]:
        if name not in self._done:
            folder = self.workdir / name
            folder.mkdir()
            try:
                self._done[name] = RUNS[name](self, folder)
            except Exception as exc:  # a broken check: every case of the run reports it, none runs it again
                self._done[name] = exc
        done = self._done[name]
        if isinstance(done, BaseException):
            raise done
        return done

    def flow(self, flow: str, params: dict[str, Any]) -> tuple[dict | None, str]:
        """Run a flow in a forked child: (its summary with its final state, or None if the run raised an
        exception other than the final-state rule's; its log tail)."""
        self._count += 1
        run = FlowProcess(flow, params, self.workdir, self._count)
        try:
            code = run.wait(HANG_GUARD)
        finally:
            run.stop_if_running()
        assert code is not None, (
            f"{flow} hung on hostile input (killed after {HANG_GUARD} s):\n{run.log_tail()}"
        )
        return (run.summary() if code == 0 else None), run.log_tail(6000)


def final(summary: dict) -> Outcome:
    """The run's final state: "done" when Completed, else "failed" with the Failed state's message."""
    return Outcome("failed", summary["run_message"]) if summary["run_state"] == "FAILED" else Outcome("done")


def run_failed(log: str, items: list[str]) -> dict[str, Outcome]:
    """Every item of a run that did not complete: the last error line of its log as the reason."""
    errors = [line for line in log.splitlines() if "Error" in line or "error" in line]
    reason = errors[-1] if errors else log[-300:]
    return {item: Outcome("run failed", reason) for item in [*items, "(run)"]}


# --- Miniviz backfill -----------------------------------------------------------------------------------------

# (item, timestamp, label, value, note): one row each in rows.csv, timestamp T0 + row seconds unless given
BACKFILL_ROWS: list[tuple[str, Any, Any, Any, Any]] = [
    ("baseline", None, "ok", 1.5, "fine"),
    ("timestamp_text", "yesterday", "ok", 1.0, ""),
    ("timestamp_empty", "", "ok", 1.0, ""),
    ("timestamp_inf", "inf", "ok", 1.0, ""),
    ("timestamp_year_9999", "9999-12-31T00:00:00Z", "ok", 1.0, ""),
    ("timestamp_negative", "-5", "ok", 1.0, ""),
    ("value_empty", None, "ok", "", ""),
    ("value_inf", None, "ok", "inf", ""),
    ("value_minus_inf", None, "ok", "-inf", ""),
    ("value_nan_keeps_text", None, "ok", "nan", "only text"),
    ("huge_string", None, "ok", "", "x" * 1_000_000),
    ("control_chars_in_text", None, "ok", 2.0, "a\x00b\x1bc\u202e"),
    ("label_accents", None, "Küche", 1.0, ""),
    ("label_cjk", None, "温度センサー", 1.0, ""),
    ("label_escape", None, "\x1b[31mred\x1b[0m", 1.0, ""),
    ("label_nul", None, "a\x00b", 1.0, ""),
    ("label_newline", None, "line1\nline2", 1.0, ""),
    ("label_bidi", None, "\u202eevil", 1.0, ""),
    ("label_zero_width", None, "ca\u200bm", 1.0, ""),
    ("label_path_traversal", None, "../../etc/passwd", 1.0, ""),
    ("label_huge", None, "L" * 10_000, 1.0, ""),
    ("label_blank", None, "   ", 1.0, ""),
    ("duplicate_row", None, "ok", 1.5, "fine"),  # the same as "baseline", timestamp included
]


T_ROWS = T0 + 86_400_000  # rows.csv has its own day, apart from the other files' rows


def _row_ms(n: int, item: str) -> int:
    return T_ROWS if item in ("baseline", "duplicate_row") else T_ROWS + n * 1000


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")  # quotes every \r and \n inside values
        writer.writerow(header)
        writer.writerows(rows)


def _parquet(path: Path, columns: dict[str, Any]) -> None:
    pq.write_table(pa.table(columns), path)


def backfill_inputs(src: Path) -> None:
    rows = []
    for n, (item, ts, label, value, note) in enumerate(BACKFILL_ROWS):
        rows.append([_row_ms(n, item) if ts is None else ts, label, value, note])
    _write_csv(src / "rows.csv", ["timestamp", "label_key", "value", "note"], rows)
    (src / "malformed.csv").write_text(f"timestamp,label_key,v\n{T0},malformed,1\n{T0 + 1},malformed,2,x,y\n")
    (src / "unterminated.csv").write_text(f'timestamp,label_key,v\n{T0},"unterminated,1\n{T0 + 1},u,2\n')
    (src / "empty.csv").write_bytes(b"")
    (src / "header_only.csv").write_text("timestamp,label_key,v\n")
    (src / "binary.csv").write_bytes(corpus.selfie(1))
    (src / "missing_column.csv").write_text(f"time,label_key,v\n{T0},missing,1\n")
    (src / "bad.jsonl").write_text(f'{{"timestamp": {T0}, "label_key": "jsonl", "v": 1}}\n{{not json\n')
    whole = gzip.compress(f"timestamp,label_key,v\n{T0},gz,1\n".encode() * 2000)
    (src / "truncated.csv.gz").write_bytes(whole[: len(whole) // 2])
    buf = io.BytesIO()
    pq.write_table(pa.table({"timestamp": [T0], "label_key": ["pq"], "v": [1]}), buf)
    (src / "truncated.parquet").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _parquet(src / "empty.parquet", {"timestamp": pa.array([], pa.int64()), "label_key": pa.array([], pa.string()),
                                     "v": pa.array([], pa.float64())})  # fmt: skip
    _parquet(src / "nested.parquet", {"timestamp": [T0, T0 + 1, T0 + 2, T0 + 3], "label_key": ["nested"] * 4,
                                      "lst": [[1, 2], None, None, None], "obj": [None, {"a": 1}, None, None],
                                      "raw": [None, None, b"\x00\x01", None], "ok": [1.0] * 4})  # fmt: skip
    _parquet(src / "bool_timestamp.parquet", {"timestamp": [True], "label_key": ["bool"], "v": [1]})
    (src / "bom_crlf.csv").write_bytes(b"\xef\xbb\xbftimestamp,label_key,v\r\n%d,bom,1\r\n" % T0)
    _write_csv(src / "wrong_types.csv", ["timestamp", "label_key", "v"],
               [[T0, "wrong_types", "1"], [T0 + 1000, "wrong_types", "abc"]])  # fmt: skip
    _write_csv(src / "weird_header.csv", ["timestamp", "label_key", "temp\x01", "température", "a b"],
               [[T0, "weird_header", 1, 2, 3]])  # fmt: skip


def _sent(events: list[dict], check: Callable[[dict], bool] = lambda e: True) -> Outcome | None:
    found = [e for e in events if check(e)]
    if not found:
        return None
    e = found[0]
    label = e["label_key"]
    if not (LABEL_KEY_RE.match(label) and len(label) <= MAX_LABEL_KEY):
        return Outcome("sent with an invalid label_key", label)
    status = "sent" if len(found) == 1 else f"sent {len(found)} times"
    return Outcome(status, f"label={label} payload={json.dumps(e['payload'])}", {"event": e})


def run_backfill(runs: Runs, folder: Path) -> dict[str, Outcome]:
    src = folder / "in"
    src.mkdir()
    backfill_inputs(src)
    files = sorted(p.name for p in src.iterdir())
    summary, log = runs.flow(
        "backfill",
        {"source": str(src), "miniviz_block": "hostile-miniviz",
         "outputs": {"journal": str(folder / "journal.jsonl"), "report": str(folder / "report.csv")}},
    )  # fmt: skip
    items = [item for item, *_ in BACKFILL_ROWS] + files
    if summary is None:
        return run_failed(log, items)
    # rows and files to fix make the run Failed: its report and dead letters are written first
    run = final(summary)
    miniviz = runs.emu["miniviz"]
    events = miniviz.control("GET", "events", params={"project_id": "hostile", "limit": 100_000})["events"]
    for e in events:
        e["payload"] = json.loads(e["payload"]) if isinstance(e["payload"], str) else e["payload"]
    report = pd.read_csv(summary["report"], keep_default_na=False)
    dead = pd.read_csv(summary["dead_letter"], keep_default_na=False)
    out: dict[str, Outcome] = {"(run)": run}

    def rejected(file: str, row: int) -> Outcome | None:
        """The dead-letter row: rejected, or skipped by design (an exact duplicate, no metric value)."""
        hit = dead[(dead.source == str(src / file)) & (dead.row == row)]
        return Outcome(hit.iloc[0].status, " ".join(hit.iloc[0][["reason", "detail"]])) if len(hit) else None

    rows_file = str(src / "rows.csv")
    for n, (item, *_) in enumerate(BACKFILL_ROWS):
        ms = SENT_AT.get(item, _row_ms(n, item))
        from_rows = [e for e in events if e["timestamp"] == ms]
        if item == "baseline":  # "duplicate_row" is the same event: the first one found is the baseline's
            from_rows = from_rows[:1]
        out[item] = rejected("rows.csv", n) or _sent(from_rows) or Outcome("missing", rows_file)
    for file in files:
        rows = report[report.source == str(src / file)]
        labels = {e["label_key"] for e in events}
        if not len(rows):
            out[file] = Outcome("missing from the report")
        elif (rows.status == "failed").any():
            leaked = Path(file).stem in labels  # every file uses its own name as its label
            out[file] = Outcome("failed and partly sent" if leaked else "failed", " ".join(rows.error))
        else:
            out[file] = Outcome("+".join(sorted(set(rows.status))), rows.to_json(orient="records"))
    for n, item in enumerate(("list", "dict", "bytes", "plain")):
        out[f"nested.parquet:{item}"] = rejected("nested.parquet", n) or _sent(
            events, lambda e, n=n: e["label_key"] == "nested" and e["timestamp"] == T0 + n
        )
    out["bool_timestamp.parquet:row"] = rejected("bool_timestamp.parquet", 0) or Outcome("missing")
    out["malformed.csv:line 3"] = rejected("malformed.csv", 1) or Outcome("missing")  # row = line - 2
    out["wrong_types.csv:number"] = _sent(
        events, lambda e: e["label_key"] == "wrong_types" and e["timestamp"] == T0
    )
    out["wrong_types.csv:word"] = _sent(
        events, lambda e: e["label_key"] == "wrong_types" and e["timestamp"] > T0
    )
    out["weird_header.csv:row"] = _sent(events, lambda e: e["label_key"] == "weird_header")
    return out


def run_backfill_empty(runs: Runs, folder: Path) -> dict[str, Outcome]:
    (folder / "in").mkdir()
    summary, log = runs.flow(
        "backfill",
        {"source": str(folder / "in"), "miniviz_block": "hostile-miniviz",
         "outputs": {"journal": str(folder / "journal.jsonl"), "report": str(folder / "report.csv")}},
    )  # fmt: skip
    if summary is None:  # an exception ends the run Failed too (before any report: there is nothing to read)
        return {"(run)": Outcome("failed", log)}
    return {"(run)": final(summary)}


ROW_REASON = {
    "timestamp_text": "timestamp_invalid", "timestamp_empty": "timestamp_missing", "timestamp_inf": "timestamp_invalid",
    "value_inf": "value_not_finite", "value_minus_inf": "value_not_finite",
    "huge_string": "value_too_big", "label_blank": "label_missing",
}  # fmt: skip
# Rows whose timestamp is given and valid: where Miniviz holds them (any integer of ms, before 1970 negative).
SENT_AT = {"timestamp_year_9999": 253_402_214_400_000, "timestamp_negative": -5000}  # "-5": epoch seconds
BACKFILL_CASES = [
    Case("backfill", "(run)", "failed", "rejected; report"),
    *(Case("backfill", item, "rejected", reason) for item, reason in ROW_REASON.items()),
    *(Case("backfill", item, "sent", "payload=") for item in SENT_AT),
    Case("backfill", "value_empty", "skipped", "no_metrics"),
    Case("backfill", "baseline", "sent", 'payload={"value": 1.5, "note": "fine"}'),
    Case("backfill", "value_nan_keeps_text", "sent", 'payload={"note": "only text"}'),
    Case("backfill", "control_chars_in_text", "sent", r'"note": "a\u0000b\u001bc\u202e"'),
    Case("backfill", "label_accents", "sent", "label=Kuche "),
    *(Case("backfill", item, "sent", "label=") for item in (
        "label_cjk", "label_escape", "label_nul", "label_newline", "label_bidi", "label_zero_width", "label_huge")),
    Case("backfill", "label_path_traversal", "sent", "label=../../etc/passwd "),  # allowed characters
    Case("backfill", "duplicate_row", "skipped", "duplicate"),
    Case("backfill", "malformed.csv", "done+rejected"),  # its good row sent, the ragged line rejected
    Case("backfill", "malformed.csv:line 3", "rejected", "bad_line the CSV line has more fields than the header (ragged row): line 3: expected 3 fields, saw 5"),
    Case("backfill", "unterminated.csv", "failed", "EOF inside string"),
    Case("backfill", "empty.csv", "failed", "No columns to parse from file"),
    Case("backfill", "binary.csv", "failed", "cannot be read as CSV"),
    Case("backfill", "missing_column.csv", "failed", "['timestamp'] not in the file"),
    Case("backfill", "bad.jsonl", "failed", "cannot be read as JSON Lines"),
    Case("backfill", "truncated.csv.gz", "failed", "cannot be read as gzipped CSV: EOFError"),
    Case("backfill", "truncated.parquet", "failed", "cannot be read as Parquet"),
    Case("backfill", "header_only.csv", "empty", "the file holds no rows"),
    Case("backfill", "empty.parquet", "empty", "the file holds no rows"),
    Case("backfill", "bom_crlf.csv", "done"),
    Case("backfill", "nested.parquet:list", "rejected", "value_nested"),
    Case("backfill", "nested.parquet:dict", "rejected", "value_nested"),
    Case("backfill", "nested.parquet:bytes", "rejected", "value_unsupported"),
    Case("backfill", "nested.parquet:plain", "sent", 'payload={"ok": 1.0}'),
    Case("backfill", "bool_timestamp.parquet:row", "rejected", "timestamp_invalid"),
    Case("backfill", "wrong_types.csv:word", "sent", 'payload={"v": "abc"}'),
    Case("backfill", "wrong_types.csv:number", "sent", 'payload={"v": 1}'),
    Case("backfill", "weird_header.csv:row", "sent", '"temp\\u0001": 1, "temp\\u00e9rature": 2, "a b": 3'),
    Case("backfill-empty", "(run)", "failed", "matches no file"),
]  # fmt: skip


# --- skin analysis --------------------------------------------------------------------------------------------

SKIN_FILES: dict[str, tuple[Callable[[], bytes], str, str]] = {  # file -> (bytes, status, reason)
    "good.jpg": (lambda: corpus.selfie(1), "done", ""),
    "not_image.jpg": (
        lambda: b"Dear diary, this is not a photo",
        "rejected",
        "not a recognised image format",
    ),
    "empty.jpg": (lambda: b"", "rejected", "empty (0 bytes)"),
    "truncated.jpg": (corpus.truncated_jpeg, "rejected", "truncated or corrupt JPEG"),
    "bomb.png": (corpus.decompression_bomb_png, "rejected", "too many pixels"),
    "huge_20000x20000.png": (corpus.huge_png, "rejected", "too many pixels"),
    "claims_20000x20000.jpg": (lambda: corpus.jpeg_claiming(20_000, 20_000), "rejected", "too many pixels"),
    "one_pixel.png": (corpus.tiny_png, "rejected", "1×1 px (at least 256×256)"),
    "gif_named.jpg": (corpus.gif_bytes, "rejected", "format GIF (one of JPEG, PNG)"),
}
# file names (hence subject names) with hostile characters: analysed like any other
# (a name with "/" or NUL cannot be a file name; one starting with "." is a hidden file, left out by design)
SKIN_NAMED = {
    case: name[:200]
    for case, name in corpus.HOSTILE_NAMES.items()
    if "/" not in name and "\x00" not in name and not name.startswith(".")
}


def run_skin_folder(runs: Runs, folder: Path) -> dict[str, Outcome]:
    src = folder / "in"
    src.mkdir()
    names = {}
    for name, (make, *_) in SKIN_FILES.items():
        (src / name).write_bytes(make())
        names[name] = name
    for n, (case, name) in enumerate(SKIN_NAMED.items()):
        (src / f"{name}.jpg").write_bytes(corpus.selfie(100 + n))
        names[f"{name}.jpg"] = f"name:{case}"
    path, run, log = run_skin(runs, _skin_params(str(src), folder, "report.csv"))
    if path is None:
        return run_failed(log, list(names.values()))
    report = pd.read_csv(path, keep_default_na=False)  # CSV on purpose: names hold \r and \n
    out = {"(run)": run if len(report) == len(names) else Outcome(f"report has {len(report)} rows")}
    for row in report.to_dict("records"):
        item = names.get(Path(row["image"]).name, f"unexpected {row['image']!r}")
        out[item] = Outcome(row["status"], row["reason"])
    return out


def _skin_params(source: str, folder: Path, report: str) -> dict[str, Any]:
    return {
        "source": source, "haut_block": "hostile-haut", "s3_bucket_block": "hostile-s3",
        "analysis": {"dataset_name": "hostile"},
        "privacy": {"include_file_names": True, "include_subject_names": True},  # to match rows with files
        "outputs": {"journal": str(folder / "journal.jsonl"), "report": str(folder / report)},
        "polling": {"initial_delay": 0.05, "max_delay": 0.2, "results_timeout": 30.0},
    }  # fmt: skip


def run_skin(runs: Runs, params: dict[str, Any]) -> tuple[Path | None, Outcome, str]:
    """Run the skin flow: (its report, or None if it crashed before writing one; the run's outcome, "done" when
    Completed, else "failed" with the Failed state's message; its log tail)."""
    summary, log = runs.flow("skin", params)
    report = Path(params["outputs"]["report"])
    if summary is None or not report.exists():
        return None, Outcome("run failed", log[-300:]), log
    return report, final(summary), log


# manifest rows: item -> (subject, image path relative to the manifest)
def _skin_manifest_rows(folder: Path) -> dict[str, tuple[str, str]]:
    rows = {
        f"subject:{case}": (name, f"photos/{n}.jpg")
        for n, (case, name) in enumerate(corpus.HOSTILE_NAMES.items())
    }
    rows.update({
        "path:traversal_to_etc_passwd": ("trav-1", "../" * 12 + "etc/passwd"),
        "path:traversal_inside": ("trav-2", "photos/../photos/0.jpg"),
        "path:missing": ("trav-3", "photos/missing.jpg"),
        "path:s3_traversal": ("trav-4", f"s3://{BUCKET}/a/../../b.jpg"),
        "path:directory": ("trav-5", "photos"),
    })  # fmt: skip
    return rows


SKIN_SUBJECT_CASES = [
    Case("skin-manifest", f"subject:{case}", "done")
    for case in corpus.HOSTILE_NAMES
    if case not in ("nul", "long", "blank")
]
SKIN_CASES = [
    *(Case("skin-folder", item, status, reason) for item, (_, status, reason) in SKIN_FILES.items()),
    *(Case("skin-folder", f"name:{case}", "done") for case in SKIN_NAMED if case != "blank"),
    Case("skin-folder", "name:blank", "rejected", "the subject is empty"),
    # one report row per file, although names hold \r and \n; rejected files make the run Failed
    Case("skin-folder", "(run)", "failed", "rejected; report"),
    *SKIN_SUBJECT_CASES,
    Case("skin-manifest", "(run)", "failed", "rejected; report"),
    Case("skin-manifest", "subject:nul", "rejected", "contains a null character"),
    Case("skin-manifest", "subject:long", "rejected", "is 5000 characters long (at most 512)"),
    Case("skin-manifest", "subject:blank", "rejected", "the subject is empty"),
    Case("skin-manifest", "path:traversal_to_etc_passwd", "rejected", "not a recognised image format"),
    Case("skin-manifest", "path:traversal_inside", "done"),
    Case("skin-manifest", "path:missing", "rejected", "file not found"),
    Case("skin-manifest", "path:s3_traversal", "rejected", "'..' segment (no path traversal)"),
    Case("skin-manifest", "path:directory", "rejected", "not a file"),
    Case("skin-s3-manifest", "s3_image", "done"),
    Case("skin-s3-manifest", "s3_relative_traversal", "rejected", "'..' segment (no path traversal)"),
    Case("skin-s3-manifest", "local_image_path", "rejected", "a manifest read from S3 names a local path"),
    Case("skin-empty", "(run)", "failed", "the source folder holds no image. no images; report"),
]


def run_skin_manifest(runs: Runs, folder: Path) -> dict[str, Outcome]:
    rows = _skin_manifest_rows(folder)
    (folder / "photos").mkdir()
    for n in range(len(corpus.HOSTILE_NAMES)):
        (folder / "photos" / f"{n}.jpg").write_bytes(corpus.selfie(200 + n))
    _write_csv(folder / "manifest.csv", ["subject", "image"], [list(v) for v in rows.values()])
    path, run, log = run_skin(runs, _skin_params(str(folder / "manifest.csv"), folder, "report.parquet"))
    if path is None:
        return run_failed(log, list(rows))
    report = pd.read_parquet(path).sort_values("item")
    out = {"(run)": run}
    for item, row in zip(rows, report.to_dict("records"), strict=True):  # one image per manifest row
        out[item] = Outcome(row["status"], row["reason"])
    return out


def run_skin_s3_manifest(runs: Runs, folder: Path) -> dict[str, Outcome]:
    local = folder / "local.jpg"
    local.write_bytes(corpus.selfie(400))
    runs.s3.put_object(Bucket=BUCKET, Key="skin-s3/photos/ok.jpg", Body=corpus.selfie(401))
    rows = {
        "s3_image": ("s3-subject-1", "photos/ok.jpg"),
        "s3_relative_traversal": ("s3-subject-2", "../../../secret.jpg"),
        "local_image_path": ("s3-subject-3", str(local)),
    }
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows([["subject", "image"], *map(list, rows.values())])
    runs.s3.put_object(Bucket=BUCKET, Key="skin-s3/manifest.csv", Body=buf.getvalue().encode())
    path, _, log = run_skin(runs, _skin_params(f"s3://{BUCKET}/skin-s3/manifest.csv", folder, "r.parquet"))
    if path is None:
        return run_failed(log, list(rows))
    report = pd.read_parquet(path).sort_values("item")
    return {
        item: Outcome(r["status"], r["reason"] or "")
        for item, r in zip(rows, report.to_dict("records"), strict=True)
    }


def run_skin_empty(runs: Runs, folder: Path) -> dict[str, Outcome]:
    (folder / "in").mkdir()
    _, run, _ = run_skin(runs, _skin_params(str(folder / "in"), folder, "report.csv"))
    return {"(run)": run}


# --- Micrio migration -----------------------------------------------------------------------------------------

# item -> (key under the prefix, bytes, outcome, text)
MICRIO_KEYS: dict[str, tuple[str, Callable[[], bytes], str, str]] = {
    "good": ("good.jpg", lambda: corpus.selfie(1), "done", "ready"),
    "accents_emoji": ("café ☕.jpg", lambda: corpus.selfie(2), "done", "ready"),
    "cjk": ("名前.jpg", lambda: corpus.selfie(3), "done", "ready"),
    "space_percent": ("space and %20.jpg", lambda: corpus.selfie(4), "done", "ready"),
    "query_fragment": ("query?x=1#fragment.jpg", lambda: corpus.selfie(5), "done", "ready"),
    "double_slash": ("double//slash.jpg", lambda: corpus.selfie(6), "done", "ready"),
    "long_key": ("long-" + "k" * 900 + ".jpg", lambda: corpus.selfie(7), "done", "ready"),
    # checked by content before sending: a .jpg that is not an image is the user's to fix; other files are left out
    "not_image": ("not_image.jpg", lambda: b"not an image at all", "rejected", "not an image"),
    "empty_file": ("empty.jpg", lambda: b"", "rejected", "not an image: empty (0 bytes)"),
    "text_file": ("readme.txt", lambda: b"notes", "skipped", "left out of the prefix"),
    # Micrio exists for gigapixel images: what is too big for a selfie service is its normal input
    "huge_20000x20000": ("huge.png", corpus.huge_png, "done", "ready 20000x20000"),
    "bomb_40000x40000": ("bomb.png", corpus.decompression_bomb_png, "done", "ready 40000x40000"),
}
MICRIO_UNSAFE_KEYS = {  # keys S3 stores but our key checks refuse
    "dotdot": ("unsafe/a/../dotdot.jpg", "'.' or '..' segment"),
    "dot": ("unsafe/./dot.jpg", "'.' or '..' segment"),
    "control": ("unsafe/ctrl\x01.jpg", "control characters"),
}


def _micrio_params(source: str, folder: Path, report: str) -> dict[str, Any]:
    return {
        "source": source, "micrio_block": "hostile-micrio", "s3_bucket_block": "hostile-s3",
        "target": {"folder_id": "dmRoot"},
        "outputs": {"journal": str(folder / "journal.jsonl"), "report": str(folder / report)},
        "polling": {"initial_seconds": 0.05, "max_seconds": 0.2},
    }  # fmt: skip


def _micrio_outcomes(summary: dict, by_source: dict[str, str] | None = None) -> dict[str, Outcome]:
    report = pd.read_parquet(summary["report"])
    out = {"(run)": final(summary)}
    for row in report.to_dict("records"):
        item = (by_source or {}).get(row["source"]) or str(row["row"])
        size = f" {row['width']:.0f}x{row['height']:.0f}" if pd.notna(row["width"]) else ""
        reason = row["error"] if row["outcome"] != "done" else f"ready{size}"
        out[item] = Outcome(row["outcome"], reason or "", {"name": row["name"]})
    return out


def run_micrio_prefix(runs: Runs, folder: Path) -> dict[str, Outcome]:
    for key, make, *_ in MICRIO_KEYS.values():
        runs.s3.put_object(Bucket=BUCKET, Key=f"hostile-keys/{key}", Body=make())
    summary, log = runs.flow("micrio", _micrio_params(f"s3://{BUCKET}/hostile-keys/", folder, "r.parquet"))
    if summary is None:
        return run_failed(log, list(MICRIO_KEYS))
    return _micrio_outcomes(
        summary, {f"s3://{BUCKET}/hostile-keys/{v[0]}": k for k, v in MICRIO_KEYS.items()}
    )


def run_micrio_unsafe_keys(runs: Runs, folder: Path) -> dict[str, Outcome]:
    runs.s3.put_object(Bucket=BUCKET, Key="unsafe/good.jpg", Body=corpus.selfie(10))
    for key, _ in MICRIO_UNSAFE_KEYS.values():
        runs.s3.put_object(Bucket=BUCKET, Key=key, Body=corpus.selfie(11))
    summary, log = runs.flow("micrio", _micrio_params(f"s3://{BUCKET}/unsafe/", folder, "r.parquet"))
    items = {f"s3://{BUCKET}/{key}": item for item, (key, _) in MICRIO_UNSAFE_KEYS.items()}
    items[f"s3://{BUCKET}/unsafe/good.jpg"] = "good.jpg"
    if summary is None:
        return run_failed(log, list(items.values()))
    return _micrio_outcomes(summary, items)


MICRIO_MANIFEST_URLS = {  # item -> (source_url, expected outcome, text)
    "file_scheme": ("file:///etc/passwd", "rejected", "must be an http(s) URL or an s3:// URI"),
    "javascript_scheme": ("javascript:alert(1)", "rejected", "must be an http(s) URL or an s3:// URI"),
    "no_host": ("https://", "rejected", "must be an http(s) URL or an s3:// URI"),
    "whitespace_inside": ("http://exa mple.com/x.jpg", "rejected", "contains whitespace"),
    "padded": (f"  s3://{BUCKET}/names/0.jpg  ", "skipped", "duplicate of row 1"),  # stripped, then equal
    "unreachable_traversal": ("http://127.0.0.1:9/../../etc/passwd", "failed", "originalNotFound"),
    "number": (12345, "rejected", "source_url"),
    "empty": (None, "rejected", "source_url is empty"),
}


def run_micrio_manifest(runs: Runs, folder: Path) -> dict[str, Outcome]:
    rows, items = [], []
    for n, (case, name) in enumerate(corpus.HOSTILE_NAMES.items()):
        runs.s3.put_object(Bucket=BUCKET, Key=f"names/{n}.jpg", Body=corpus.selfie(500 + n))
        rows.append({"source_url": f"s3://{BUCKET}/names/{n}.jpg", "name": name})
        items.append(f"name:{case}")
    for case, (url, *_) in MICRIO_MANIFEST_URLS.items():
        rows.append({"source_url": url, "name": case})
        items.append(f"url:{case}")
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary, log = runs.flow("micrio", _micrio_params(str(folder / "manifest.jsonl"), folder, "r.parquet"))
    if summary is None:
        return run_failed(log, items)
    by_row = _micrio_outcomes(summary)
    out = {"(run)": by_row.pop("(run)")}
    for n, item in enumerate(items, 1):
        out[item] = by_row.get(str(n), Outcome("missing from the report"))
    for case, name in corpus.HOSTILE_NAMES.items():  # the name kept as given
        got = out[f"name:{case}"]
        if _text(got.extra.get("name")) != name.strip():
            out[f"name:{case}"] = Outcome("name changed", repr(got.extra.get("name"))[:80])
    return out


MICRIO_BAD_URIS = {
    "bad_bucket": ("s3://Bad_Bucket/x.jpg", "bad bucket name"),
    "bucket_only": (f"s3://{BUCKET}/", "empty"),
    "dotdot": (f"s3://{BUCKET}/names/../names/0.jpg", "'.' or '..' segment"),
    "key_too_long": (f"s3://{BUCKET}/" + "k" * 2000, "at most 1,024 bytes"),
}


def run_micrio_bad_uris(runs: Runs, folder: Path) -> dict[str, Outcome]:
    runs.s3.put_object(Bucket=BUCKET, Key="bad-uris/good.jpg", Body=corpus.selfie(600))
    rows = [{"source_url": f"s3://{BUCKET}/bad-uris/good.jpg"}] + [
        {"source_url": u} for u, _ in MICRIO_BAD_URIS.values()
    ]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = ["good.jpg", *MICRIO_BAD_URIS]
    summary, log = runs.flow("micrio", _micrio_params(str(folder / "manifest.jsonl"), folder, "r.parquet"))
    if summary is None:
        return run_failed(log, items)
    by_row = _micrio_outcomes(summary)
    return {item: by_row.get(str(n), Outcome("missing")) for n, item in enumerate(items, 1)}


def run_micrio_empty(runs: Runs, folder: Path) -> dict[str, Outcome]:
    summary, log = runs.flow("micrio", _micrio_params(f"s3://{BUCKET}/no-such-prefix/", folder, "r.parquet"))
    if summary is None:  # an exception ends the run Failed too (before any report: there is nothing to read)
        return {"(run)": Outcome("failed", log)}
    return {"(run)": final(summary)}


MICRIO_CASES = [
    *(Case("micrio-prefix", item, status, text) for item, (_, _, status, text) in MICRIO_KEYS.items()),
    *(Case("micrio-unsafe-keys", item, "rejected", text) for item, (_, text) in MICRIO_UNSAFE_KEYS.items()),
    Case("micrio-unsafe-keys", "good.jpg", "done", "ready"),
    *(Case("micrio-manifest", f"name:{case}", "done", "ready") for case in corpus.HOSTILE_NAMES),
    *(Case("micrio-manifest", f"url:{case}", status, text)
      for case, (_, status, text) in MICRIO_MANIFEST_URLS.items()),
    *(Case("micrio-bad-uris", item, "rejected", text) for item, (_, text) in MICRIO_BAD_URIS.items()),
    Case("micrio-bad-uris", "good.jpg", "done", "ready"),
    Case("micrio-empty", "(run)", "failed", "holds no objects"),
]  # fmt: skip


# --- snapshot harvest -----------------------------------------------------------------------------------------


def run_harvest(runs: Runs, folder: Path) -> dict[str, Outcome]:
    summary, log = runs.flow(
        "harvest",
        {"viziosense_block": "hostile-viziosense", "miniviz_block": "hostile-miniviz",
         "s3_bucket_block": "hostile-s3",
         "outputs": {"state": str(folder / "pacing.json"), "report": str(folder / "r.parquet")},
         "timing": {"ready_after_seconds": 20 * TEST_TIME_SCALE, "poll_interval_seconds": 0.02,
                    "image_timeout_seconds": 10.0}},
    )  # fmt: skip
    if summary is None:
        return run_failed(log, [*HARVEST_DEVICES, "twins"])
    report = pd.read_parquet(summary["report"])
    by_uuid = {r["device_uuid"]: r for r in report.to_dict("records")}
    out = {"(run)": final(summary)}
    for n, (case, name) in enumerate(HARVEST_DEVICES.items()):
        row = by_uuid.get(f"00000000-0000-4000-8000-{n:012d}")
        if row is None:
            out[case] = Outcome("missing from the report")
            continue
        label = row["label_key"] or ""
        meta = (
            runs.s3.head_object(Bucket=BUCKET, Key=row["s3_raw_key"])["Metadata"] if row["s3_raw_key"] else {}
        )
        stored_name = decode_metadata_value(meta.get("device-name", ""))
        readable = CONTROL.sub(" ", name).strip()  # S3 metadata are HTTP headers: no control characters
        if not (LABEL_KEY_RE.match(label) and len(label) <= MAX_LABEL_KEY):
            out[case] = Outcome("invalid label_key", label)
        elif not readable.startswith(stored_name) or (len(readable) < 100 and stored_name != readable):
            out[case] = Outcome("device name changed in S3 metadata", repr(stored_name)[:80])
        else:
            out[case] = Outcome(row["outcome"], f"label={label} pushed={row['image_push']}")
    twins = [r["label_key"] for r in report.to_dict("records") if r["device_name"] == "twin"]
    out["twins"] = Outcome("distinct labels" if len(set(twins)) == 2 else f"labels {twins}")
    return out


HARVEST_CASES = [
    *(Case("harvest", case, "done", "pushed=sent") for case in HARVEST_DEVICES),
    Case("harvest", "twins", "distinct labels"),
    Case("harvest", "(run)", "done"),
]

RUNS: dict[str, Callable[[Runs, Path], dict[str, Outcome]]] = {
    "backfill": run_backfill,
    "backfill-empty": run_backfill_empty,
    "skin-folder": run_skin_folder,
    "skin-manifest": run_skin_manifest,
    "skin-s3-manifest": run_skin_s3_manifest,
    "skin-empty": run_skin_empty,
    "micrio-prefix": run_micrio_prefix,
    "micrio-unsafe-keys": run_micrio_unsafe_keys,
    "micrio-manifest": run_micrio_manifest,
    "micrio-bad-uris": run_micrio_bad_uris,
    "micrio-empty": run_micrio_empty,
    "harvest": run_harvest,
}
CASES = [*BACKFILL_CASES, *SKIN_CASES, *MICRIO_CASES, *HARVEST_CASES]


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=f"{case.run}:{case.item}", marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(case: Case, runs: Runs):
    got = runs.outcomes(case.run).get(case.item) or Outcome("missing from the report")
    assert got.status == case.status and case.reason in got.reason, (
        f"{case.run}: {case.item!r} expected {case.status} ({case.reason!r}), got {got.status}: {got.reason[:500]}"
    )


def test_every_case_names_an_item_its_run_reports(runs: Runs):
    """The corpus and the expectations agree: each run reports exactly the items its cases name."""
    for name in RUNS:
        outcomes = runs.outcomes(name)
        expected = {c.item for c in CASES if c.run == name}
        if "run failed" in {o.status for o in outcomes.values()}:
            continue  # a crashed run: its cases fail (or xfail) on their own
        assert expected <= set(outcomes), (name, sorted(expected - set(outcomes)))
