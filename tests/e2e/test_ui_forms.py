"""The deployments' "Run > Custom run" forms in the Prefect UI, in a real browser (Chromium, headless).

For each deployment of prefect.yaml: every parameter grouped into a pydantic model renders as a section
holding the model's fields, and every union of models as a choice of tabs; which parameters those are is read
from the deployment's parameter schema, so the test follows the flows as they are regrouped. A screenshot of
each form goes to $UI_SCREENSHOTS (default: a temporary directory). Then one run is submitted from a form
(a Miniviz backfill dry run) and must end Completed, with the values typed into the form.

How Prefect 3.8's UI renders a parameter schema (and why a union of models must neither be discriminated nor
share a field name): README, "Two commands", the paragraph on this test.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from demo.setup import s3_client
from tests.e2e.conftest import UiServer
from tests.reliability.prefect_stack import ROOT

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"needs Chromium at {CHROMIUM} (`apt-get install chromium`; .ci/run installs it)",
    ),
]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEPLOYMENTS = [d["name"] for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]]
SUBMITTED = "miniviz-backfill"  # the cheapest run against the emulators: a dry run sends nothing
PROPERTY = "contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')"


# --- what the form must show, from the parameter schema ---------------------------------------------------


def _resolve(prop: dict, definitions: dict) -> dict:
    """The schema ``prop`` stands for: a ``$ref`` (alone or as the only ``allOf`` item) followed."""
    if len(prop.get("allOf", [])) == 1:
        prop = prop["allOf"][0]
    if "$ref" in prop:
        return definitions[prop["$ref"].rsplit("/", 1)[-1]]
    return prop


def expected_sections(schema: dict) -> dict[str, dict]:
    """Per parameter title: ``fields`` (a model: its fields' titles) or ``choices`` (a union holding a model:
    per tab label, the fields that tab shows). Parameters of other types are not sections."""
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    sections = {}
    for name, prop in schema.get("properties", {}).items():
        title = prop.get("title", name)
        target = _resolve(prop, definitions)
        if target.get("properties"):
            sections[title] = {"fields": _field_titles(target)}
            continue
        members = [_resolve(m, definitions) for m in prop.get("anyOf") or prop.get("oneOf") or []]
        if any(m.get("properties") for m in members):
            sections[title] = {
                "choices": {m.get("title") or _type_label(m): _field_titles(m) for m in members}
            }
    return sections


def _field_titles(model: dict) -> list[str]:
    return [f.get("title", k) for k, f in model.get("properties", {}).items()]


def _type_label(member: dict) -> str:
    return {"null": "None", "string": "str", "integer": "int", "number": "float"}.get(member.get("type"), "")


# --- the server's API ---------------------------------------------------------------------------------------


def api(server: UiServer, path: str, body: dict | None = None) -> Any:
    response = httpx.post(f"{server.api_url}{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def deployment(server: UiServer, name: str) -> dict:
    found = api(server, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    assert len(found) == 1, f"deployment {name!r} not found on the server: {found}"
    return found[0]


def flow_run_named(server: UiServer, run_name: str) -> dict | None:
    found = api(server, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [run_name]}}})
    return found[0] if found else None


def submit(page: Any, server: UiServer, run_name: str, timeout: float = 30) -> dict:
    """Click Submit; the flow run the form created (the UI then shows the deployment or a toast, depending on
    the page). On a loaded machine a click can land while the form is still re-rendering and go unheard
    (seen once in CI: no run, the form still open, no error shown): if no run exists after a third of the
    timeout and the form is still there, Submit is clicked once more."""
    button = page.get_by_role("button", name="Submit")
    button.click()
    deadline, again = time.monotonic() + timeout, time.monotonic() + timeout / 3
    while not (run := flow_run_named(server, run_name)):
        if again and time.monotonic() > again:
            again = 0.0
            if button.count() and not flow_run_named(server, run_name):
                button.click()
        if time.monotonic() > deadline:
            errors = [
                line for line in page.inner_text("body").splitlines() if "rror" in line or "alid" in line
            ]
            raise AssertionError(f"no flow run named {run_name!r} after Submit; the page says {errors}")
        time.sleep(0.5)
    return run


def wait_final(server: UiServer, run_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{server.api_url}/flow_runs/{run_id}", timeout=30).json()
        if run["state"] and run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, f"run {run_id} not finished after {timeout:.0f} s: {run['state']}"
        time.sleep(1)


# --- the browser ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    """One headless Chromium (a fresh profile) for the module; each test navigates its page."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(30_000)
        try:
            yield context.new_page()
        finally:
            context.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    where = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path_factory.mktemp("ui-screenshots"))
    where.mkdir(parents=True, exist_ok=True)
    return where


def open_run_form(page: Any, server: UiServer, deployment_id: str) -> None:
    page.goto(f"{server.url}/deployments/deployment/{deployment_id}/run")
    page.get_by_text("Parameters", exact=True).wait_for()
    page.locator(".schema-form-property").first.wait_for()
    page.wait_for_load_state("networkidle")


def screenshot_whole(page: Any, path: Path) -> None:
    """The whole form: the UI scrolls an inner pane, so ``full_page`` alone stops at the window's height."""
    height = page.evaluate("Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 16_000)})
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)


def form_property(page: Any, title: str) -> Any:
    """The form's property labelled ``title`` (the UI appends " (Optional)" when it has a default): its own
    label, not one of a nested field."""
    labels = [f"normalize-space()={_xpath_literal(t)}" for t in (title, f"{title} (Optional)")]
    own_label = f"./div[contains(@class, 'p-label__header')]//span[contains(@class, 'schema-form-property__label')][{' or '.join(labels)}]"
    return page.locator(f"xpath=//div[{PROPERTY}][{own_label}]")


def _xpath_literal(text: str) -> str:
    return f'"{text}"' if '"' not in text else f"'{text}'"


def fill(page: Any, title: str, value: str) -> None:
    prop = form_property(page, title)
    assert prop.count() >= 1, f"no field {title!r} in the form"
    prop.first.locator("textarea, input").first.fill(value)


# --- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_run_form_renders_parameter_sections(stack, prefect_ui_server, browser_page, screenshots, name):
    page = browser_page
    found = deployment(prefect_ui_server, name)
    sections = expected_sections(found["parameter_openapi_schema"])
    open_run_form(page, prefect_ui_server, found["id"])
    shot = screenshots / f"{name}.png"
    screenshot_whole(page, shot)

    problems = []
    for title, want in sections.items():
        section = form_property(page, title)
        if section.count() != 1:
            problems.append(f"{title}: {section.count()} properties labelled so, not 1")
            continue
        labels = _labels(section)
        tabs = set(section.locator(".p-button-group__button").all_inner_texts())
        missing = [f for f in want.get("fields", []) if f not in labels] + [
            c for c in want.get("choices", []) if c not in tabs
        ]
        if missing:
            problems.append(f"{title}: not shown as a section with {missing} (a JSON editor instead?)")
            continue
        problems += [f"{title}: {p}" for p in choose_each_tab(section, want.get("choices", {}))]
    assert not problems, f"{name} run form ({shot}):\n" + "\n".join(problems)


def _labels(section: Any) -> set[str]:
    return {
        re.sub(r" \(Optional\)$", "", t)
        for t in section.locator(".schema-form-property__label").all_inner_texts()
    }


def choose_each_tab(section: Any, choices: dict[str, list[str]]) -> list[str]:
    """Click each tab of a union; it must stay chosen and show its model's fields (the UI picks the tab back
    from the value's keys, so models sharing field names can snap back to the first)."""
    from playwright.sync_api import expect

    problems = []
    for label, fields in reversed(choices.items()):  # the first tab last: the form ends as it started
        tab = section.locator(".p-button-group__button").get_by_text(label, exact=True).first
        tab.click()
        try:
            expect(section.locator(".p-button-group__button[aria-selected=true]").first).to_have_text(label)
        except AssertionError:
            problems.append(f"the tab {label!r} cannot be chosen: it snaps back")
            continue
        if missing := [f for f in fields if f not in _labels(section)]:
            problems.append(f"the tab {label!r} does not show {missing}")
    return problems


def put_weather_history(emu) -> str:
    """Seattle's daily weather (vega_datasets), as the CSV the backfill reads: timestamp, label, metrics."""
    from vega_datasets import local_data

    df = local_data.seattle_weather().head(60)
    df = df.assign(timestamp=df["date"].dt.strftime("%Y-%m-%dT00:00:00Z"), label_key="seattle")
    columns = ["timestamp", "label_key", "precipitation", "temp_max", "temp_min", "wind"]
    body = io.BytesIO(df[columns].to_csv(index=False).encode())
    bucket = emu["s3"].credentials["bucket"]
    s3_client(emu).put_object(Bucket=bucket, Key="history/seattle-weather.csv", Body=body)
    return f"s3://{bucket}/history/seattle-weather.csv"


def test_run_submitted_from_the_form_completes(stack, prefect_ui_server, browser_page, screenshots, tmp_path):
    emu, worker_log = stack
    page = browser_page
    source = put_weather_history(emu)
    report = tmp_path / "backfill-report.csv"
    run_name = f"ui-form-{uuid.uuid4().hex[:8]}"
    open_run_form(page, prefect_ui_server, deployment(prefect_ui_server, SUBMITTED)["id"])

    page.locator(".flow-run-name-input input").fill(run_name)
    fill(page, "source", source)
    fill(page, "Report", str(report))
    form_property(page, "dry_run").first.locator("input[type=checkbox]").check(force=True)
    submitted = submit(page, prefect_ui_server, run_name)
    assert submitted["parameters"]["source"] == source
    run = wait_final(prefect_ui_server, submitted["id"])
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{worker_log.read_text()[-3000:]}"
    assert report.exists(), "the report path typed into the form did not reach the flow"

    page.goto(f"{prefect_ui_server.url}/runs/flow-run/{run['id']}")
    page.get_by_text("Completed").first.wait_for()
    screenshot_whole(page, screenshots / f"{SUBMITTED}-run-from-form.png")
