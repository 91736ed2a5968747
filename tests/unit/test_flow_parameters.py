"""The four flows' parameter schemas follow what Prefect 3.8.8's run form renders well (tests/e2e/test_ui_forms.py
checks the form itself): plain-text descriptions, no ``X | None`` switches, no discriminated unions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from flows.micrio_migration import migrate_to_micrio
from flows.miniviz_backfill import miniviz_backfill
from flows.skin_analysis import skin_analysis
from flows.snapshot_harvest import harvest_snapshots

FLOWS = [migrate_to_micrio, miniviz_backfill, skin_analysis, harvest_snapshots]
# Markdown the default UI renders and the new UI prints literally; "<...>" the default UI drops as an HTML tag
NOT_PLAIN_TEXT = re.compile(r"`|\*\*|<[A-Za-z]")


def walk(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from walk(value, f"{path}/{n}")


@pytest.fixture(params=FLOWS, ids=lambda f: f.name)
def schema(request) -> dict:
    return request.param.parameters.model_dump()


def test_descriptions_are_plain_text(schema):
    bad = [
        (p, n["description"]) for p, n in walk(schema) if NOT_PLAIN_TEXT.search(str(n.get("description", "")))
    ]
    assert not bad


def test_no_parameter_is_a_none_switch(schema):
    nullable = [p for p, n in walk(schema) if {"type": "null"} in n.get("anyOf", [])]
    assert not nullable


def test_no_discriminated_union(schema):
    # the default UI shows a raw JSON editor for a discriminated union; a plain union renders as tabs
    assert not [p for p, n in walk(schema) if "discriminator" in n]


def test_groups_render_as_sections(schema):
    groups = [name for name, prop in schema["properties"].items() if "$ref" in str(prop)]
    assert len(groups) >= 3, schema["properties"].keys()
