"""Prefect artifacts every flow publishes: a live progress bar, a summary table, a markdown list of failures.

Outside a flow or task run (plain Python, ``.fn()`` tests) these are quiet no-ops, so flow code can call
them unconditionally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.context import FlowRunContext, TaskRunContext

MAX_MARKDOWN_ITEMS = 200


def artifact_key(text: str) -> str:
    """Artifact keys may hold only lowercase letters, digits and dashes."""
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "artifact"


def in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class Progress:
    """A progress artifact updated in place (no new version per update)."""

    def __init__(self, key: str, description: str) -> None:
        self.key = artifact_key(key)
        self.description = description
        self._id: UUID | None = None
        self.last: float | None = None

    async def update(self, percent: float, description: str | None = None) -> None:
        percent = round(max(0.0, min(100.0, percent)), 1)
        if percent == self.last and description is None:
            return
        self.last = percent
        if not in_run():
            return
        if self._id is None:
            self._id = await acreate_progress_artifact(
                percent, key=self.key, description=description or self.description
            )
        else:
            await aupdate_progress_artifact(self._id, percent, description=description or self.description)


async def publish_table(key: str, rows: list[Mapping[str, Any]], description: str) -> None:
    if in_run():
        await acreate_table_artifact([dict(r) for r in rows], key=artifact_key(key), description=description)


async def publish_markdown(key: str, markdown: str, description: str) -> None:
    if in_run():
        await acreate_markdown_artifact(markdown, key=artifact_key(key), description=description)


def counts_table(counts: Mapping[tuple[str, str], int]) -> list[dict[str, Any]]:
    """``{(status, error): n}`` as table rows, largest first."""
    return [
        {"status": status, "error": error or "", "count": n}
        for (status, error), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def failures_markdown(title: str, failures: Iterable[Mapping[str, Any]], columns: list[str]) -> str:
    """A markdown table of failed or rejected items (first ``MAX_MARKDOWN_ITEMS``), or a line saying there were none."""
    items = list(failures)
    if not items:
        return f"# {title}\n\nNone: every item succeeded.\n"
    lines = [
        f"# {title}",
        "",
        f"{len(items)} item(s).",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for item in items[:MAX_MARKDOWN_ITEMS]:
        lines.append("| " + " | ".join(markdown_cell(item.get(c)) for c in columns) + " |")
    if len(items) > MAX_MARKDOWN_ITEMS:
        lines += ["", f"... and {len(items) - MAX_MARKDOWN_ITEMS} more: see the report file."]
    return "\n".join(lines) + "\n"


def markdown_cell(value: Any) -> str:
    """``value`` as one Markdown table cell: pipes escaped, on one line, at most 300 characters."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:300]
