"""The machinery every emulator shares: clocks, fault decisions, the received log, the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from emulators.__main__ import parse_only, parse_ports
from emulators.common import FaultConfig, ManualClock, ReceivedLog, ScaledClock, retry_after_header
from emulators.common.faults import FaultInjector
from emulators.registry import DEFAULT_PORTS, load_config, service_config


def test_scaled_clock_runs_faster_than_wall_time():
    clock = ScaledClock(time_scale=0.01, start=1000.0)
    assert clock.to_real(20) == pytest.approx(0.2)
    assert 1000.0 <= clock.now() < 1000.0 + 60  # test machine would need 0.6 s to get past 60 virtual seconds


def test_scaled_clock_rejects_non_positive_scale():
    with pytest.raises(ValueError):
        ScaledClock(0)


async def test_manual_clock_sleep_advances_time():
    clock = ManualClock(start=100.0)
    await clock.sleep(15)
    assert clock.now() == 115.0


@pytest.mark.parametrize(
    "scale,virtual,expected",
    [(1.0, 14.2, "15"), (1.0, 0.1, "1"), (0.01, 15, "0.150"), (0.01, 0.0123, "0.001")],
)
def test_retry_after_is_in_real_seconds_and_rounded_up(scale, virtual, expected):
    clock = ScaledClock(scale)
    assert retry_after_header(clock, virtual) == expected


def test_fault_burst_then_clean():
    inj = FaultInjector(ManualClock())
    inj.configure(FaultConfig(burst_429=2, retry_after=3))
    kinds = [inj.decide("/x").status for _ in range(3)]
    assert kinds == [429, 429, None]


def test_fault_outage_window_follows_the_clock():
    clock = ManualClock(start=0)
    inj = FaultInjector(clock)
    inj.configure(FaultConfig(outage={"start_in": 10, "duration": 30}))
    assert inj.decide("/x").status is None
    clock.advance(10)
    d = inj.decide("/x")
    assert d.status == 503 and d.retry_after == pytest.approx(30)
    clock.advance(30)
    assert inj.decide("/x").status is None


def test_fault_error_rate_is_reproducible_with_a_seed():
    def run():
        inj = FaultInjector(ManualClock())
        inj.configure(FaultConfig(error_rate=0.3, seed=7))
        return [inj.decide("/x").status for _ in range(200)]

    first = run()
    assert first == run()
    assert 30 < first.count(503) < 90


def test_fault_path_pattern_limits_where_faults_apply():
    inj = FaultInjector(ManualClock())
    inj.configure(FaultConfig(error_rate=1.0, path_pattern=r"/image$"))
    assert inj.decide("/api/project/p").status is None
    assert inj.decide("/api/project/p/image").status == 503


def test_received_log_counts_duplicates_by_key():
    log = ReceivedLog(keep=2)
    assert log.accepted("add", {"n": 1}, dedup_key="a") is False
    assert log.accepted("add", {"n": 2}, dedup_key="b") is False
    assert log.accepted("add", {"n": 3}, dedup_key="a") is True
    log.rejected("POST /x", 400, "bad")
    snap = log.snapshot()
    assert snap["accepted"] == {"add": 3} and snap["duplicates"] == {"add": 1}
    assert snap["rejected_by_status"] == {"400": 1}
    assert [e["n"] for e in snap["recent_accepted"]] == [2, 3]  # bounded sample
    log.reset()
    assert log.snapshot()["accepted"] == {}


def test_parse_ports_and_only():
    assert parse_ports(None) == DEFAULT_PORTS
    assert set(parse_ports("0").values()) == {0}
    assert parse_ports("miniviz=9000")["miniviz"] == 9000
    with pytest.raises(SystemExit):
        parse_ports("nosuch=1")
    with pytest.raises(SystemExit):
        parse_only("miniviz,bogus")


def test_config_file_replaces_top_level_keys(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"miniviz": {"image_interval": 0}}))
    cfg = service_config("miniviz", load_config(path))
    assert cfg["image_interval"] == 0 and cfg["projects"]  # other keys keep defaults
    path.write_text(json.dumps({"nosuch": {}}))
    with pytest.raises(ValueError, match="unknown service"):
        load_config(path)


def test_print_config_prints_one_ready_line_per_service():
    out = subprocess.run(
        [sys.executable, "-m", "emulators", "--print-config"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    lines = [json.loads(line) for line in out]
    assert [x["service"] for x in lines] == list(DEFAULT_PORTS)
    assert {x["url"] for x in lines} == {f"http://127.0.0.1:{p}" for p in DEFAULT_PORTS.values()}
    assert all(x["credentials"] for x in lines)


def test_port_in_use_gives_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "emulators", "--only", "miniviz", "--ports", f"miniviz={port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
