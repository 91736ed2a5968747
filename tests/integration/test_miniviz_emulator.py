"""Contract tests: the Miniviz vendor examples and every documented rejection, over real HTTP."""

from __future__ import annotations

import base64
import json
import subprocess
import textwrap
import time

import httpx
import pytest

from tests.conftest import start_service
from tests.images import jpeg_bytes, padded_jpeg, png_bytes

pytestmark = pytest.mark.integration
NOW_MS = 1_731_129_600_000


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("miniviz", tmp_path_factory) as emu:
        yield emu["miniviz"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()


@pytest.fixture
def pro(svc):
    p = svc.credentials["projects"][0]
    assert p["plan"] == "pro"
    return p


@pytest.fixture
def free(svc):
    return next(p for p in svc.credentials["projects"] if p["plan"] == "free")


def post(svc, project, path="", body=None, bearer=True, **kw):
    url = f"{svc.url}/api/project/{project['project_id']}{path}"
    headers = {"Authorization": f"Bearer {project['token']}"} if bearer else {}
    return httpx.post(
        url, json=body, headers=headers, params=None if bearer else {"token": project["token"]}, **kw
    )


def data(**overrides):
    body = {
        "timestamp": NOW_MS,
        "label_key": "raspberry_pi_home",
        "payload": {"temperature": 25, "humidity": 55},
    }
    body.update(overrides)
    return body


def image(label="camera_1", content=None):
    content = content if content is not None else jpeg_bytes()
    return {
        "timestamp": NOW_MS,
        "label_key": label,
        "image_name": "image.jpg",
        "image_base64": base64.b64encode(content).decode(),
    }


# --- the vendor's own examples (Miniviz's quick start page), host and credentials adapted ------------------


def test_vendor_curl_data_example(svc, pro):
    timestamp_ms = int(time.time()) * 1000
    body = (
        f'{{"timestamp": {timestamp_ms}, "label_key": "Local_PC", "payload": {{"temperature": 25, '
        '"humidity": 55, "switch": "true", "system_status": "running"}}'
    )
    out = subprocess.run(
        [
            "curl",
            "-s",
            "-X",
            "POST",
            f"{svc.url}/api/project/{pro['project_id']}?token={pro['token']}",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[-1] == "200"
    assert json.loads(out[0])["id"]


def test_vendor_python_data_sample(svc, pro, tmp_path):
    sample = textwrap.dedent(f'''
        from datetime import datetime, timezone
        import requests
        PROJECT_ID = "{pro["project_id"]}"
        TOKEN = "{pro["token"]}"
        API_URL = "{svc.url}"
        LABEL_KEY = "Local_PC"
        def send_data():
            url = f"{{API_URL}}/api/project/{{PROJECT_ID}}?token={{TOKEN}}"
            timestamp_ms = int(datetime.now(timezone.utc).timestamp() * 1000)
            response = requests.post(url, json={{
                "timestamp": timestamp_ms,
                "label_key": LABEL_KEY,
                "payload": {{"temperature": 25, "humidity": 55, "switch": "true", "system_status": "running"}}
            }})
            if response.ok:
                data = response.json()
                print(f"Send successful (id={{data.get('id')}})")
            else:
                print(f"Send failed: {{response.status_code}} {{response.text}}")
        send_data()
    ''')
    script = tmp_path / "sample.py"
    script.write_text(sample)
    out = subprocess.run(
        [__import__("sys").executable, str(script)], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("Send successful (id=") and "id=None" not in out


def test_vendor_curl_image_example(svc, pro, tmp_path):
    (tmp_path / "image.jpg").write_bytes(jpeg_bytes())
    script = textwrap.dedent(f'''
        timestamp_ms=$(( $(date -u +%s) * 1000 ))
        image_base64=$(base64 -w0 -i image.jpg)
        curl -s -X POST \\
          "{svc.url}/api/project/{pro["project_id"]}/image?token={pro["token"]}" \\
          -H "Content-Type: application/json" \\
          -d "{{
                \\"timestamp\\": ${{timestamp_ms}},
                \\"label_key\\": \\"camera_1\\",
                \\"image_name\\": \\"image.jpg\\",
                \\"image_base64\\": \\"${{image_base64}}\\"
              }}" -w "\\n%{{http_code}}"
    ''')
    out = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    lines = out.splitlines()
    assert lines[-1] == "200", out
    assert json.loads(lines[0])["label_key"] == "camera_1"


def test_vendor_python_image_sample_and_retrieval(svc, pro, tmp_path):
    content = jpeg_bytes(text="sample")
    (tmp_path / "image.jpg").write_bytes(content)
    sample = textwrap.dedent(f'''
        import requests, base64, os, json
        from datetime import datetime, timezone
        PROJECT_ID = "{pro["project_id"]}"
        TOKEN = "{pro["token"]}"
        API_URL = "{svc.url}"
        IMAGE_PATH = "image.jpg"
        LABEL_KEY = "camera_1"
        with open(IMAGE_PATH, "rb") as f:
            image_data = f.read()
        image_base64 = base64.b64encode(image_data).decode('utf-8')
        url = f"{{API_URL}}/api/project/{{PROJECT_ID}}/image"
        payload = {{
            "timestamp": int(datetime.now(timezone.utc).timestamp() * 1000),
            "label_key": LABEL_KEY,
            "image_name": os.path.basename(IMAGE_PATH),
            "image_base64": image_base64
        }}
        response = requests.post(url, json=payload, params={{"token": TOKEN}})
        response.raise_for_status()
        print(json.dumps(response.json()))
    ''')
    (tmp_path / "sample.py").write_text(sample)
    out = subprocess.run(
        [__import__("sys").executable, "sample.py"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    event_id = json.loads(out.stdout)["id"]
    got = httpx.get(
        f"{svc.url}/api/project/{pro['project_id']}/image/{event_id}", params={"token": pro["token"]}
    )
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/jpeg"
    assert got.content == content


# --- auth and plans ------------------------------------------------------------------------------------------


def test_bearer_header_and_legacy_query_both_work(svc, pro):
    assert post(svc, pro, body=data(), bearer=True).status_code == 200
    time.sleep(0.2)  # Pro interval is 15 s, 0.15 s at this time scale
    assert post(svc, pro, body=data(timestamp=NOW_MS + 1), bearer=False).status_code == 200


@pytest.mark.parametrize(
    "headers,params",
    [
        ({"Authorization": "Bearer wrong-token"}, None),
        ({}, {"token": "wrong-token"}),
        ({}, None),
        ({"Authorization": "Basic abc"}, None),
    ],
)
def test_bad_or_missing_token_is_403(svc, pro, headers, params):
    r = httpx.post(f"{svc.url}/api/project/{pro['project_id']}", json=data(), headers=headers, params=params)
    assert r.status_code == 403
    assert "token" in r.json()["detail"].lower()


def test_token_of_another_project_is_403(svc, pro, free):
    r = httpx.post(
        f"{svc.url}/api/project/{pro['project_id']}",
        json=data(),
        headers={"Authorization": f"Bearer {free['token']}"},
    )
    assert r.status_code == 403


def test_unknown_project_is_404(svc, pro):
    r = httpx.post(
        f"{svc.url}/api/project/no-such-project",
        json=data(),
        headers={"Authorization": f"Bearer {pro['token']}"},
    )
    assert r.status_code == 404


def test_image_api_on_free_plan_is_403(svc, free):
    r = post(svc, free, "/image", image())
    assert r.status_code == 403
    assert "Pro plan" in r.json()["detail"]


# --- data validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"label_key": "a", "payload": {"t": 1}}, "timestamp is required"),
        ({"timestamp": NOW_MS, "payload": {"t": 1}}, "label_key is required"),
        ({"timestamp": NOW_MS, "label_key": "a"}, "payload is required"),
        (data(timestamp=2**63), "out of range"),
        (data(timestamp="1731129600000"), "integer"),
        (data(timestamp=1.5e12 + 0.5), "integer"),
        (data(label_key="bad label!"), "may only contain"),
        (data(label_key="x" * 129), "maximum is 128"),
        (data(label_key=""), "non-empty"),
        (data(payload={"nested": {"a": 1}}), "object values are not allowed"),
        (data(payload={"list": [1, 2]}), "array values are not allowed"),
        (data(payload={"switch": True}), "bool values are not allowed"),
        (data(payload={"missing": None}), "null values are not allowed"),
        (data(payload=[1, 2]), "flat JSON object"),
        (data(payload={f"k{i}": i for i in range(9)}), "maximum is 8"),
        (data(payload={"s": "x" * 400}), "maximum is 400"),
        ([1, 2, 3], "JSON object"),
    ],
)
def test_invalid_data_is_400_with_a_message(svc, pro, body, fragment):
    r = post(svc, pro, body=body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["detail"]


def test_invalid_json_is_400(svc, pro):
    r = httpx.post(
        f"{svc.url}/api/project/{pro['project_id']}",
        content=b"{not json",
        headers={"Authorization": f"Bearer {pro['token']}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400


def test_any_integer_of_milliseconds_is_accepted_historical_dates_too(svc, pro):
    """Miniviz documents UNIX ms and no lower bound: 1958 (negative ms), 1970 and 1989 (< 10^12) are data."""
    for i, ts in enumerate([-371_260_800_000, 0, 1_731_129_600, 600_000_000_000]):
        if i:
            time.sleep(0.2)  # the project's data interval (scaled), not an assertion
        r = post(svc, pro, body=data(timestamp=ts))
        assert r.status_code == 200, r.text
        assert r.json()["timestamp"] == ts


def test_payload_limits_are_inclusive(svc, pro):
    eight = {f"k{i}": i for i in range(8)}
    assert post(svc, pro, body=data(payload=eight)).status_code == 200
    time.sleep(0.2)
    exactly_400 = {"s": "x" * (400 - len('{"s":""}'))}
    assert post(svc, pro, body=data(payload=exactly_400, timestamp=NOW_MS + 1)).status_code == 200
    time.sleep(0.2)
    label_128 = "a/b:c@d.e-f_" + "x" * 116
    assert post(svc, pro, body=data(label_key=label_128, timestamp=NOW_MS + 2)).status_code == 200


# --- rate limits ---------------------------------------------------------------------------------------------


def test_data_interval_per_project_gives_429_with_retry_after(svc, pro):
    assert post(svc, pro, body=data()).status_code == 200
    r = post(svc, pro, body=data(timestamp=NOW_MS + 1, label_key="another_label"))
    assert r.status_code == 429
    wait = float(r.headers["Retry-After"])
    assert 0 < wait <= 0.15  # 15 s Pro interval at time scale 0.01
    time.sleep(wait)
    assert post(svc, pro, body=data(timestamp=NOW_MS + 2)).status_code == 200


def test_rejected_requests_do_not_consume_the_interval(svc, pro):
    assert post(svc, pro, body=data(payload={"bad": None})).status_code == 400
    assert post(svc, pro, body=data()).status_code == 200


def test_image_interval_is_per_label_key(svc, pro):
    assert post(svc, pro, "/image", image("camera_1")).status_code == 200
    again = post(svc, pro, "/image", image("camera_1"))
    assert again.status_code == 429 and float(again.headers["Retry-After"]) > 0.3  # 60 s -> 0.6 s
    assert post(svc, pro, "/image", image("camera_2")).status_code == 200


# --- image validation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate,fragment",
    [
        (lambda b: b.update(image_base64="%%%not base64%%%"), "not valid base64"),
        (lambda b: b.update(image_base64=base64.b64encode(b"GIF89a....").decode()), "JPEG or PNG"),
        (
            lambda b: b.update(image_base64=base64.b64encode(padded_jpeg(204_801)).decode()),
            "maximum is 204800",
        ),
        (lambda b: b.update(image_name="n" * 256), "maximum is 255"),
        (lambda b: b.pop("image_name"), "image_name is required"),
        (lambda b: b.pop("image_base64"), "image_base64 is required"),
    ],
)
def test_invalid_image_is_400(svc, pro, mutate, fragment):
    body = image()
    mutate(body)
    r = post(svc, pro, "/image", body)
    assert r.status_code == 400
    assert fragment in r.json()["detail"]


def test_png_and_exact_size_limit_are_accepted(svc, pro):
    assert post(svc, pro, "/image", image("png_cam", png_bytes())).status_code == 200
    assert post(svc, pro, "/image", image("big_cam", padded_jpeg(204_800))).status_code == 200


def test_unknown_image_event_is_404(svc, pro):
    r = httpx.get(
        f"{svc.url}/api/project/{pro['project_id']}/image/nope",
        headers={"Authorization": f"Bearer {pro['token']}"},
    )
    assert r.status_code == 404


# --- the /_emulator/ API -------------------------------------------------------------------------------------


def test_received_counts_accepted_rejected_and_duplicates(svc, pro):
    assert post(svc, pro, body=data()).status_code == 200
    assert post(svc, pro, body=data(label_key="bad label")).status_code == 400
    time.sleep(0.2)
    assert post(svc, pro, body=data()).status_code == 200  # the same event again
    got = svc.received()
    assert got["accepted"] == {"data": 2}
    assert got["duplicates"] == {"data": 1}
    assert got["rejected_by_status"] == {"400": 1}
    events = httpx.get(f"{svc.url}/_emulator/events", params={"project_id": pro["project_id"]}).json()
    assert events["total"] == 2 and events["events"][0]["payload"] == {"temperature": 25, "humidity": 55}


def test_injected_503_429_and_dropped_connections(svc, pro):
    svc.faults(error_rate=1.0)
    assert post(svc, pro, body=data()).status_code == 503
    svc.faults(burst_429=1, retry_after=30)
    r = post(svc, pro, body=data())
    assert r.status_code == 429 and r.headers["Retry-After"] == "0.300"
    assert post(svc, pro, body=data()).status_code == 200  # burst over
    svc.faults(drop_rate=1.0)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(svc, pro, body=data(timestamp=NOW_MS + 5))
    svc.faults(drop_rate=1.0, drop_after_processing=True)
    time.sleep(0.2)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(svc, pro, body=data(timestamp=NOW_MS + 6))
    got = svc.received()
    assert got["accepted"] == {"data": 2}  # the one before the drops and the one whose answer was lost
    assert got["faults_injected"] == {"503": 1, "429": 1, "drop_before": 1, "drop_after": 1}


def test_outage_window_then_recovery(svc, pro):
    svc.faults(outage={"start_in": 0, "duration": 20})  # 0.2 s real
    r = post(svc, pro, body=data())
    assert r.status_code == 503 and float(r.headers["Retry-After"]) <= 0.2
    time.sleep(float(r.headers["Retry-After"]) + 0.01)
    assert post(svc, pro, body=data()).status_code == 200


def test_reset_clears_state_and_faults(svc, pro):
    svc.faults(error_rate=1.0)
    svc.reset()
    assert post(svc, pro, body=data()).status_code == 200
    assert svc.received()["accepted"] == {"data": 1}


def test_rate_limit_off_by_config(tmp_path_factory):
    with start_service("miniviz", tmp_path_factory, config={"data_interval": {"free": 0, "pro": 0}}) as emu:
        svc = emu["miniviz"]
        pro = svc.credentials["projects"][0]
        codes = [post(svc, pro, body=data(timestamp=NOW_MS + i)).status_code for i in range(20)]
        assert codes == [200] * 20
