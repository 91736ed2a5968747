"""Image flows of the Haut.ai emulator: v1 signed upload URLs, v3 upload, the fake GCS, compute and results.

Image processing needs no background loop: ``compute`` stamps each image with the virtual times it starts
and finishes processing, and every read derives the state from the clock::

    created (upload URL issued) -> uploaded (PUT received) -> queued (compute) -> processing -> done | failed

An upload is checked once with Pillow (off the event loop) and hashed; every metric is a pure function of the
hash (``results.py``), so results are produced when read and the bytes themselves may be dropped (GDPR
delete, ``clean_images_as_soon_as_ready``, dataset image expiry, the ``max_stored_bytes`` cap).
"""

from __future__ import annotations

import asyncio
import heapq
import uuid
from collections.abc import Mapping
from typing import Any

from . import catalog
from .drf import MISSING, Validator, field_error, iso, not_found, plain_time
from .gcs import (
    LENGTH_RANGE,
    MAX_UPLOAD_BYTES,
    RESULTS_BUCKET,
    UPLOAD_BUCKET,
    UPLOAD_CONTENT_TYPE,
    UPLOAD_SIGNED_HEADERS,
    GcsError,
    no_such_key,
    parse_length_range,
    signature_mismatch,
)
from .models import DAY, Batch, Image, Subject, User
from .results import analyse_image, quality_score, v1_results, v3_parameters

IMAGE_STATES = ("created", "uploaded", "queued", "processing", "done", "failed")
V1_RESULT_APPS = (catalog.FSM2, catalog.RECOMMENDATION_ENGINE)  # apps whose results the v1 endpoint lists
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class ImagesMixin:
    """The image half of :class:`~emulators.haut.backend.HautBackend`.

    Mixed into the backend: uses its state (``datasets``, ``batches``, ``images``, ``blobs``, ``signer``…) and
    its scoped lookups (``_company``, ``_subject``, ``_batch``, ``_image``).
    """

    # --- state ----------------------------------------------------------------------------------------
    def image_state(self, image: Image) -> str:
        """Where ``image`` is in created -> uploaded -> queued -> processing -> done | failed, from the clock."""
        if image.uploaded_at is None:
            return "created"
        if image.queued_at is None:
            return "uploaded"
        now = self._now()
        if now < image.processing_at:  # type: ignore[operator]
            return "queued"
        if now < image.done_at:  # type: ignore[operator]
            return "processing"
        return "done" if image.analysis and image.analysis.ok else "failed"

    def _finished(self, image: Image) -> bool:
        return image.queued_at is not None and self._now() >= image.done_at  # type: ignore[operator]

    def _signed_get(self, image: Image, variant: str) -> str | None:
        if image.photo_deleted or image.object_key not in self.blobs:
            return None
        return self.signer.sign(
            "GET",
            RESULTS_BUCKET,
            f"{image.id}/{variant}",
            self._now(),
            int(self.config["result_url_seconds"]),
        )

    def _aux_images(self, image: Image) -> list[dict[str, Any]]:
        if self.image_state(image) != "done":
            return []
        app_tech = next((a for a in image.apps if a in (catalog.FSM2, catalog.FS3)), None)
        if app_tech is None:
            return []
        app = catalog.APPLICATIONS[app_tech]
        side = catalog.SIDES[image.side_id]["tech_name"]
        tech = f"selfie_{side}_face_restored_rgba"
        return [
            {
                "id": str(uuid.uuid5(uuid.UUID(image.id), tech)),
                "image_id": image.id,
                "aux_image_type": {"name": f"Restored {side} face (RGBA)", "tech_name": tech},
                "algo_app": {"id": app["id"], "name": app["name"], "tech_name": app_tech},
                "creation_time": iso(image.done_at),  # type: ignore[arg-type]
                "url": self._signed_get(image, "restored"),
            }
        ]

    def _image_view(self, image: Image) -> dict[str, Any]:
        ds = self.datasets[image.dataset_id]
        itype = catalog.IMAGE_TYPES[ds.image_type_id]
        side = catalog.SIDES[image.side_id]
        light = catalog.LIGHTS.get(image.light_id) if image.light_id is not None else None
        state = self.image_state(image)
        analysis = image.analysis if state in ("done", "failed") else None
        problems = [analysis.problem] if analysis and analysis.problem else []
        quality = quality_score(analysis.sha256) if analysis and analysis.ok else None
        return {
            "id": image.id,
            "name": image.name,
            "side": side,
            "light": light,
            "image_type": catalog.image_type_body(ds.image_type_id),
            "side_name": side["name"],
            "side_tech_name": side["tech_name"],
            "light_name": light["name"] if light else None,
            "light_tech_name": light["tech_name"] if light else None,
            "image_type_name": itype["name"],
            "image_type_tech_name": itype["tech_name"],
            "creation_time": iso(image.created_at),
            "quality_score": quality,
            "quality_feedback": (
                analysis.detail if analysis and not analysis.ok else "Good quality." if analysis else None
            ),
            "quality_result": ("bad" if problems else "good") if analysis else None,
            "quality_issues": problems,
            "problems": problems,
            "stage_number": IMAGE_STATES.index(state),
            "stage_step_number": IMAGE_STATES.index(state),
            "status": state,  # emulator addition: the state machine position, for debugging
            "urls": {"original": self._signed_get(image, "original")},
            "image_batch_id": image.batch_id,
            "batch_id": image.batch_id,
            "subject_id": image.subject_id,
            "dataset_id": image.dataset_id,
            "meta": image.meta,
            "app_args": image.app_args,
            "width": image.analysis.width if image.analysis else None,
            "height": image.analysis.height if image.analysis else None,
            "aux_images": self._aux_images(image),
        }

    def _drop_image(self, image: Image) -> None:
        self.blobs.delete(image.object_key)
        self.upload_keys.pop(image.object_key, None)
        batch = self.batches.get(image.batch_id)
        if batch is not None and image.id in batch.image_ids:
            batch.image_ids.remove(image.id)
        del self.images[image.id]

    # --- v1 upload flow -------------------------------------------------------------------------------
    def _new_batch(self, s: Subject, creation_time: str | None) -> Batch:
        batch = Batch(str(uuid.uuid4()), s.company_id, s.dataset_id, s.id, self._now(), creation_time)
        self.batches[batch.id] = batch
        s.batch_ids.append(batch.id)
        return batch

    def _new_image(
        self,
        s: Subject,
        batch: Batch,
        name: str,
        side_id: int,
        light_id: int | None,
        meta: Any,
        app_args: Any,
    ) -> Image:
        image_id = str(uuid.uuid4())
        key = f"{s.company_id}/{s.dataset_id}/{s.id}/{batch.id}/{image_id}"
        image = Image(
            image_id,
            self._next_seq(),
            s.company_id,
            s.dataset_id,
            s.id,
            batch.id,
            name,
            side_id,
            light_id,
            meta,
            app_args,
            self._now(),
            key,
        )
        self.images[image_id] = image
        self.upload_keys[key] = image_id
        batch.image_ids.append(image_id)
        return image

    def _upload_url(self, image: Image) -> str:
        return self.signer.sign(
            "PUT",
            UPLOAD_BUCKET,
            image.object_key,
            self._now(),
            int(self.config["upload_url_seconds"]),
            UPLOAD_SIGNED_HEADERS,
        )

    def signed_upload_url(self, user: User, company_id: str, subject_id: str, body: Any) -> dict[str, Any]:
        """``POST .../subjects/{id}/signed_upload_url/``: a new image record and where to PUT its bytes."""
        s = self._subject(self._company(user, company_id), subject_id)
        ds = self.datasets[s.dataset_id]
        itype = catalog.IMAGE_TYPES[ds.image_type_id]
        v = Validator(body if body is not None else {})
        batch_id = v.uuid("batch_id", allow_null=True)
        batch = None
        if batch_id not in (MISSING, None):
            batch = self.batches.get(batch_id)
            if batch is None or batch.subject_id != s.id:
                batch = v.fail(
                    "batch_id", "does_not_exist", f'Invalid pk "{batch_id}" - object does not exist.'
                )
        side_id = v.integer("side_id", default=itype["default_side_id"])
        if side_id is not MISSING and side_id not in {side["id"] for side in itype["sides"]}:
            v.fail("side_id", "does_not_exist", f'Invalid pk "{side_id}" - object does not exist.')
        light_id = v.integer("light_id", allow_null=True, default=1)
        if light_id not in (MISSING, None) and light_id not in {li["id"] for li in itype["lights"]}:
            v.fail("light_id", "does_not_exist", f'Invalid pk "{light_id}" - object does not exist.')
        name = v.string("name", max_length=255, default=None)
        creation_time = v.string("creation_time", allow_null=True, default=None)
        meta = v.anything("meta", default=None)
        app_args = v.anything("app_args", default=None)
        v.check()
        if batch is None:
            batch = self._new_batch(s, creation_time)
        side_tech = catalog.SIDES[side_id]["tech_name"]
        image = self._new_image(
            s,
            batch,
            name or f"{side_tech}.jpg",
            side_id,
            light_id,
            meta if meta is not None else {},
            app_args,
        )
        self.received.accepted(
            "signed_upload_url",
            {"image_id": image.id, "batch_id": batch.id, "side_id": side_id},
            dedup_key=(batch.id, side_id, light_id),
        )
        return {
            **self._image_view(image),
            "image_batch_id": batch.id,
            "upload_url": {
                "url": self._upload_url(image),
                "method": "PUT",
                "headers": {"Content-Type": UPLOAD_CONTENT_TYPE, "X-Goog-Content-Length-Range": LENGTH_RANGE},
            },
        }

    def compute(self, user: User, company_id: str, batch_id: str, body: Any, v3: bool = False) -> None:
        """Queue a batch's uploaded images (v1 and v3 ``compute/``). Re-computing is accepted and changes nothing.

        ASSUMED rejections (400 validation_error): an image of the batch not uploaded yet
        (``images_not_uploaded``), no application on the dataset (``no_applications``), v3 without FSA 3.0
        (``application_not_connected``).
        """
        cid = self._company(user, company_id)
        batch = self._batch(cid, batch_id)
        if body is not None and not isinstance(body, dict):
            Validator(body)  # raises the DRF "Expected a dictionary" error
        ds = self.datasets[batch.dataset_id]
        images = [self.images[i] for i in batch.image_ids]
        pending = [i.id for i in images if i.uploaded_at is None]
        if not images or pending:
            raise field_error(
                None,
                "images_not_uploaded",
                "Upload the batch's images before computing: "
                f"{len(pending) if images else 'no'} image(s) have not been uploaded.",
                {"image_ids": pending},
            )
        if not ds.apps:
            raise field_error(
                None,
                "no_applications",
                "No application is connected to this dataset: attach one before computing.",
                {"dataset_id": ds.id},
            )
        if v3 and catalog.FS3 not in ds.apps:
            raise field_error(
                None,
                "application_not_connected",
                "Face Skin Analysis 3.0 is not connected to this dataset.",
                {"missing_application_tech_names": [catalog.FS3]},
            )
        now = self._now()
        queued = 0
        for image in images:
            if image.queued_at is not None:
                continue
            image.queued_at = now
            image.processing_at = now + self._cfg("queue_seconds")
            image.done_at = image.processing_at + self._cfg("processing_seconds")
            image.apps = tuple(ds.apps)
            image.enabled_algorithms = {t: tuple(a["enabled_algorithms"]) for t, a in ds.apps.items()}
            image.run_ids = {tech: str(uuid.uuid4()) for tech in image.apps}
            if ds.clean_images_as_soon_as_ready:
                heapq.heappush(self._due, (image.done_at, self._next_seq(), image.id, "clean"))
            queued += 1
        batch.computed_at = batch.computed_at or now
        self.counters["computes"] += 1
        self.received.accepted(
            "compute",
            {"batch_id": batch.id, "queued": queued, "api": "v3" if v3 else "v1"},
            dedup_key=batch.id,
        )

    # --- fake GCS -------------------------------------------------------------------------------------
    def check_upload(
        self,
        bucket: str,
        key: str,
        query: Mapping[str, str],
        content_type: str | None,
        length_range: str | None,
    ) -> tuple[int, int]:
        """Everything GCS checks before reading the body; returns the allowed (min, max) length."""
        self._sweep()
        if bucket != UPLOAD_BUCKET:
            raise GcsError(404, "NoSuchBucket", "The specified bucket does not exist.")
        signed = self.signer.verify("PUT", bucket, key, query, self._now()).split(";")
        if "content-type" in signed and (content_type or "").strip().lower() != UPLOAD_CONTENT_TYPE:
            raise signature_mismatch(
                f"Content-Type was signed as {UPLOAD_CONTENT_TYPE!r}; the request sent {content_type!r}."
            )
        compact = (length_range or "").replace(" ", "")
        if "x-goog-content-length-range" in signed and compact != LENGTH_RANGE:
            raise signature_mismatch(
                f"X-Goog-Content-Length-Range was signed as {LENGTH_RANGE!r}; the request "
                f"sent {length_range!r}."
            )
        return parse_length_range(compact) or (1, MAX_UPLOAD_BYTES)

    async def put_object(self, key: str, data: bytes) -> dict[str, str]:
        """Store an uploaded file (after :meth:`check_upload`); returns GCS response headers."""
        analysis = await asyncio.to_thread(analyse_image, data)
        headers = {
            "ETag": f'"{analysis.md5_b64}"',
            "x-goog-hash": f"md5={analysis.md5_b64}",
            "x-goog-generation": str(int(self._now() * 1_000_000)),
            "x-goog-stored-content-length": str(len(data)),
        }
        image = self.images.get(self.upload_keys.get(key, ""))
        if image is None:  # image or subject deleted meanwhile: GCS still takes the object; nothing uses it
            self.received.accepted("upload_orphaned", {"key": key, "bytes": len(data)})
            return headers
        if image.queued_at is None:  # after compute the results stay those of the computed file
            image.analysis = analysis
        first = image.uploaded_at is None
        image.uploaded_at = image.uploaded_at or self._now()
        if not image.photo_deleted:
            self.blobs.put(image.object_key, data)
        ds = self.datasets[image.dataset_id]
        if first and ds.expire_images_after_days:
            heapq.heappush(
                self._due,
                (
                    image.uploaded_at + ds.expire_images_after_days * DAY,
                    self._next_seq(),
                    image.id,
                    "expired",
                ),
            )
        self.counters["uploads"] += 1
        self.received.accepted(
            "upload",
            {"image_id": image.id, "bytes": len(data), "sha256": analysis.sha256},
            dedup_key=image.id,
        )
        return headers

    def get_object(self, bucket: str, key: str, query: Mapping[str, str]) -> tuple[bytes, str]:
        """A result file behind a signed GET URL (original or restored image).

        A GET on an upload URL fails like on GCS: the signature was made for PUT (403).
        """
        self._sweep()
        if bucket not in (UPLOAD_BUCKET, RESULTS_BUCKET):
            raise GcsError(404, "NoSuchBucket", "The specified bucket does not exist.")
        self.signer.verify("GET", bucket, key, query, self._now())
        image_id, _, _variant = key.partition("/")
        image = self.images.get(image_id) if bucket == RESULTS_BUCKET else None
        data = self.blobs.get(image.object_key) if image is not None and not image.photo_deleted else None
        if data is None:
            raise no_such_key()
        self.counters["result_files_served"] += 1
        fmt = image.analysis.format if image.analysis else None
        return data, CONTENT_TYPES.get(fmt or "", "application/octet-stream")

    # --- reading --------------------------------------------------------------------------------------
    def list_subject_images(
        self, user: User, company_id: str, subject_id: str, query: Mapping[str, str], url: str
    ) -> dict[str, Any]:
        s = self._subject(self._company(user, company_id), subject_id)
        return self._page(
            self._subject_images(s),
            query,
            url,
            self._image_view,
            lambda i: i.name,
            {
                "id": lambda i: i.seq,
                "name": lambda i: i.name,
                "creation_time": lambda i: (i.created_at, i.seq),
            },
            "id",
        )

    def get_image(self, user: User, company_id: str, image_id: str) -> dict[str, Any]:
        return self._image_view(self._image(self._company(user, company_id), image_id))

    def delete_image(self, user: User, company_id: str, image_id: str) -> None:
        image = self._image(self._company(user, company_id), image_id)
        self._drop_image(image)
        self.received.accepted("delete_image", {"id": image.id})

    def list_aux_images(
        self, user: User, company_id: str, image_id: str, query: Mapping[str, str], url: str
    ) -> dict[str, Any]:
        image = self._image(self._company(user, company_id), image_id)
        app_filter = (query.get("algo_app") or "").lower()
        type_filter = (query.get("aux_image_type") or "").lower()
        aux = [
            a
            for a in self._aux_images(image)
            if app_filter in a["algo_app"]["name"].lower() and type_filter in a["aux_image_type"]["tech_name"]
        ]
        return self._page(
            aux,
            {k: v for k, v in query.items() if k != "q"},
            url,
            lambda a: a,
            lambda a: "",
            {"creation_time": lambda a: a["creation_time"]},
            "creation_time",
        )

    def image_results(
        self,
        user: User,
        company_id: str,
        dataset_id: str,
        subject_id: str,
        batch_id: str,
        image_id: str,
        query: Mapping[str, str],
    ) -> list[dict[str, Any]]:
        """v1 per-image algorithm results: ``[]`` until processing has finished (ASSUMED), then one entry per
        algorithm of each connected FSM 2.0 / Recommendation Engine application."""
        cid = self._company(user, company_id)
        ds = self._dataset(cid, dataset_id)
        s = self._subject(cid, subject_id, ds.id)
        batch = self._batch(cid, batch_id)
        image = self._image(cid, image_id)
        if batch.subject_id != s.id or image.batch_id != batch.id:
            raise not_found()
        if not self._finished(image) or image.analysis is None:
            return []
        created = plain_time(image.done_at)  # type: ignore[arg-type]
        out: list[dict[str, Any]] = []
        for tech in image.apps:
            if tech in V1_RESULT_APPS:
                results = v1_results(
                    image.analysis,
                    image.id,
                    catalog.APPLICATIONS[tech],
                    image.run_ids[tech],
                    created,
                    catalog.IMAGE_TYPES[ds.image_type_id]["tech_name"],
                )
                enabled = image.enabled_algorithms[tech]
                out += [r for r in results if r["algorithm_family_tech_name"] in enabled]
        for param, key in (
            ("application_name", "application_name"),
            ("application_id", "application_id"),
            ("application_run_id", "application_run_id"),
        ):
            wanted = query.get(param)
            if wanted:
                out = [r for r in out if str(r[key]).lower() == wanted.lower()]
        if out:
            self.counters["results_served"] += 1
        return out

    # --- v3 flow --------------------------------------------------------------------------------------
    def v3_upload(self, user: User, company_id: str, subject_id: str, body: Any) -> dict[str, Any]:
        """``POST /api/v3/.../subjects/{id}/upload/``: one new batch, one upload URL per requested side."""
        s = self._subject(self._company(user, company_id), subject_id)
        v = Validator(body if body is not None else {})
        names = {
            side: v.string(side, max_length=255, allow_null=True, default=None)
            for side in ("front", "left", "right")
        }
        meta = v.anything("meta", default=None)
        creation_time = v.string("creation_time", allow_null=True, default=None)
        v.check()
        sides = {side: name for side, name in names.items() if name}
        if not sides:
            raise field_error(
                "non_field_errors", "invalid", "At least one of front, left, right is required."
            )
        batch = self._new_batch(s, creation_time)
        host = self.base_url.split("://", 1)[-1]
        out: dict[str, Any] = {}
        for side, name in sides.items():
            image = self._new_image(
                s, batch, name, catalog.SIDE_IDS_BY_TECH[side], 1, meta if meta is not None else {}, None
            )
            out[side] = {
                "url": self._upload_url(image),
                "method": "PUT",
                "headers": {
                    "Content-Type": UPLOAD_CONTENT_TYPE,
                    "X-Goog-Content-Length-Range": LENGTH_RANGE,
                    "Host": host,
                },
                "content_type": UPLOAD_CONTENT_TYPE,
                "id": image.id,
            }
        out["image_batch_id"] = batch.id
        self.received.accepted(
            "v3_upload",
            {"subject_id": s.id, "batch_id": batch.id, "sides": list(sides)},
            dedup_key=(s.id, tuple(sorted(sides.items()))),
        )
        return out

    def v3_results(self, user: User, company_id: str, batch_id: str) -> dict[str, Any]:
        """``{"face_skin_metrics_3": {...}}`` for a batch; ``all_algorithms_calculated`` flips when done.

        ``{}`` when FSA 3.0 is not connected to the dataset. A failed image (too small, undecodable) still
        completes: parameters stay empty and ``problems`` names the issue per side (ASSUMED).
        """
        batch = self._batch(self._company(user, company_id), batch_id)
        ds = self.datasets[batch.dataset_id]
        if catalog.FS3 not in ds.apps:
            return {}
        images = [self.images[i] for i in batch.image_ids]
        computed = [i for i in images if catalog.FS3 in i.apps]
        done = bool(computed) and len(computed) == len(images) and all(self._finished(i) for i in images)
        by_side = {catalog.SIDES[i.side_id]["tech_name"]: i for i in images}
        parameters: dict[str, Any] = {}
        problems: dict[str, list[str]] = {}
        predicted: dict[str, Any] = {}
        if done:
            for side, image in by_side.items():
                assert image.analysis is not None
                if not image.analysis.ok:
                    problems[side] = [image.analysis.problem or "unknown"]
                    continue
                url = self._signed_get(image, "original")
                if url:
                    predicted[side] = {"original": url}
            main = by_side.get("front") or next(iter(by_side.values()))
            if main.analysis and main.analysis.ok:
                parameters = v3_parameters(main.analysis.sha256)
            self.counters["results_served"] += 1
        body: dict[str, Any] = {
            "image_batch_id": batch.id,
            "subject_id": batch.subject_id,
            "parameters": parameters,
            "survey_results": [],
            "all_algorithms_calculated": done,
            "sc_app_id": None,
            "can_watch_predicted_images": bool(predicted),
            "predicted_images": predicted,
        }
        if problems:
            body["problems"] = problems
        return {"face_skin_metrics_3": body}
