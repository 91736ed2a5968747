"""``SubjectResolver`` on a scripted subjects API: listed once, each missing subject created once (concurrently),
lost answers checked by listing again, refused subjects not retried, transient failures retried later."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from clients.errors import ApiError
from clients.haut import HautClient
from clients.timing import FakeClock
from clients.transport import HttpSettings, RetryPolicy
from tasks.haut_batch import SubjectResolver

CID = "6f1e9a52-3c1d-4b7e-9a0f-2d5c8e4b7a10"
DS = "11111111-1111-4111-8111-111111111111"
SUBJECTS = f"/api/v1/companies/{CID}/datasets/{DS}/subjects/"


class Subjects:
    """A dataset's subjects: list (one page) and create; ``lose``: names whose create answer is lost after
    the subject was stored; ``refuse``: names answered 400; ``unavailable``: creates answered 503."""

    def __init__(self, existing: list[str] = ()) -> None:
        self.stored: list[dict] = []
        self.lists = 0
        self.creates: list[str] = []
        self.lose: set[str] = set()
        self.refuse: set[str] = set()
        self.unavailable = 0
        self.in_flight = self.most_in_flight = 0
        for name in existing:
            self._store(name)

    def _store(self, name: str) -> dict:
        subject = {"id": f"s-{len(self.stored) + 1}", "name": name}
        self.stored.append(subject)
        return subject

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == SUBJECTS
        if request.method == "GET":
            self.lists += 1
            return httpx.Response(200, json={"count": len(self.stored), "next": None, "results": self.stored})
        name = json.loads(request.content)["name"]
        self.creates.append(name)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.unavailable:
            self.unavailable -= 1
            return httpx.Response(503, json={"type": "server_error", "errors": []})
        if name in self.refuse:
            error = {"code": "invalid", "detail": "Not allowed.", "attr": "birth_date"}
            return httpx.Response(400, json={"type": "validation_error", "errors": [error]})
        subject = self._store(name)
        if name in self.lose:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(201, json=subject)


def resolver(service: Subjects) -> SubjectResolver:
    settings = HttpSettings(transport=httpx.MockTransport(service), retry=RetryPolicy(max_attempts=1))
    client = HautClient(
        CID, "https://haut.test", private_token="pt-secret-123", settings=settings, clock=FakeClock()
    )
    return SubjectResolver(client, DS, {})


async def test_lists_once_and_creates_each_missing_subject_once_concurrently():
    service = Subjects(existing=["ann"])
    subjects = resolver(service)
    names = ["ann", "bob", "bob", "cid", "dan", "bob"]
    ids = await asyncio.gather(*(subjects.id_of(n) for n in names))
    by_name = {s["name"]: s["id"] for s in service.stored}
    assert ids == [by_name[n] for n in names] and ids[1] == ids[2] == ids[5]
    assert service.lists == 1 and sorted(service.creates) == ["bob", "cid", "dan"]
    assert service.most_in_flight == 3  # different subjects are created side by side
    assert await subjects.id_of("cid") == by_name["cid"] and len(service.creates) == 3  # remembered


async def test_a_lost_create_answer_is_found_by_listing_again_not_created_twice():
    service = Subjects()
    service.lose = {"eve", "fay"}
    subjects = resolver(service)
    ids = await asyncio.gather(subjects.id_of("eve"), subjects.id_of("fay"))
    assert ids == [s["id"] for s in service.stored] and sorted(service.creates) == ["eve", "fay"]
    assert service.lists <= 3  # the first listing, then at most one per lost answer


async def test_a_refused_subject_fails_alone_and_is_not_sent_again():
    service = Subjects()
    service.refuse = {"gus"}
    subjects = resolver(service)
    with pytest.raises(ApiError, match="birth_date") as first:
        await subjects.id_of("gus")
    assert not first.value.retryable
    assert await subjects.id_of("hal") == "s-1"
    with pytest.raises(ApiError, match="birth_date"):
        await subjects.id_of("gus")
    assert service.creates == ["gus", "hal"]


async def test_a_transient_failure_is_tried_again_by_a_later_analysis():
    service = Subjects()
    service.unavailable = 1
    subjects = resolver(service)
    with pytest.raises(ApiError) as first:
        await subjects.id_of("ivy")
    assert first.value.retryable
    assert await subjects.id_of("ivy") == "s-1" and service.creates == ["ivy", "ivy"]
