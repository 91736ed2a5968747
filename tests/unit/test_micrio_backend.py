"""Micrio backend: validation, auth, the per-image pipeline on a stepped clock, fail rules, folder indexes."""

from __future__ import annotations

import asyncio
import copy
import heapq
import io
import itertools
from typing import Any

import httpx
import pytest
from PIL import Image

from emulators.common import ManualClock, ServiceError
from emulators.micrio import DEFAULT_CONFIG, credentials
from emulators.micrio.backend import FetchResult, MicrioBackend, default_name, identify, render_thumbnail
from emulators.micrio.routes import THUMBNAIL_PATH

CREDS = credentials(DEFAULT_CONFIG)
AUTH = {"organisationId": CREDS["organisation_id"], "apiKey": CREDS["api_key"]}
ROOT = CREDS["root_folder_id"]
OTHER_ORG = {
    "organisation_id": "11111111-2222-4333-8444-555555555555",
    "api_key": "66666666-7777-4888-9999-000000000000",
    "folders": [{"id": "otherF", "name": "Other"}],
}
DURATIONS = {"downloading": 1.0, "processing": 2.0, "tiling": 3.0, "storing": 4.0}


class StepClock:
    """Virtual time that moves only in ``advance``; sleepers wake in deadline order, exactly on time."""

    time_scale = 1.0

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def to_real(self, virtual_seconds: float) -> float:
        return 0.0

    async def sleep(self, virtual_seconds: float) -> None:
        if virtual_seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + virtual_seconds, next(self._seq), fut))
        await fut

    async def advance(self, seconds: float) -> None:
        target = self._now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._now = deadline
            fut.set_result(None)
            await settle()
        self._now = target
        await settle()


async def settle(rounds: int = 30) -> None:
    """Let every runnable task take its next steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 120, 200)).save(out, "JPEG")
    return out.getvalue()


class StubFetcher:
    """Dimensions or error per URL; URLs in ``gates`` block until their event is set."""

    def __init__(self) -> None:
        self.results: dict[str, FetchResult] = {}
        self.gates: dict[str, asyncio.Event] = {}
        self.calls: list[str] = []

    async def __call__(self, url: str) -> FetchResult:
        self.calls.append(url)
        if url in self.gates:
            await self.gates[url].wait()
        return self.results.get(url, FetchResult(width=800, height=600, nbytes=1234))


@pytest.fixture
async def make():
    """Factory of backends with a stub fetcher; closes their workers afterwards."""
    made: list[MicrioBackend] = []

    def factory(clock: Any = None, **overrides: Any) -> MicrioBackend:
        config = {**copy.deepcopy(DEFAULT_CONFIG), "seed": 7, "stage_durations": dict(DURATIONS), **overrides}
        backend = MicrioBackend(
            config, clock or ManualClock(), "http://emu.test", thumbnail_path=THUMBNAIL_PATH
        )
        backend.fetcher = StubFetcher()
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        await backend.aclose()


def add(backend: MicrioBackend, *urls: str, folder: str = ROOT, **extra: Any) -> list[dict[str, Any]]:
    body = {**AUTH, "folderId": folder, "images": [{"sourceUrl": u} for u in urls], **extra}
    return backend.add_images(body)["images"]


def status(backend: MicrioBackend, *ids: str) -> dict[str, dict[str, Any]]:
    return {i["id"]: i for i in backend.image_status({**AUTH, "imageIds": list(ids)})["images"]}


def folder_status(backend: MicrioBackend, folder: str = ROOT) -> dict[str, Any]:
    return backend.folder_status({**AUTH, "folderId": folder})


def rejected(fn: Any, body: Any) -> tuple[int, Any]:
    with pytest.raises(ServiceError) as exc:
        fn(body)
    return exc.value.status, exc.value.body


# --- auth and validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status_code", "needle"),
    [
        ([], 400, "JSON object"),
        ({"apiKey": AUTH["apiKey"], "folderId": ROOT, "images": []}, 400, "organisationId is required"),
        ({"organisationId": AUTH["organisationId"], "folderId": ROOT}, 400, "apiKey is required"),
        ({**AUTH, "apiKey": "not-a-uuid"}, 400, "apiKey must be a uuid"),
        ({**AUTH, "organisationId": 12}, 400, "organisationId must be a uuid"),
        ({**AUTH, "apiKey": "66666666-7777-4888-9999-000000000000"}, 401, "Invalid organisationId or apiKey"),
        ({**AUTH, "organisationId": "11111111-2222-4333-8444-555555555555"}, 401, "Invalid"),
    ],
)
def test_auth_is_checked_on_every_call(make, body, status_code, needle) -> None:
    backend = make()
    for fn in (backend.add_images, backend.image_status, backend.folder_status, backend.create_folder):
        code, err = rejected(fn, body)
        assert code == status_code
        assert list(err) == ["error"] and needle in err["error"]


def test_uuid_comparison_ignores_case(make) -> None:
    backend = make()
    body = {
        "organisationId": AUTH["organisationId"].upper(),
        "apiKey": AUTH["apiKey"].upper(),
        "folderId": ROOT,
    }
    assert backend.folder_status(body)["numTotal"] == 0


@pytest.mark.parametrize(
    ("changes", "status_code", "needle"),
    [
        ({"images": None}, 400, "images is required"),
        ({"images": {"sourceUrl": "http://x/a.jpg"}}, 400, "images must be an array"),
        ({"images": []}, 400, "at least one image"),
        ({"images": ["http://x/a.jpg"]}, 400, "images[0] must be an object"),
        ({"images": [{"name": "a"}]}, 400, "images[0].sourceUrl is required"),
        ({"images": [{"sourceUrl": "http://x/a.jpg"}, {"sourceUrl": ""}]}, 400, "images[1].sourceUrl"),
        ({"images": [{"sourceUrl": "http://x/a.jpg", "name": 5}]}, 400, "images[0].name must be a string"),
        ({"folderId": None}, 400, "folderId is required"),
        ({"folderId": "abc"}, 400, "6 characters"),
        ({"folderId": "abcdefg"}, 400, "6 characters"),
        ({"folderId": "nopeNo"}, 404, "not found"),
        ({"folderId": "otherF"}, 404, "not found"),  # another organisation's folder
        ({"userEmail": 3}, 400, "userEmail"),
        ({"images": [{"sourceUrl": f"http://x/{i}.jpg"} for i in range(4)]}, 400, "maximum per call is 3"),
    ],
)
def test_images_add_rejections(make, changes, status_code, needle) -> None:
    backend = make(max_images_per_add=3, organisations=[*DEFAULT_CONFIG["organisations"], OTHER_ORG])
    body = {**AUTH, "folderId": ROOT, "images": [{"sourceUrl": "http://x/a.jpg"}], **changes}
    body = {k: v for k, v in body.items() if v is not None}
    code, err = rejected(backend.add_images, body)
    assert code == status_code and needle in err["error"]
    assert backend.images == {}


def test_config_must_use_uuids_and_six_char_folders() -> None:
    bad_org = {**copy.deepcopy(DEFAULT_CONFIG), "organisations": [{**OTHER_ORG, "api_key": "secret"}]}
    with pytest.raises(ValueError, match="uuids"):
        MicrioBackend(bad_org, ManualClock(), "http://e", thumbnail_path=THUMBNAIL_PATH)
    bad_folder = {
        **copy.deepcopy(DEFAULT_CONFIG),
        "organisations": [{**OTHER_ORG, "folders": [{"id": "short"}]}],
    }
    with pytest.raises(ValueError, match="6 chars"):
        MicrioBackend(bad_folder, ManualClock(), "http://e", thumbnail_path=THUMBNAIL_PATH)


# --- images/add ----------------------------------------------------------------------------------


def test_add_returns_queued_ids_in_input_order_with_default_names(make) -> None:
    backend = make()
    body = {
        **AUTH,
        "folderId": ROOT,
        "images": [
            {"sourceUrl": "https://bucket.s3.test/dir/My%20Photo.jpg?X-Amz-Signature=abc"},
            {"sourceUrl": "http://x/b.png", "name": "catalogue-17"},
            {"sourceUrl": "http://x/c.tif"},
        ],
    }
    out = backend.add_images(body)["images"]
    assert [i["name"] for i in out] == ["My Photo.jpg", "catalogue-17", "c.tif"]
    assert [i["status"] for i in out] == ["queued"] * 3
    ids = [i["id"] for i in out]
    assert len(set(ids)) == 3 and all(len(i) == 6 and i.isalpha() for i in ids)
    assert backend.images[ids[0]].user_email == "tiler@micr.io"
    assert folder_status(backend) == {"numTotal": 3, "numComplete": 0, "processingIds": ids, "erroredIds": []}


def test_inspection_output_drops_presigned_query_strings(make) -> None:
    backend = make()
    add(backend, "https://s3.test/b/k.jpg?X-Amz-Credential=AKIA&X-Amz-Signature=abc")
    (entry,) = backend.received.snapshot()["recent_accepted"]
    assert entry["sourceUrl"] == "https://s3.test/b/k.jpg?..."


def test_default_name_edge_cases() -> None:
    assert default_name("http://host/a/b/photo.jpg?sig=1#frag") == "photo.jpg"
    assert default_name("http://host/a/dir/") == "dir"
    assert default_name("http://host") == "host"


def test_same_source_twice_is_accepted_but_counted_as_duplicate(make) -> None:
    backend = make()
    first = add(backend, "http://x/a.jpg")
    second = add(backend, "http://x/a.jpg", "http://x/b.jpg")
    assert first[0]["id"] != second[0]["id"]
    snap = backend.received.snapshot()
    assert snap["accepted"]["image"] == 3
    assert snap["duplicates"] == {"image": 1}
    assert snap["recent_duplicates"][0]["sourceUrl"] == "http://x/a.jpg"
    assert folder_status(backend)["numTotal"] == 3


# --- image/status --------------------------------------------------------------------------------


def test_image_status_limits_and_unknown_ids(make) -> None:
    backend = make(organisations=[*DEFAULT_CONFIG["organisations"], OTHER_ORG])
    ids = [i["id"] for i in add(backend, "http://x/a.jpg", "http://x/b.jpg")]
    other = backend.add_images(
        {
            "organisationId": OTHER_ORG["organisation_id"],
            "apiKey": OTHER_ORG["api_key"],
            "folderId": "otherF",
            "images": [{"sourceUrl": "http://x/o.jpg"}],
        }
    )["images"][0]["id"]
    code, err = rejected(backend.image_status, {**AUTH, "imageIds": ["aaaaaa"] * 101})
    assert code == 400 and "maximum is 100" in err["error"]
    assert rejected(backend.image_status, {**AUTH})[0] == 400
    assert rejected(backend.image_status, {**AUTH, "imageIds": "abc"})[0] == 400
    assert rejected(backend.image_status, {**AUTH, "imageIds": [1, 2]})[0] == 400
    # 100 ids is fine; unknown ids and other organisations' ids are left out; order follows the request.
    asked = [ids[1], "zzzzzz", other, ids[0], *(["yyyyyy"] * 96)]
    out = backend.image_status({**AUTH, "imageIds": asked})["images"]
    assert [i["id"] for i in out] == [ids[1], ids[0]]
    assert out[0] == {"id": ids[1], "name": "b.jpg", "status": "queued"}


# --- the pipeline --------------------------------------------------------------------------------


async def test_status_progression_follows_stage_durations(make) -> None:
    clock = StepClock()
    backend = make(clock)
    backend.fetcher.results["http://x/big.jpg"] = FetchResult(width=4000, height=3000)
    (image,) = add(backend, "http://x/big.jpg")
    iid = image["id"]
    await settle()
    seen = [status(backend, iid)[iid]]
    # downloading 1 s, processing 2 s, tiling 3 s, storing 4 s; sample just before and after each boundary
    for dt in (0.9, 0.2, 1.8, 0.2, 2.8, 0.2, 3.8, 0.2):
        await clock.advance(dt)
        seen.append(status(backend, iid)[iid])
    assert [s["status"] for s in seen] == [
        "downloading",
        "downloading",
        "processing",
        "processing",
        "tiling",
        "tiling",
        "storing",
        "storing",
        "ready",
    ]
    assert "width" not in seen[1]  # not known until downloaded
    assert (seen[2]["width"], seen[2]["height"]) == (4000, 3000)
    assert all("thumbnail" not in s for s in seen[:-1]) and all("error" not in s for s in seen)
    assert seen[-1]["thumbnail"] == f"http://emu.test/thumbs/{iid}.jpg"
    assert backend.images[iid].ready_at == pytest.approx(1_010.0)
    assert folder_status(backend) == {"numTotal": 1, "numComplete": 1, "processingIds": [], "erroredIds": []}


async def test_downloading_lasts_as_long_as_the_real_fetch(make) -> None:
    clock = StepClock()
    backend = make(clock)
    gate = backend.fetcher.gates["http://x/slow.jpg"] = asyncio.Event()
    (image,) = add(backend, "http://x/slow.jpg")
    await clock.advance(5.0)  # far beyond the 1 s stage
    assert status(backend, image["id"])[image["id"]]["status"] == "downloading"
    gate.set()
    await settle()
    assert status(backend, image["id"])[image["id"]]["status"] == "processing"


async def test_only_max_concurrent_images_are_processed_at_once(make) -> None:
    clock = StepClock()
    backend = make(clock, max_concurrent=2)
    ids = [i["id"] for i in add(backend, *(f"http://x/{n}.jpg" for n in range(5)))]
    await settle()
    assert [backend.images[i].status for i in ids] == ["downloading"] * 2 + ["queued"] * 3
    assert backend.inspect()["by_status"]["queued"] == 3
    await clock.advance(10.0)  # first two done; the next two start at 10 s exactly
    assert [backend.images[i].status for i in ids] == ["ready"] * 2 + ["downloading"] * 2 + ["queued"]
    await clock.advance(20.0)
    assert all(backend.images[i].status == "ready" for i in ids)
    assert backend.images[ids[4]].ready_at == pytest.approx(1_030.0)
    assert backend.inspect()["first_added_to_last_ready"]["virtual_seconds"] == pytest.approx(30.0)


@pytest.mark.parametrize("code", ["originalNotFound", "invalidImage"])
async def test_fetch_failures_end_in_error(make, code) -> None:
    clock = StepClock()
    backend = make(clock)
    backend.fetcher.results["http://x/bad"] = FetchResult(error=code)
    (bad, good) = add(backend, "http://x/bad", "http://x/good.jpg")
    await clock.advance(11.0)
    out = status(backend, bad["id"], good["id"])
    assert out[bad["id"]] == {"id": bad["id"], "name": "bad", "status": "error", "error": code}
    assert out[good["id"]]["status"] == "ready"
    assert folder_status(backend) == {
        "numTotal": 2,
        "numComplete": 1,
        "processingIds": [],
        "erroredIds": [bad["id"]],
    }
    assert backend.inspect()["errors"] == {code: 1}


@pytest.mark.parametrize(
    ("rule", "fails_in"),
    [
        ({"match": r"flaky", "error": "uploadError", "times": 1}, "storing"),
        ({"match": r"flaky", "error": "statusUpdateError", "times": 1}, "storing"),
        ({"match": r"flaky", "error": "unknown", "times": 1}, "tiling"),
        ({"match": r"flaky", "error": "uploadError", "times": 1, "stage": "downloading"}, "downloading"),
    ],
)
async def test_fail_rule_fails_first_attempts_then_re_add_succeeds(make, rule, fails_in) -> None:
    clock = StepClock()
    backend = make(clock, fail_rules=[rule])
    (first, fine) = add(backend, "http://x/flaky.jpg", "http://x/fine.jpg")
    await clock.advance(0.5)
    at_fail = {"downloading": 1.0, "processing": 3.0, "tiling": 6.0, "storing": 10.0}[fails_in]
    await clock.advance(at_fail - 0.6)
    assert backend.images[first["id"]].status == fails_in  # spends the stage's time before failing
    await clock.advance(0.2)
    assert status(backend, first["id"])[first["id"]]["error"] == rule["error"]
    (retry,) = add(backend, "http://x/flaky.jpg")
    await clock.advance(20.0)
    assert backend.images[retry["id"]].status == "ready"
    assert backend.images[fine["id"]].status == "ready"
    assert folder_status(backend)["erroredIds"] == [first["id"]]


async def test_fail_rule_without_times_always_fails_and_matches_names(make) -> None:
    backend = make(StepClock(), fail_rules=[{"match": "^doomed$", "error": "unknown", "times": None}])
    clock = backend.clock
    ids = [i["id"] for i in add(backend, "http://x/doomed", "http://x/doomed")]
    await clock.advance(20.0)
    assert [backend.images[i].error for i in ids] == ["unknown", "unknown"]


async def test_transient_error_rate_with_seed(make) -> None:
    backend = make(StepClock(), transient_error_rate=1.0, transient_errors=["statusUpdateError"])
    ids = [i["id"] for i in add(backend, *(f"http://x/{n}.jpg" for n in range(3)))]
    await backend.clock.advance(40.0)
    assert {backend.images[i].error for i in ids} == {"statusUpdateError"}


def test_invalid_fail_rules_are_rejected(make) -> None:
    backend = make()
    with pytest.raises(ValueError, match="must be one of"):
        backend.update_config({"fail_rules": [{"match": "x", "error": "originalNotFound"}]})
    with pytest.raises(ValueError, match="cannot change"):
        backend.update_config({"organisations": []})
    with pytest.raises(ValueError, match="error"):  # re.error: unbalanced parenthesis
        backend.update_config({"fail_rules": [{"match": "(", "error": "unknown"}]})
    with pytest.raises(ValueError, match="KeyError"):
        backend.update_config({"fail_rules": [{"error": "unknown"}]})
    with pytest.raises(ValueError, match="between 0 and 1"):
        backend.update_config({"transient_error_rate": 2})
    assert backend.rules == []  # the previous settings stay in force


async def test_update_config_changes_durations_until_reset(make) -> None:
    backend = make(StepClock())
    out = backend.update_config({"stage_durations": {"downloading": 0, "processing": 0, "storing": 0}})
    assert out["stage_durations"] == {"downloading": 0, "processing": 0, "tiling": 3.0, "storing": 0}
    (image,) = add(backend, "http://x/a.jpg")
    await backend.clock.advance(2.9)
    assert backend.images[image["id"]].status == "tiling"
    await backend.clock.advance(0.1)
    assert backend.images[image["id"]].status == "ready"
    backend.reset()
    assert backend.stage_durations == DURATIONS and backend.images == {}


async def test_ten_thousand_images_flow_through_the_pool(make) -> None:
    backend = make(
        ManualClock(),
        max_concurrent=50,
        max_images_per_add=1000,
        stage_durations={"downloading": 0, "processing": 0, "tiling": 0, "storing": 0},
    )
    for batch in range(10):
        add(backend, *(f"http://x/{batch}-{n}.jpg" for n in range(1000)))
    assert len(backend._workers) == 50
    for _ in range(10_000):
        await asyncio.sleep(0)
        if backend.inspect()["by_status"]["ready"] == 10_000:
            break
    stats = backend.inspect()
    assert stats["images_total"] == 10_000 and stats["by_status"]["ready"] == 10_000
    assert stats["first_added_at"] is not None and stats["last_ready_at_monotonic"] is not None
    fs = folder_status(backend)
    assert (fs["numTotal"], fs["numComplete"], fs["processingIds"]) == (10_000, 10_000, [])


def test_without_a_loop_images_just_stay_queued(make) -> None:
    backend = make()
    (image,) = add(backend, "http://x/a.jpg")
    assert backend.images[image["id"]].status == "queued" and not backend._workers


# --- folders -------------------------------------------------------------------------------------


def test_folder_create_defaults_and_types(make) -> None:
    backend = make()
    plain = backend.create_folder({**AUTH, "parentId": ROOT})["id"]
    album = backend.create_folder({**AUTH, "parentId": plain, "type": "album", "name": "Paintings"})["id"]
    space = backend.create_folder({**AUTH, "parentId": ROOT, "type": "space"})["id"]
    assert len({plain, album, space, ROOT}) == 4 and all(len(f) == 6 for f in (plain, album, space))
    got = {
        f: (backend.folders[f].name, backend.folders[f].type, backend.folders[f].parent_id)
        for f in (plain, album, space)
    }
    assert got == {
        plain: ("folder", "folder", ROOT),
        album: ("Paintings", "album", plain),
        space: ("space", "space", ROOT),
    }
    assert folder_status(backend, album) == {
        "numTotal": 0,
        "numComplete": 0,
        "processingIds": [],
        "erroredIds": [],
    }
    add(backend, "http://x/a.jpg", folder=album)
    assert folder_status(backend, album)["numTotal"] == 1 and folder_status(backend)["numTotal"] == 0


@pytest.mark.parametrize(
    ("changes", "status_code", "needle"),
    [
        ({"parentId": None}, 400, "parentId is required"),
        ({"parentId": "toolong"}, 400, "6 characters"),
        ({"parentId": "nopeNo"}, 404, "not found"),
        ({"parentId": "otherF"}, 404, "not found"),
        ({"type": "gallery"}, 400, "type must be one of folder, album, space"),
        ({"name": ["x"]}, 400, "name must be a string"),
    ],
)
def test_folder_create_rejections(make, changes, status_code, needle) -> None:
    backend = make(organisations=[*DEFAULT_CONFIG["organisations"], OTHER_ORG])
    body = {k: v for k, v in {**AUTH, "parentId": ROOT, **changes}.items() if v is not None}
    code, err = rejected(backend.create_folder, body)
    assert code == status_code and needle in err["error"]


def test_folder_status_rejections(make) -> None:
    backend = make()
    assert rejected(backend.folder_status, {**AUTH})[0] == 400
    assert rejected(backend.folder_status, {**AUTH, "folderId": 123456})[0] == 400
    assert rejected(backend.folder_status, {**AUTH, "folderId": "nopeNo"})[0] == 404


# --- fetching and pictures -----------------------------------------------------------------------


async def test_fetch_source_maps_http_outcomes_to_micrio_errors(make) -> None:
    backend = make()
    big = jpeg(3000, 2000) + b"\0" * (3 * 1024 * 1024)  # spills the spool to disk

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/a.jpg":
            return httpx.Response(200, content=jpeg(320, 240))
        if path == "/big.jpg":
            return httpx.Response(200, content=big)
        if path == "/text":
            return httpx.Response(200, content=b"hello, not an image")
        if path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(404)

    backend._http = [httpx.AsyncClient(transport=httpx.MockTransport(handler))]
    ok = await backend.fetch_source("http://x/a.jpg?X-Amz-Signature=abc%2F")
    assert (ok.width, ok.height, ok.error) == (320, 240, None)
    assert (await backend.fetch_source("http://x/big.jpg")).width == 3000
    assert (await backend.fetch_source("http://x/text")).error == "invalidImage"
    assert (await backend.fetch_source("http://x/missing.jpg")).error == "originalNotFound"
    assert (await backend.fetch_source("http://x/down")).error == "originalNotFound"
    await backend._http[0].aclose()
    backend._http = []  # the real client rejects these before touching the network
    assert (await backend.fetch_source("ftp://x/a.jpg")).error == "originalNotFound"
    assert (await backend.fetch_source("not a url")).error == "originalNotFound"
    assert backend.fetch_stats["fetches"] == 7 and backend.fetch_stats["invalid"] == 1


def test_identify_and_thumbnail() -> None:
    assert identify(jpeg(123, 45)) == (123, 45)
    assert identify(b"GIF89a-not-really") is None
    thumb = Image.open(io.BytesIO(render_thumbnail(4000, 1000, "abcdef")))
    assert (thumb.format, thumb.size) == ("JPEG", (256, 64))
    assert render_thumbnail(10, 10, "a") != render_thumbnail(10, 10, "b")


async def test_thumbnail_only_for_ready_images(make) -> None:
    backend = make(StepClock())
    (image,) = add(backend, "http://x/a.jpg")
    assert backend.thumbnail(image["id"]) is None
    await backend.clock.advance(10.0)
    assert backend.thumbnail(image["id"]) == (800, 600, image["id"])
    assert backend.thumbnail("nopeNo") is None


async def test_reset_drops_images_and_stops_workers(make) -> None:
    backend = make(StepClock())
    add(backend, "http://x/a.jpg")
    await settle()
    assert backend._workers
    created = backend.create_folder({**AUTH, "parentId": ROOT})["id"]
    backend.reset()
    await settle()
    assert backend.images == {} and created not in backend.folders and not backend._workers
    assert backend.inspect()["by_status"]["downloading"] == 0
    assert backend.received.snapshot()["accepted"] == {}


async def test_tiling_time_grows_with_megapixels(make) -> None:
    backend = make(StepClock(), tiling_per_megapixel=0.5)
    backend.fetcher.results["http://x/huge.tif"] = FetchResult(width=20_000, height=10_000)  # 200 MPix
    (image,) = add(backend, "http://x/huge.tif")
    await backend.clock.advance(1.0 + 2.0 + 3.0 + 100.0 + 3.9)
    assert backend.images[image["id"]].status == "storing"
    await backend.clock.advance(0.2)
    assert backend.images[image["id"]].status == "ready"


async def test_max_concurrent_can_shrink_and_grow_at_run_time(make) -> None:
    backend = make(StepClock(), max_concurrent=4)
    add(backend, *(f"http://x/{n}.jpg" for n in range(8)))
    await settle()
    assert backend.inspect()["by_status"]["downloading"] == 4
    backend.update_config({"max_concurrent": 1})
    await backend.clock.advance(10.0)  # the four in flight finish; three workers retire
    assert len(backend._workers) == 1 and backend.inspect()["by_status"]["downloading"] == 1
    backend.update_config({"max_concurrent": 3})
    await settle()
    assert len(backend._workers) == 3 and backend.inspect()["by_status"]["downloading"] == 3
