"""The thin Haut.ai tasks of ``tasks/haut.py`` against the emulator, in the vendor's order: dataset ->
subject -> upload -> compute -> results -> deletes (v1, then v3), private tokens, webhook. Each task is
called through ``.fn`` with a block, as a user's flow would; the requests the emulator accepted are the
proof that each one did its call (time scale 0.01: Haut's 22 s of queueing and processing take ~0.2 s)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from clients.errors import AuthError, NotFoundError
from clients.haut_models import SubjectSpec, V1Analysis
from emulators.haut.results import V3_KEYS, metric_scores
from tasks.haut import (
    analyse_haut_image_v1,
    analyse_haut_images_v3,
    attach_haut_application,
    clear_haut_subject_metadata,
    compute_haut_batch_v1,
    compute_haut_batch_v3,
    create_haut_dataset,
    create_haut_private_token,
    create_haut_subject,
    delete_haut_image,
    delete_haut_subject,
    delete_haut_subject_photos,
    delete_haut_subjects,
    get_haut_dataset,
    get_haut_image,
    get_haut_results_v1,
    get_haut_results_v3,
    get_haut_subject,
    list_haut_applications,
    list_haut_aux_images,
    list_haut_datasets,
    list_haut_private_tokens,
    list_haut_subject_images,
    list_haut_subjects,
    request_haut_upload_v1,
    request_haut_upload_v3,
    revoke_haut_private_token,
    set_haut_webhook,
    update_haut_subject,
    upload_haut_image,
    wait_for_haut_results_v1,
    wait_for_haut_results_v3,
)
from tests.integration import test_haut_client as kit
from tests.integration.test_haut_client import creds, face_jpeg, fsm2_scores

pytestmark = pytest.mark.integration
FSM2 = "face_skin_metrics_2.0"
FS3 = "face_skin_metrics_3.0"
# The emulator and its reset between tests: test_haut_client's fixtures.
svc, _reset = kit.svc, kit._reset


async def test_the_v1_sequence_dataset_subject_upload_compute_results_deletes(svc):
    haut = creds(svc)
    assert FSM2 in {a.tech_name for a in await list_haut_applications.fn(haut)}
    created = await create_haut_dataset.fn(haut, "thin v1", expire_images_after_days=30)
    await attach_haut_application.fn(haut, FSM2, created.id)
    dataset = await get_haut_dataset.fn(haut, created.id)
    assert dataset.application_tech_names == [FSM2]
    assert [d.id for d in await list_haut_datasets.fn(haut, q="thin v1")] == [dataset.id]

    alice = await create_haut_subject.fn(haut, dataset.id, SubjectSpec(name="alice", meta={"cohort": "A"}))
    bob = await create_haut_subject.fn(haut, dataset.id, SubjectSpec(name="bob"))
    await update_haut_subject.fn(haut, dataset.id, alice.id, {"meta": {"cohort": "B"}})
    assert (await get_haut_subject.fn(haut, dataset.id, alice.id)).meta == {"cohort": "B"}
    assert [s.name for s in await list_haut_subjects.fn(haut, dataset.id)] == ["alice", "bob"]

    # Step by step: signed URL -> PUT -> compute -> results.
    data = face_jpeg(1)
    record = await request_haut_upload_v1.fn(haut, alice.id)
    await upload_haut_image.fn(haut, record.upload_url, data)
    await compute_haut_batch_v1.fn(haut, record.image_batch_id)
    analysis = V1Analysis(
        dataset_id=dataset.id,
        subject_id=alice.id,
        batch_id=record.image_batch_id,
        image_id=record.id,
        side_id=1,
    )
    results = await wait_for_haut_results_v1.fn(haut, analysis)
    assert fsm2_scores(results, data) == metric_scores(data)
    assert await get_haut_results_v1.fn(haut, analysis) == results
    # In one call: upload + compute of a second image of the same subject.
    second = await analyse_haut_image_v1.fn(haut, alice.id, dataset.id, face_jpeg(2))
    assert fsm2_scores(await wait_for_haut_results_v1.fn(haut, second), face_jpeg(2)) == metric_scores(
        face_jpeg(2)
    )

    images = await list_haut_subject_images.fn(haut, alice.id)
    assert {i.id for i in images} == {record.id, second.image_id}
    (restored,) = await list_haut_aux_images.fn(haut, record.id, aux_image_type="restored")
    assert (await get_haut_image.fn(haut, record.id)).aux_images[0].id == restored.id

    # GDPR, then the deletes.
    await delete_haut_subject_photos.fn(haut, alice.id)
    assert (await get_haut_image.fn(haut, record.id)).urls["original"] is None  # the file is gone
    assert await get_haut_results_v1.fn(haut, analysis) == results  # the results stay
    cleared = await clear_haut_subject_metadata.fn(haut, alice.id)
    assert cleared.name == "" and cleared.meta is None
    await delete_haut_image.fn(haut, second.image_id)
    with pytest.raises(NotFoundError):
        await get_haut_image.fn(haut, second.image_id)
    await delete_haut_subject.fn(haut, dataset.id, bob.id)
    await delete_haut_subjects.fn(haut, dataset.id, [alice.id])
    assert await list_haut_subjects.fn(haut, dataset.id) == []

    got = svc.received()
    assert got["accepted"]["upload"] == 2 and got["accepted"]["compute"] == 2 and got["duplicates"] == {}
    assert "login" not in got["accepted"]  # a private token: never a login


async def test_the_v3_sequence_sides_upload_compute_results(svc):
    haut = creds(svc)
    dataset = await create_haut_dataset.fn(haut, "thin v3")
    await attach_haut_application.fn(haut, FS3, dataset.id, attach_dependencies=True)
    subject = await create_haut_subject.fn(haut, dataset.id, SubjectSpec(name="carol"))
    sides = {"front": face_jpeg(3), "left": face_jpeg(4)}

    upload = await request_haut_upload_v3.fn(haut, subject.id, {"front": "front.jpg", "left": "left.jpg"})
    for side, target in upload.targets().items():
        await upload_haut_image.fn(haut, target, sides[side])
    await compute_haut_batch_v3.fn(haut, upload.image_batch_id)
    results = await wait_for_haut_results_v3.fn(haut, upload.image_batch_id)
    assert results.all_algorithms_calculated
    expected = metric_scores(sides["front"])
    assert {V3_KEYS[f]: s for f, s in expected.items()} == {k: results.scores()[k] for k in V3_KEYS.values()}
    assert (await get_haut_results_v3.fn(haut, upload.image_batch_id)).scores() == results.scores()

    again = await analyse_haut_images_v3.fn(haut, subject.id, {"front": face_jpeg(5)})
    assert (await wait_for_haut_results_v3.fn(haut, again.batch_id)).all_algorithms_calculated
    assert svc.received()["accepted"]["compute"] == 2


async def test_private_tokens_create_list_revoke(svc):
    haut = creds(svc)
    token = await create_haut_private_token.fn(haut, "etl backend", "2099-01-01T00:00:00Z")
    value = token.data.get_secret_value()
    assert "etl backend" in [t.name for t in await list_haut_private_tokens.fn(haut)]
    assert (
        await list_haut_datasets.fn(creds(svc, private_token=SecretStr(value))) == []
    )  # the new token works
    await revoke_haut_private_token.fn(haut, token.id)
    with pytest.raises(AuthError) as refused:
        await list_haut_datasets.fn(creds(svc, private_token=SecretStr(value)))
    assert refused.value.status == 401 and value not in str(refused.value)


async def test_a_dataset_webhook_is_set_then_replaced(svc):
    haut = creds(svc)
    dataset = await create_haut_dataset.fn(haut, "hooked")
    options = {"authorization": "bearer", "authorization_key": "Authorization"}
    first = await set_haut_webhook.fn(
        haut, dataset.id, "https://example.org/a", authorization_value="hook-value-1", **options
    )
    second = await set_haut_webhook.fn(
        haut, dataset.id, "https://example.org/b", authorization_value="hook-value-2", **options
    )
    assert second.url == "https://example.org/b" and first.model_extra["id"] == second.model_extra["id"]
    assert "hook-value-2" not in repr(second)
    assert svc.received()["accepted"]["set_webhook"] == 2
