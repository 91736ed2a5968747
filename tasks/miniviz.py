"""Prefect tasks for Miniviz: one per API call, plus a batch task for many data events."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from pydantic import BaseModel

from blocks.miniviz import MinivizCredentials
from clients.errors import ApiError, InputError
from clients.miniviz import EventAck, PayloadValue, StoredImage


@task(name="miniviz-send-data")
async def send_miniviz_data(
    credentials: MinivizCredentials | str,
    label_key: str,
    payload: dict[str, PayloadValue],
    timestamp_ms: int | None = None,
) -> EventAck:
    """Send one data event to a Miniviz project.

    Example:
        ```python
        ack = await send_miniviz_data("my-miniviz", "greenhouse_1", {"temperature": 21.5})
        ```
    """
    creds = await MinivizCredentials.resolve(credentials)
    async with creds.session() as client:
        return await client.send_data(label_key, payload, timestamp_ms)


@task(name="miniviz-send-image")
async def send_miniviz_image(
    credentials: MinivizCredentials | str,
    label_key: str,
    image: bytes,
    image_name: str,
    timestamp_ms: int | None = None,
) -> EventAck:
    """Send one JPEG/PNG image event (Pro plan, ≤ 204,800 bytes, one per 60 s per label key).

    Example:
        ```python
        ack = await send_miniviz_image("my-miniviz", "camera_1", jpeg_bytes, "snapshot.jpg")
        ```
    """
    creds = await MinivizCredentials.resolve(credentials)
    async with creds.session() as client:
        return await client.send_image(label_key, image, image_name, timestamp_ms)


@task(name="miniviz-get-image")
async def get_miniviz_image(credentials: MinivizCredentials | str, event_id: str) -> StoredImage:
    """Fetch the stored image of an image event.

    Example:
        ```python
        stored = await get_miniviz_image("my-miniviz", ack.id)
        ```
    """
    creds = await MinivizCredentials.resolve(credentials)
    async with creds.session() as client:
        return await client.get_image(event_id)


class EventOutcome(BaseModel):
    """What became of one event of a batch: ``done`` (with its Miniviz id), ``rejected`` or ``failed``."""

    index: int
    status: str
    event_id: str | None = None
    error: str | None = None


@task(name="miniviz-send-data-batch")
async def send_miniviz_data_batch(
    credentials: MinivizCredentials | str,
    events: list[dict[str, Any]],
    concurrency: int = 8,
) -> list[EventOutcome]:
    """Send many data events (``{"label_key", "payload", "timestamp"}``) in one task run.

    Paced at the project's interval; concurrent when the interval is 0. Every event ends as done,
    rejected (a documented constraint was broken: nothing was sent) or failed (with the error).

    Example:
        ```python
        outcomes = await send_miniviz_data_batch("my-miniviz", [
            {"label_key": "s1", "payload": {"t": 20.5}, "timestamp": 1731129600000},
        ])
        ```
    """
    creds = await MinivizCredentials.resolve(credentials)
    limit = asyncio.Semaphore(max(1, concurrency))

    async def one(client, index: int, event: dict[str, Any]) -> EventOutcome:
        missing = [k for k in ("label_key", "payload") if k not in event]
        if missing:
            return EventOutcome(index=index, status="rejected", error=f"event has no {' or '.join(missing)}")
        async with limit:
            try:
                ack = await client.send_data(event["label_key"], event["payload"], event.get("timestamp"))
                return EventOutcome(index=index, status="done", event_id=ack.id)
            except InputError as exc:
                return EventOutcome(index=index, status="rejected", error=str(exc))
            except ApiError as exc:
                return EventOutcome(index=index, status="failed", error=str(exc))

    async with creds.session() as client:
        return list(await asyncio.gather(*(one(client, i, e) for i, e in enumerate(events))))
