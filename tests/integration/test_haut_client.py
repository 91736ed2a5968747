"""HautClient, block and tasks against the Haut.ai emulator over real HTTP (time scale 0.01: the 22 virtual
seconds of queueing + processing take ~0.2 s)."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image, ImageDraw
from pydantic import SecretStr

from blocks import HautCredentials
from clients.errors import ApiError, AuthError, InputError, NotFoundError, OutcomeUnknownError
from clients.haut import HautClient, PollSettings, clear_shared_sessions
from clients.haut_models import SubjectSpec, V1Analysis, face_scores
from emulators.haut.results import V3_KEYS, metric_scores
from tasks.haut import (
    analyse_haut_batch,
    analyse_haut_image_v1,
    ensure_haut_dataset,
    ensure_haut_subjects,
    get_haut_image,
    list_haut_subjects,
    wait_for_haut_results_v1,
)
from tasks.haut_batch import AnalysisImage, AnalysisUnit
from tests.conftest import TEST_TIME_SCALE, start_service
from tests.images import png_bytes

pytestmark = pytest.mark.integration
FSM2 = "face_skin_metrics_2.0"
FS3 = "face_skin_metrics_3.0"
FAST_POLL = PollSettings(initial_delay=0.05, factor=1.5, max_delay=0.2, timeout=15)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    with start_service("haut", tmp_path_factory) as emu:
        yield emu["haut"]


@pytest.fixture(autouse=True)
def _reset(svc):
    svc.reset()
    clear_shared_sessions()


def creds(svc, **kw) -> HautCredentials:
    c = svc.credentials
    if "username" in kw:
        kw.setdefault("password", SecretStr(c["password"]))
    else:
        kw.setdefault("private_token", SecretStr(c["private_token"]))
    return HautCredentials(
        base_url=svc.url,
        company_id=c["company_id"],
        poll_initial_delay_seconds=FAST_POLL.initial_delay,
        poll_max_delay_seconds=FAST_POLL.max_delay,
        results_timeout_seconds=FAST_POLL.timeout,
        **kw,
    )


def client(svc, **kw) -> HautClient:
    return creds(svc, **kw).get_client()


def face_jpeg(seed: int = 0, size: int = 512) -> bytes:
    """A face-like selfie: skin-toned oval, eyes, brows, nose and mouth; ``seed`` shifts tones and features."""
    img = Image.new("RGB", (size, size), (225, 230 - seed, 235))
    draw = ImageDraw.Draw(img)
    s = size / 512
    draw.ellipse((106 * s, 56 * s, 406 * s, 456 * s), fill=(224, 172 - 3 * seed, 138))
    for x in (190, 322):
        draw.ellipse(((x - 28) * s, 200 * s, (x + 28) * s, 232 * s), fill=(255, 255, 255))
        draw.ellipse(((x - 10) * s, 206 * s, (x + 10) * s, 226 * s), fill=(70, 45, 30))
        draw.line(((x - 34) * s, 180 * s, (x + 34) * s, (174 - seed) * s), fill=(90, 60, 40), width=6)
    draw.polygon([(256 * s, 230 * s), (236 * s, 310 * s), (276 * s, 310 * s)], fill=(205, 150, 120))
    draw.arc((196 * s, (320 + seed) * s, 316 * s, 390 * s), 20, 160, fill=(170, 60, 70), width=8)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def fsm2_scores(results, data: bytes) -> dict:
    """The whole-face scores of the FSM 2.0 families the emulator derives from ``data``."""
    scores = face_scores(results)
    return {family: scores[family] for family in metric_scores(data)}


async def dataset_with(c: HautClient, *apps: str, name: str = "study"):
    ds = await c.create_dataset(name)
    for app in apps:
        ds = await c.attach_application(app, ds.id)
    return ds


# --- auth -------------------------------------------------------------------------------------------------------
async def test_login_once_then_refresh_before_expiry(svc):
    login = {"username": svc.credentials["username"]}
    async with client(svc, **login) as c:
        await asyncio.gather(*(c.list_datasets() for _ in range(5)))  # single flight: one login
        info = await c.refresh()
        await c.list_datasets()
    assert info.email == svc.credentials["username"] and info.company_id == svc.credentials["company_id"]
    assert svc.received()["accepted"] == {"login": 1, "refresh": 1}

    # A token about to expire is refreshed before use, never replaced by a second login.
    c = HautClient(
        svc.credentials["company_id"],
        svc.url,
        username=svc.credentials["username"],
        password=svc.credentials["password"],
        token_lifetime=0.3,
        refresh_margin=0.1,
        share_session=False,
    )
    async with c:
        await c.list_datasets()
        await asyncio.sleep(0.25)  # now inside the refresh margin
        await c.list_datasets()
    assert svc.received()["accepted"] == {"login": 2, "refresh": 2}


async def test_task_runs_share_one_login(svc):
    block = creds(svc, username=svc.credentials["username"])
    for _ in range(3):
        await list_haut_subjects.fn(block, (await ensure_haut_dataset.fn(block, "shared")).id)
    assert svc.received()["accepted"]["login"] == 1


async def test_wrong_password_and_mfa_user_are_refused_clearly(svc):
    async with client(svc, username=svc.credentials["username"], password=SecretStr("wrong-pass-1")) as c:
        with pytest.raises(AuthError) as exc:
            await c.list_datasets()
    assert exc.value.status == 401 and "wrong-pass-1" not in str(exc.value)
    async with client(svc, username="mfa@haut-emulator.local") as c:
        with pytest.raises(ApiError, match=r"\[mfa_enabled\]") as exc:
            await c.list_datasets()
    assert exc.value.status == 400


async def test_private_token_create_list_revoke_then_401(svc):
    async with client(svc) as admin:
        token = await admin.create_private_token("etl", "2099-01-01T00:00:00Z")
        value = token.data.get_secret_value()
        assert value not in repr(token)
        listed = await admin.list_private_tokens()
        assert [t.name for t in listed] == ["demo backend token", "etl"] and all(
            t.data is None for t in listed
        )
        async with client(svc, private_token=SecretStr(value)) as other:
            assert await other.list_datasets() == []
            await admin.revoke_private_token(token.id)
            with pytest.raises(AuthError) as exc:
                await other.list_datasets()
        with pytest.raises(InputError, match="expiration_time: .* is in the past"):
            await admin.create_private_token("old", "2001-01-01T00:00:00Z")
    assert exc.value.status == 401 and value not in str(exc.value)
    assert "login" not in svc.received()["accepted"]


async def test_dictionaries(svc):
    async with client(svc) as c:
        types = await c.list_image_types()
        sides = await c.list_sides()
        lights = await c.list_lights()
        algorithms = await c.list_algorithms()
    assert types[0]["tech_name"] == "selfie" and [s["tech_name"] for s in types[0]["sides"]] == [
        "front",
        "right",
        "left",
    ]
    assert {s["id"]: s["tech_name"] for s in sides} == {1: "front", 2: "right", 3: "left"}
    assert lights[0]["tech_name"] == "regular"
    assert "selfie_v2.hydration" in {a["algorithm_family"]["tech_name"] for a in algorithms}


# --- datasets and applications ------------------------------------------------------------------------------------
async def test_dataset_create_list_all_pages_get(svc):
    async with client(svc) as c:
        made = [await c.create_dataset(f"ds-{i}", expire_images_after_days=30) for i in range(5)]
        c.page_size = 2  # 3 pages: follows `next`
        listed = await c.list_datasets()
        got = await c.get_dataset(made[3].id)
        found = await c.find_dataset("ds-4")
        with pytest.raises(NotFoundError):
            await c.get_dataset("00000000-0000-4000-8000-000000000000")
    assert [d.id for d in listed] == [d.id for d in made]
    assert got.name == "ds-3" and got.expire_images_after_days == 30 and found.id == made[4].id
    assert svc.received()["requests"]["GET " + "/api/v1/companies/{company_id}/datasets/"] == 4


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"name": ""}, "name: is blank"),
        ({"name": "x" * 513}, "name: is 513 characters long (at most 512)"),
        ({"name": "ok", "expire_images_after_days": 366}, "expire_images_after_days: is 366 days (1 to 365)"),
        ({"name": "ok", "expire_metadata_after_days": 0}, "expire_metadata_after_days: is 0 days"),
    ],
)
async def test_dataset_constraints_are_checked_before_sending(svc, kwargs, fragment):
    async with client(svc) as c:
        with pytest.raises(InputError) as exc:
            await c.create_dataset(**kwargs)
    assert fragment in str(exc.value) and svc.received()["requests"] == {}


async def test_attach_with_missing_dependency_names_it(svc):
    async with client(svc) as c:
        ds = await c.create_dataset("deps")
        apps = {a.tech_name for a in await c.list_applications()}
        with pytest.raises(ApiError) as exc:
            await c.attach_application("recommendation_engine", ds.id)
        attached = await c.attach_application("recommendation_engine", ds.id, attach_dependencies=True)
    assert {FSM2, FS3, "recommendation_engine"} <= apps
    msg = str(exc.value)
    assert exc.value.status == 400 and "[missing_dependencies] Missing dependencies." in msg and FSM2 in msg
    assert exc.value.errors[0]["extra"]["missing_application_tech_names"] == [FSM2]
    assert sorted(attached.application_tech_names) == [FSM2, "recommendation_engine"]


async def test_service_validation_error_names_field_and_code(svc):
    async with client(svc) as c:
        ds = await c.create_dataset("v")
        with pytest.raises(ApiError) as exc:
            await c.attach_application(FSM2, ds.id, enabled_algorithms=["selfie_v2.nope"])
    assert "enabled_algorithms [invalid_choice]" in str(exc.value)


async def test_webhook_create_then_overwrite(svc):
    async with client(svc) as c:
        ds = await c.create_dataset("hooks")
        first = await c.set_webhook(
            ds.id,
            "https://example.org/a",
            authorization="bearer",
            authorization_key="Authorization",
            authorization_value="hook-secret-1",
        )
        second = await c.set_webhook(
            ds.id,
            "https://example.org/b",
            authorization="query",
            authorization_key="token",
            authorization_value="hook-secret-2",
            method="get",
            merge_webhooks=True,
        )
        with pytest.raises(InputError, match="authorization: 'digest' is not allowed"):
            await c.set_webhook(
                ds.id, "https://x.org", authorization="digest", authorization_key="k", authorization_value="v"
            )
        with pytest.raises(InputError, match="authorization_value: is 129 characters long"):
            await c.set_webhook(
                ds.id,
                "https://x.org",
                authorization="basic",
                authorization_key="k",
                authorization_value="v" * 129,
            )
    assert first.model_extra["id"] == second.model_extra["id"] and second.url == "https://example.org/b"
    assert second.method == "get" and second.merge_webhooks is True
    assert first.secret_key.get_secret_value() == second.secret_key.get_secret_value()
    assert "hook-secret-2" not in repr(second)
    assert svc.received()["accepted"]["set_webhook"] == 2


# --- subjects -------------------------------------------------------------------------------------------------------
async def test_subjects_crud_bulk_delete_and_gdpr(svc):
    async with client(svc) as c:
        ds = await dataset_with(c, FSM2)
        spec = SubjectSpec(name="alice", birth_date="1990-05-01", biological_sex="female", meta={"k": 1})
        a = await c.create_subject(ds.id, spec)
        b = await c.create_subject(ds.id, "bob")
        extra = [await c.create_subject(ds.id, f"x{i}") for i in range(3)]
        got = await c.get_subject(ds.id, a.id)
        updated = await c.update_subject(ds.id, b.id, name="robert", meta={"cohort": "B"})
        with pytest.raises(InputError, match="height: is not a subject field"):
            await c.update_subject(ds.id, b.id, height=180)
        await c.delete_subject(ds.id, extra[0].id)
        await c.delete_subjects(ds.id, [s.id for s in extra[1:]])
        names = [s.name for s in await c.list_subjects(ds.id)]

        analysis = await c.analyse_image_v1(a.id, ds.id, face_jpeg())
        await c.wait_for_results_v1(analysis, **vars(FAST_POLL))
        before = await c.get_image(analysis.image_id)
        await c.delete_subject_photos(a.id)
        after = await c.get_image(analysis.image_id)
        results = await c.get_results_v1(ds.id, a.id, analysis.batch_id, analysis.image_id)
        cleared = await c.clear_subject_metadata(a.id)
        with pytest.raises(NotFoundError):
            await c.get_subject(ds.id, extra[0].id)
    assert (
        got.biological_sex["tech_name"] == "female"
        and got.birth_date == "1990-05-01"
        and got.meta == {"k": 1}
    )
    assert updated.name == "robert" and updated.meta == {"cohort": "B"}
    assert names == ["alice", "robert"]
    assert before.urls["original"] and after.urls["original"] is None and results  # files gone, results kept
    assert cleared.name == "" and cleared.birth_date is None and cleared.meta is None


# --- v1 flow --------------------------------------------------------------------------------------------------------
async def test_full_v1_flow_returns_the_emulators_metrics(svc):
    data = face_jpeg()
    async with client(svc) as c:
        ds = await dataset_with(c, FSM2)
        subject = await c.create_subject(ds.id, "p1")
        analysis = await c.analyse_image_v1(subject.id, ds.id, data)
        results = await c.wait_for_results_v1(analysis)
        images = await c.list_subject_images(subject.id)
        aux = await c.list_aux_images(analysis.image_id, algo_app="face", aux_image_type="restored")
        no_aux = await c.list_aux_images(analysis.image_id, aux_image_type="mask")
    assert fsm2_scores(results, data) == metric_scores(data)
    assert all(r.is_ok and r.image_id == analysis.image_id for r in results)
    pores = next(r for r in results if r.algorithm_family_tech_name == "selfie_v2.pores")
    assert [m.tech_name for m in pores.area_results[0].sub_metrics] == ["pores_number", "pores_density"]
    assert [i.id for i in images] == [analysis.image_id] and images[0].aux_images[0].id == aux[0].id
    assert aux[0].aux_image_type["tech_name"] == "selfie_front_face_restored_rgba" and no_aux == []
    got = svc.received()
    assert got["accepted"]["upload"] == 1 and got["accepted"]["compute"] == 1 and got["duplicates"] == {}


async def test_multi_side_v1_batch_and_image_get_delete(svc):
    async with client(svc) as c:
        ds = await dataset_with(c, FSM2)
        subject = await c.create_subject(ds.id, "p")
        front = await c.analyse_image_v1(subject.id, ds.id, face_jpeg(1), compute=False)
        left = await c.analyse_image_v1(subject.id, ds.id, face_jpeg(2), side_id=3, batch_id=front.batch_id)
        record = await c.get_image(left.image_id)
        await c.delete_image(front.image_id)
        with pytest.raises(NotFoundError):
            await c.get_image(front.image_id)
        await c.delete_image(front.image_id, missing_ok=True)
        remaining = await c.list_subject_images(subject.id)
    assert left.batch_id == front.batch_id and record.image_batch_id == front.batch_id
    assert record.side_tech_name == "left" and [i.id for i in remaining] == [left.image_id]


async def test_invalid_images_are_rejected_before_anything_is_sent(svc):
    async with client(svc) as c:
        for data, fragment in [
            (face_jpeg(size=200), "image: is 200×200 px (at least 256×256 px)"),
            (b"\xff\xd8\xff not really a jpeg", "image: is not a decodable image"),
            (b"\0" * (31_457_280 + 1), "image: is 31,457,281 bytes (at most 31,457,280 bytes (30 MiB))"),
        ]:
            with pytest.raises(InputError) as exc:
                await c.analyse_image_v1("4f1d1c38-8a30-4f44-9b4b-0d6f5f0a0a01", "ds", data)
            assert fragment in str(exc.value)
    assert svc.received()["requests"] == {}


async def test_upload_to_a_deleted_subject_fails(svc):
    async with client(svc) as c:
        ds = await dataset_with(c, FSM2)
        subject = await c.create_subject(ds.id, "gone")
        await c.delete_subject(ds.id, subject.id)
        with pytest.raises(NotFoundError, match="request_upload_v1: HTTP 404"):
            await c.analyse_image_v1(subject.id, ds.id, face_jpeg())


# --- v3 flow --------------------------------------------------------------------------------------------------------
async def test_full_v3_flow_three_sides(svc):
    sides = {"front": face_jpeg(3), "left": face_jpeg(4), "right": png_bytes(300, 300)}
    async with client(svc) as c:
        ds = await dataset_with(c, FS3)
        subject = await c.create_subject(ds.id, "v3")
        analysis = await c.analyse_images_v3(subject.id, sides)
        early = await c.get_results_v3(analysis.batch_id)
        results = await c.wait_for_results_v3(analysis.batch_id)
        images = await c.list_subject_images(subject.id)
    expected = metric_scores(sides["front"])
    assert early.all_algorithms_calculated is False and results.all_algorithms_calculated is True
    assert {V3_KEYS[f]: s for f, s in expected.items()} == {k: results.scores()[k] for k in V3_KEYS.values()}
    assert results.image_batch_id == analysis.batch_id and set(results.predicted_images) == set(sides)
    assert {i.side_tech_name for i in images} == set(sides) and set(analysis.image_ids) == set(sides)
    assert svc.received()["accepted"]["compute"] == 1


# --- faults ---------------------------------------------------------------------------------------------------------
async def test_503s_while_polling_results_are_retried(svc):
    data = face_jpeg(5)
    async with client(svc) as c:
        ds = await dataset_with(c, FSM2)
        subject = await c.create_subject(ds.id, "f")
        analysis = await c.analyse_image_v1(subject.id, ds.id, data)
        svc.faults(error_rate=0.6, path_pattern=r"/results/$", seed=7)
        results = await c.wait_for_results_v1(analysis)
    assert fsm2_scores(results, data) == metric_scores(data)
    assert svc.received()["faults_injected"]["503"] >= 1


async def test_dropped_connection_after_signed_url_is_outcome_unknown(svc):
    async with client(svc) as c:
        ds = await dataset_with(c, FSM2)
        subject = await c.create_subject(ds.id, "d")
        svc.faults(drop_rate=1.0, drop_after_processing=True, path_pattern=r"signed_upload_url")
        with pytest.raises(OutcomeUnknownError, match="request_upload_v1"):
            await c.analyse_image_v1(subject.id, ds.id, face_jpeg())
    got = svc.received()
    assert got["accepted"]["signed_upload_url"] == 1 and "upload" not in got["accepted"]


# --- tasks ----------------------------------------------------------------------------------------------------------
async def test_ensure_tasks_reuse_by_name_on_rerun(svc):
    block = creds(svc)
    specs = [SubjectSpec(name="s1", meta={"a": 1}), "s2", "s1", SubjectSpec(name="s3")]
    ds1 = await ensure_haut_dataset.fn(block, "study", ["recommendation_engine"])
    first = await ensure_haut_subjects.fn(block, ds1.id, specs)
    ds2 = await ensure_haut_dataset.fn(block, "study", ["recommendation_engine", FSM2])
    second = await ensure_haut_subjects.fn(block, ds2.id, [*specs, "s4"])
    got = svc.received()
    assert ds1.id == ds2.id and sorted(ds1.application_tech_names) == [FSM2, "recommendation_engine"]
    assert [s.name for s in first] == ["s1", "s2", "s1", "s3"] and first[0].id == first[2].id
    assert [s.id for s in second[:4]] == [s.id for s in first] and second[4].name == "s4"
    assert got["accepted"]["create_dataset"] == 1 and got["accepted"]["create_subject"] == 4
    assert got["duplicates"] == {}


async def test_thin_tasks_run_with_a_block(svc):
    block = creds(svc)
    ds = await ensure_haut_dataset.fn(block, "thin")
    (subject,) = await ensure_haut_subjects.fn(block, ds.id, ["t"])
    analysis = await analyse_haut_image_v1.fn(block, subject.id, ds.id, face_jpeg(6))
    results = await wait_for_haut_results_v1.fn(block, analysis)
    image = await get_haut_image.fn(block, analysis.image_id)
    assert isinstance(analysis, V1Analysis) and results and image.id == analysis.image_id


def analysis(folder, unit: int, subject: str, sides: dict[str, bytes], subject_id: str | None = None):
    """An analysis of ``sides`` (side -> bytes), written to files under ``folder``."""
    images = []
    for n, (side, data) in enumerate(sides.items()):
        path = folder / f"{unit}-{side}.jpg"
        path.write_bytes(data)
        images.append(AnalysisImage(item=unit * 10 + n, source=str(path), side=side))
    return AnalysisUnit(unit=unit, subject=subject, subject_id=subject_id, images=images)


def face_figures(outcome) -> dict[str, float]:
    """Whole-face scores of a done analysis's metric rows (v1 ``<family>_score``, v3 ``score``)."""
    return {
        a: value
        for a, area, metric, value, *_ in outcome.rows
        if area == "face" and metric in (f"{a}_score", "score")
    }


async def test_batch_task_five_images_one_bad(svc, tmp_path):
    block = creds(svc)
    ds = await ensure_haut_dataset.fn(block, "batch")
    images = [face_jpeg(10 + i) for i in range(5)]
    images[2] = face_jpeg(size=128)  # too small: rejected before sending
    units = [analysis(tmp_path, i, f"b{i}", {"front": data}) for i, data in enumerate(images)]
    outcomes = await analyse_haut_batch.fn(block, ds.id, units, concurrency=3)
    assert [o.unit for o in outcomes] == [u.unit for u in units]
    assert [o.status for o in outcomes] == ["done", "done", "rejected", "done", "done"]
    assert "128×128 px" in outcomes[2].error and outcomes[2].batch_id is None
    for o, data in zip(outcomes, images, strict=True):
        if o.status == "done":
            assert {f: face_figures(o)[f] for f in metric_scores(data)} == metric_scores(data)
    got = svc.received()
    assert got["accepted"]["upload"] == 4 and got["accepted"]["compute"] == 4 and got["duplicates"] == {}
    assert got["accepted"]["create_subject"] == 4  # none for the rejected image


async def test_batch_task_v3_and_failures(svc, tmp_path):
    block = creds(svc)
    ds = await ensure_haut_dataset.fn(block, "batch3", [FS3])
    (gone,) = await ensure_haut_subjects.fn(block, ds.id, ["c"])
    async with block.get_client() as c:
        await c.delete_subject(ds.id, gone.id)
    units = [
        analysis(tmp_path, 1, "a", {"front": face_jpeg(20), "left": face_jpeg(21)}),
        analysis(tmp_path, 2, "b", {"front": b"not an image"}),
        analysis(tmp_path, 3, "c", {"front": face_jpeg(22)}, subject_id=gone.id),
    ]
    outcomes = await analyse_haut_batch.fn(block, ds.id, units, api_version="v3")
    assert [o.status for o in outcomes] == ["done", "rejected", "failed"]
    assert face_figures(outcomes[0])["pores"] == metric_scores(face_jpeg(20))["pores"]
    assert set(outcomes[0].image_ids) == {"front", "left"}
    assert "not a recognised image format" in outcomes[1].error
    assert "HTTP 404" in outcomes[2].error


async def test_batch_task_times_out_per_item(svc, tmp_path):
    block = creds(svc).model_copy(update={"results_timeout_seconds": 0.05})
    ds = await ensure_haut_dataset.fn(block, "slow")
    units = [analysis(tmp_path, 1, "s", {"front": face_jpeg()})]
    (outcome,) = await analyse_haut_batch.fn(block, ds.id, units)
    assert outcome.status == "failed" and outcome.pending and "not ready after 0.05 s" in outcome.error
    assert outcome.batch_id and outcome.image_ids


def test_batch_task_in_a_real_flow_run(svc, prefect_harness, tmp_path):
    from prefect import flow

    block = creds(svc)
    units = [analysis(tmp_path, i, f"f{i}", {"front": face_jpeg(30 + i)}) for i in (1, 2)]

    @flow
    async def analyse(dataset_name: str) -> list:
        ds = await ensure_haut_dataset(block, dataset_name)
        return await analyse_haut_batch(block, ds.id, units)

    outcomes = asyncio.run(analyse("flow"))
    assert [(o.unit, o.status) for o in outcomes] == [(1, "done"), (2, "done")]
    assert face_figures(outcomes[1])["hydration"] == metric_scores(face_jpeg(32))["hydration"]


def test_time_scale_is_what_the_fast_poll_assumes():
    # 2 + 20 virtual seconds of queue + processing must fit well inside FAST_POLL.timeout.
    assert 22 * TEST_TIME_SCALE < FAST_POLL.timeout / 10
