"""Haut.ai SaaS backend: accounts and tokens, datasets and applications, subjects (images: ``images.py``).

Facts from docs/service-api-facts.md §4 (documented/inferred); the choices marked "our choice" there are followed
exactly. Time comes only from ``self.clock`` (virtual seconds).
"""

from __future__ import annotations

import heapq
import re
import secrets
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

from ..common import EmulatorBackend
from . import catalog
from .drf import (
    MISSING,
    Validator,
    authentication_failed,
    error_item,
    field_error,
    iso,
    not_authenticated,
    not_found,
    paginate,
    parse_datetime,
    permission_denied,
    search_and_order,
    throttled,
    validation_error,
)
from .gcs import BlobStore, UrlSigner
from .images import IMAGE_STATES, ImagesMixin
from .models import DAY, Batch, Dataset, Image, PrivateToken, Subject, Token, User, uuid_or_none

TECH_NAME_RE = re.compile(r"^[\w.]+$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TERMS_ACCEPTED_AT = 1_672_531_200.0  # 2023-01-01: when the demo users "accepted the terms"


class HautBackend(ImagesMixin, EmulatorBackend):
    """State of the emulated Haut.ai SaaS API (see module docstring)."""

    service = "haut"

    def reset(self) -> None:
        super().reset()
        cfg = self.config
        self.signer = UrlSigner(str(cfg["signing_secret"]), self.base_url)
        self.blobs = BlobStore(int(cfg["max_stored_bytes"]))
        self.companies = {str(uuid.UUID(c["id"])): c["name"] for c in cfg["companies"]}
        self.users: dict[int, User] = {}
        self.users_by_email: dict[str, User] = {}
        for u in cfg["users"]:
            user = User(
                int(u["id"]),
                u["email"],
                u["password"],
                u.get("full_name", ""),
                [str(uuid.UUID(c)) for c in u["company_ids"]],
                bool(u.get("mfa_enabled", False)),
                bool(u.get("is_active", True)),
                bool(u.get("is_verified", True)),
            )
            unknown = set(user.company_ids) - set(self.companies)
            if unknown:
                raise ValueError(f"haut user {user.email!r}: unknown company id(s) {sorted(unknown)}")
            self.users[user.id] = user
            self.users_by_email[user.email.lower()] = user
        self.tokens: dict[str, Token] = {}
        self.private_tokens: dict[int, PrivateToken] = {}
        for t in cfg["private_tokens"]:
            expires = parse_datetime(t["expiration_time"])
            if expires is None or int(t["user_id"]) not in self.users:
                raise ValueError(f"haut private token {t.get('name')!r}: bad expiration_time or user_id")
            self._add_private_token(
                PrivateToken(int(t["id"]), int(t["user_id"]), t["name"], expires, t["token"])
            )
        self.login_attempts: dict[str, deque[float]] = {}
        self.datasets: dict[str, Dataset] = {}
        self.subjects: dict[str, Subject] = {}
        self.batches: dict[str, Batch] = {}
        self.images: dict[str, Image] = {}
        self.upload_keys: dict[str, str] = {}  # GCS object key -> image id
        self.webhooks: dict[str, dict[str, Any]] = {}  # dataset id -> destination
        self.counters: Counter[str] = Counter()
        self._due: list[tuple[float, int, str, str]] = []  # (when, seq, image id, reason) bytes to drop
        self._seq = 0

    # --- helpers ----------------------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _now(self) -> float:
        return self.clock.now()

    def _cfg(self, key: str) -> float:
        return float(self.config[key])

    def _page(
        self,
        items: list[Any],
        query: Mapping[str, str],
        url: str,
        serialize: Callable[[Any], Any],
        search: Callable[[Any], str],
        fields: Mapping[str, Callable[[Any], Any]],
        default: str,
    ) -> dict:
        items = search_and_order(items, query, search, fields, default)
        return paginate(
            items, query, url, serialize, int(self.config["page_size"]), int(self.config["max_page_size"])
        )

    def _sweep(self) -> None:
        """Drop image bytes whose time has come (clean-as-soon-as-ready, dataset image expiry). O(1) when idle."""
        now = self._now()
        while self._due and self._due[0][0] <= now:
            _, _, image_id, reason = heapq.heappop(self._due)
            image = self.images.get(image_id)
            if image is not None and self.blobs.delete(image.object_key):
                self.counters[f"bytes_dropped_{reason}"] += 1

    # --- auth -------------------------------------------------------------------------------------------------
    def _add_private_token(self, pt: PrivateToken) -> None:
        self.private_tokens[pt.id] = pt
        self.tokens[pt.token] = Token("private", pt.user_id, pt.expires_at, pt.id)

    def authenticate(self, authorization: str | None, authentication: str | None = None) -> User:
        """The user behind ``Authorization: Bearer <token>`` (or the doc's ``Authentication:`` spelling)."""
        self._sweep()
        header = authorization or authentication
        if not header:
            raise not_authenticated()
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise authentication_failed("Invalid token header. Use 'Authorization: Bearer <token>'.")
        token = self.tokens.get(value.strip())
        if token is None or token.kind == "refresh":
            raise authentication_failed("Invalid token.")
        if self._now() >= token.expires_at:
            raise authentication_failed("Token has expired.")
        return self.users[token.user_id]

    def _check_login_rate(self, key: str) -> None:
        limit = int(self.config["login_rate_limit_per_minute"])
        if limit <= 0:
            return
        now = self._now()
        if len(self.login_attempts) > 10_000:  # forget idle usernames so the map stays small
            self.login_attempts = {k: w for k, w in self.login_attempts.items() if w and w[-1] > now - 60}
        window = self.login_attempts.setdefault(key, deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= limit:
            raise throttled(self.clock, window[0] + 60 - now)
        window.append(now)

    def _issue_tokens(self, user: User, refresh_token: str | None = None) -> dict[str, Any]:
        now = self._now()
        if len(self.tokens) > 50_000:  # keep memory bounded under login storms
            self.tokens = {k: t for k, t in self.tokens.items() if t.expires_at > now}
        access = "haut-at-" + secrets.token_urlsafe(32)
        self.tokens[access] = Token("access", user.id, now + self._cfg("access_token_seconds"))
        if refresh_token is None:
            refresh_token = "haut-rt-" + secrets.token_urlsafe(32)
            self.tokens[refresh_token] = Token("refresh", user.id, now + self._cfg("refresh_token_seconds"))
        return {
            "id": user.id,
            "email": user.email,
            "username": user.email,
            "company_id": user.company_ids[0] if user.company_ids else None,
            "token_access": access,
            "access_token": access,
            "refresh_token": refresh_token,
            "is_verified": user.is_verified,
            "profile": {
                "metadata": {},
                "full_name": user.full_name,
                "kyc_enabled": False,
                "terms_payment_accepted_at": None,
                "terms_and_policy_accepted_at": iso(TERMS_ACCEPTED_AT),
                "feature_flags": {},
            },
        }

    def login(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/auth/login/``: 400 bad body or MFA user, 401 bad credentials, 403 disabled, 429 too often."""
        v = Validator(body)
        username = v.string("username", required=True)
        if username is not MISSING and not EMAIL_RE.match(username):
            username = v.fail("username", "invalid", "Enter a valid email address.")
        password = v.string("password", required=True)
        v.check()
        self._check_login_rate(username.lower())
        user = self.users_by_email.get(username.lower())
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            raise authentication_failed("Incorrect authentication credentials.")
        if not user.is_active:
            raise permission_denied("User account is disabled.")
        if user.mfa_enabled:
            raise field_error(
                None,
                "mfa_enabled",
                "Multi-factor authentication is enabled for this user: "
                "the API login cannot be used. Use a private token instead.",
            )
        self.counters["logins"] += 1
        self.received.accepted("login", {"username": user.email})
        return self._issue_tokens(user)

    def refresh(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/auth/refresh/`` with ``{"refresh_token"}`` (ASSUMED): a new access token."""
        v = Validator(body)
        refresh_token = v.string("refresh_token", required=True)
        v.check()
        token = self.tokens.get(refresh_token)
        if token is None or token.kind != "refresh" or self._now() >= token.expires_at:
            raise authentication_failed("Token is invalid or expired.")
        self.received.accepted("refresh", {"user_id": token.user_id})
        return self._issue_tokens(self.users[token.user_id], refresh_token)

    def create_private_token(self, user: User, body: Any) -> dict[str, Any]:
        v = Validator(body)
        name = v.string("name", required=True, max_length=255)
        expires = v.datetime("expiration_time", required=True)
        if expires is not MISSING and expires <= self._now():
            v.fail("expiration_time", "invalid", "Expiration time must be in the future.")
        v.check()
        pt = PrivateToken(
            max(self.private_tokens, default=0) + 1,
            user.id,
            name,
            expires,
            "haut-pt-" + secrets.token_urlsafe(32),
        )
        self._add_private_token(pt)
        self.received.accepted("create_private_token", {"id": pt.id, "name": name})
        return {**self._private_token_view(pt), "data": pt.token}

    def _private_token_view(self, pt: PrivateToken) -> dict[str, Any]:
        return {"id": pt.id, "name": pt.name, "expiration_time": iso(pt.expires_at)}

    def list_private_tokens(self, user: User, query: Mapping[str, str], url: str) -> dict[str, Any]:
        mine = [pt for pt in self.private_tokens.values() if pt.user_id == user.id]
        return self._page(
            mine,
            query,
            url,
            self._private_token_view,
            lambda pt: pt.name,
            {"id": lambda pt: pt.id, "name": lambda pt: pt.name, "expiration_time": lambda pt: pt.expires_at},
            "id",
        )

    def revoke_private_token(self, user: User, token_id: str) -> None:
        pt = self.private_tokens.get(int(token_id)) if token_id.isdigit() else None
        if pt is None or pt.user_id != user.id:
            raise not_found()
        del self.private_tokens[pt.id]
        self.tokens.pop(pt.token, None)
        self.received.accepted("revoke_private_token", {"id": pt.id})

    # --- scoping ----------------------------------------------------------------------------------------------
    def _company(self, user: User, company_id: str) -> str:
        """403 for a company the user does not belong to (ours: existence is not revealed); 404 for a non-UUID."""
        cid = uuid_or_none(company_id)
        if cid is None:
            raise not_found()
        if cid not in user.company_ids:
            raise permission_denied()
        return cid

    def _dataset(self, cid: str, dataset_id: str) -> Dataset:
        ds = self.datasets.get(uuid_or_none(dataset_id) or "")
        if ds is None or ds.company_id != cid:
            raise not_found()
        return ds

    def _subject(self, cid: str, subject_id: str, dataset_id: str | None = None) -> Subject:
        subject = self.subjects.get(uuid_or_none(subject_id) or "")
        if (
            subject is None
            or subject.company_id != cid
            or (dataset_id is not None and subject.dataset_id != dataset_id)
        ):
            raise not_found()
        return subject

    def _batch(self, cid: str, batch_id: str) -> Batch:
        batch = self.batches.get(uuid_or_none(batch_id) or "")
        if batch is None or batch.company_id != cid:
            raise not_found()
        return batch

    def _image(self, cid: str, image_id: str) -> Image:
        image = self.images.get(uuid_or_none(image_id) or "")
        if image is None or image.company_id != cid:
            raise not_found()
        return image

    # --- dictionaries -----------------------------------------------------------------------------------------
    def image_types(self) -> list[dict[str, Any]]:
        return [catalog.image_type_body(i) for i in catalog.IMAGE_TYPES]

    # --- datasets & applications ------------------------------------------------------------------------------
    def _dataset_view(self, ds: Dataset) -> dict[str, Any]:
        itype = catalog.IMAGE_TYPES[ds.image_type_id]
        apps = []
        for tech, attached in ds.apps.items():
            app = catalog.APPLICATIONS[tech]
            apps.append(
                {
                    "id": app["id"],
                    "name": app["name"],
                    "tech_name": tech,
                    "enabled_algorithms": attached["enabled_algorithms"],
                    "algorithms_flags": attached["algorithms_flags"],
                    "attached_at": iso(attached["at"]),
                }
            )
        return {
            "id": ds.id,
            "company_id": ds.company_id,
            "name": ds.name,
            "image_type": catalog.image_type_body(ds.image_type_id),
            "image_type_id": ds.image_type_id,
            "image_type_name": itype["name"],
            "image_type_tech_name": itype["tech_name"],
            "connected_applications": apps,
            "expire_images_after_days": ds.expire_images_after_days,
            "expire_metadata_after_days": ds.expire_metadata_after_days,
            "clean_images_as_soon_as_ready": ds.clean_images_as_soon_as_ready,
            "custom_branding": ds.custom_branding,
            "author_id": ds.author_id,
            "creation_time": iso(ds.created_at),
        }

    def create_dataset(self, user: User, company_id: str, body: Any) -> dict[str, Any]:
        cid = self._company(user, company_id)
        v = Validator(body)
        name = v.string("name", required=True, max_length=512)
        type_id = v.integer("image_type_id", allow_null=True, default=None)
        if type_id not in (MISSING, None) and type_id not in catalog.IMAGE_TYPES:
            v.fail("image_type_id", "does_not_exist", f'Invalid pk "{type_id}" - object does not exist.')
        expiry = {
            k: v.integer(k, allow_null=True, default=None, min_value=1, max_value=365)
            for k in ("expire_images_after_days", "expire_metadata_after_days")
        }
        clean = v.boolean("clean_images_as_soon_as_ready", default=False)
        branding = v.integer("custom_branding", allow_null=True, default=None)
        v.check()
        ds = Dataset(
            str(uuid.uuid4()),
            self._next_seq(),
            cid,
            name,
            type_id if type_id is not None else catalog.DEFAULT_IMAGE_TYPE_ID,
            expiry["expire_images_after_days"],
            expiry["expire_metadata_after_days"],
            clean,
            branding,
            user.id,
            self._now(),
        )
        self.datasets[ds.id] = ds
        self.received.accepted("create_dataset", {"id": ds.id, "name": name}, dedup_key=(cid, name))
        return self._dataset_view(ds)

    def list_datasets(
        self, user: User, company_id: str, query: Mapping[str, str], url: str
    ) -> dict[str, Any]:
        cid = self._company(user, company_id)
        items = [d for d in self.datasets.values() if d.company_id == cid]
        return self._page(
            items,
            query,
            url,
            self._dataset_view,
            lambda d: d.name,
            {
                "id": lambda d: d.seq,
                "name": lambda d: d.name,
                "creation_time": lambda d: (d.created_at, d.seq),
            },
            "id",
        )

    def get_dataset(self, user: User, company_id: str, dataset_id: str) -> dict[str, Any]:
        return self._dataset_view(self._dataset(self._company(user, company_id), dataset_id))

    def list_applications(self, user: User, company_id: str, query: Mapping[str, str], url: str) -> dict:
        self._company(user, company_id)
        created = iso(TERMS_ACCEPTED_AT)
        return self._page(
            list(catalog.APPLICATIONS.values()),
            query,
            url,
            lambda a: catalog.application_body(a, created),
            lambda a: f"{a['name']} {a['tech_name']}",
            {"id": lambda a: a["id"], "name": lambda a: a["name"], "tech_name": lambda a: a["tech_name"]},
            "id",
        )

    def attach_application(
        self, user: User, company_id: str, tech_name: str, body: Any, attach_dependencies: bool
    ) -> dict[str, Any]:
        """Connect an application to a dataset; its required applications must be connected first (DOC)."""
        cid = self._company(user, company_id)
        app = catalog.APPLICATIONS.get(tech_name) if TECH_NAME_RE.match(tech_name) else None
        if app is None:
            raise not_found()
        v = Validator(body)
        dataset_id = v.uuid("dataset_id", required=True)
        ds = None
        if dataset_id is not MISSING:
            ds = self.datasets.get(dataset_id)
            if ds is None or ds.company_id != cid:
                ds = v.fail(
                    "dataset_id", "does_not_exist", f'Invalid pk "{dataset_id}" - object does not exist.'
                )
        known = [a["tech_name"] for a in app["algorithms_versions"]]
        enabled = v.anything("enabled_algorithms", default=None)
        if enabled is not None and (
            not isinstance(enabled, list) or not all(isinstance(a, str) for a in enabled)
        ):
            kind = type(enabled).__name__
            v.fail("enabled_algorithms", "not_a_list", f'Expected a list of items but got type "{kind}".')
        elif enabled is not None:
            for algo in enabled:
                if algo not in known:
                    v.fail("enabled_algorithms", "invalid_choice", f'"{algo}" is not a valid choice.')
        flags = v.anything("algorithms_flags", default=None)
        v.check()
        assert isinstance(ds, Dataset)
        if ds.image_type_id != app["image_type_id"]:
            raise field_error(
                "dataset_id",
                "invalid_image_type",
                f"Application {tech_name} needs image type "
                f"{catalog.IMAGE_TYPES[app['image_type_id']]['tech_name']}.",
            )
        missing = self._missing_dependencies(ds, tech_name)
        if missing and not attach_dependencies:
            raise validation_error(
                [
                    error_item(
                        "missing_dependencies",
                        "Missing dependencies.",
                        None,
                        {"missing_application_tech_names": missing, "missing_algorithms": []},
                    )
                ]
            )
        now = self._now()
        for dep in missing:
            deps_algos = [a["tech_name"] for a in catalog.APPLICATIONS[dep]["algorithms_versions"]]
            ds.apps[dep] = {"enabled_algorithms": deps_algos, "algorithms_flags": {}, "at": now}
        ds.apps[tech_name] = {
            "enabled_algorithms": enabled or known,
            "algorithms_flags": flags or {},
            "at": now,
        }
        self.received.accepted(
            "attach_application",
            {"dataset_id": ds.id, "tech_name": tech_name, "attached_dependencies": missing},
            dedup_key=(ds.id, tech_name),
        )
        return self._dataset_view(ds)

    def _missing_dependencies(self, ds: Dataset, tech_name: str) -> list[str]:
        """Required applications not yet connected, dependencies of dependencies first."""
        out: list[str] = []
        for dep in catalog.APPLICATIONS[tech_name]["dependencies"]:
            for sub in [*self._missing_dependencies(ds, dep), dep]:
                if sub not in ds.apps and sub not in out:
                    out.append(sub)
        return out

    def set_webhook(self, user: User, company_id: str, dataset_id: str, body: Any) -> dict[str, Any]:
        """One destination per dataset; POSTing again replaces it (DOC). Deliveries are not emulated."""
        ds = self._dataset(self._company(user, company_id), dataset_id)
        v = Validator(body)
        values = {
            "url": v.url("url", required=True),
            "authorization": v.choice("authorization", ("query", "basic", "bearer"), required=True),
            "authorization_key": v.string("authorization_key", required=True, max_length=128),
            "authorization_value": v.string("authorization_value", required=True, max_length=128),
            "method": v.choice("method", ("post", "get"), required=True),
            "enabled": v.boolean("enabled", default=True),
            "add_survey_answers": v.boolean("add_survey_answers", default=False),
            "merge_webhooks": v.boolean("merge_webhooks", default=False),
        }
        v.check()
        old = self.webhooks.get(ds.id)
        hook = {
            "id": old["id"] if old else str(uuid.uuid4()),
            "dataset_id": ds.id,
            **values,
            "secret_key": old["secret_key"] if old else secrets.token_hex(32),
        }
        self.webhooks[ds.id] = hook
        self.received.accepted("set_webhook", {"dataset_id": ds.id, "url": values["url"]})
        return dict(hook)

    # --- subjects ---------------------------------------------------------------------------------------------
    def _subject_view(self, s: Subject) -> dict[str, Any]:
        ds = self.datasets[s.dataset_id]
        if (
            ds.expire_metadata_after_days
            and self._now() >= s.created_at + ds.expire_metadata_after_days * DAY
        ):
            self._clear_subject(s)
        return {
            "id": s.id,
            "name": s.name,
            "birth_date": s.birth_date,
            "biological_sex": s.biological_sex,
            "meta": s.meta,
            "author_id": s.author_id,
            "creation_time": iso(s.created_at),
            "company": {"id": s.company_id, "name": self.companies[s.company_id]},
            "dataset": {"id": ds.id, "name": ds.name},
            "promote_image_id": None,
        }

    @staticmethod
    def _clear_subject(s: Subject) -> None:
        s.name, s.birth_date, s.biological_sex, s.meta = "", None, None, None

    def _subject_fields(self, body: Any, partial: bool) -> dict[str, Any]:
        v = Validator(body, partial=partial)
        values = {"name": v.string("name", required=True, max_length=512), "birth_date": v.date("birth_date")}
        sex = v.anything("biological_sex", default=None)
        if sex is not MISSING and sex is not None:
            found = catalog.biological_sex(sex)
            sex = (
                found
                if found
                else v.fail(
                    "biological_sex", "does_not_exist", f'Invalid pk "{sex}" - object does not exist.'
                )
            )
        values["biological_sex"] = sex
        values["meta"] = v.anything("meta", default=None)
        v.check()
        return {k: val for k, val in values.items() if val is not MISSING}

    def create_subject(self, user: User, company_id: str, dataset_id: str, body: Any) -> dict[str, Any]:
        ds = self._dataset(self._company(user, company_id), dataset_id)
        values = self._subject_fields(body, partial=False)
        s = Subject(
            str(uuid.uuid4()),
            self._next_seq(),
            ds.company_id,
            ds.id,
            values["name"],
            values.get("birth_date"),
            values.get("biological_sex"),
            values.get("meta"),
            user.id,
            self._now(),
        )
        self.subjects[s.id] = s
        ds.subject_ids[s.id] = None
        # Names need not be unique (DOC) but a repeat usually means a retried create: count it as a duplicate.
        self.received.accepted(
            "create_subject", {"id": s.id, "dataset_id": ds.id, "name": s.name}, dedup_key=(ds.id, s.name)
        )
        return self._subject_view(s)

    def list_subjects(
        self, user: User, company_id: str, dataset_id: str, query: Mapping[str, str], url: str
    ) -> dict[str, Any]:
        ds = self._dataset(self._company(user, company_id), dataset_id)
        items = [self.subjects[sid] for sid in ds.subject_ids]
        return self._page(
            items,
            query,
            url,
            self._subject_view,
            lambda s: s.name,
            {
                "id": lambda s: s.seq,
                "name": lambda s: s.name,
                "birth_date": lambda s: s.birth_date,
                "creation_time": lambda s: (s.created_at, s.seq),
            },
            "id",
        )

    def _scoped_subject(
        self, user: User, company_id: str, dataset_id: str | None, subject_id: str
    ) -> Subject:
        cid = self._company(user, company_id)
        ds_id = self._dataset(cid, dataset_id).id if dataset_id is not None else None
        return self._subject(cid, subject_id, ds_id)

    def get_subject(
        self, user: User, company_id: str, dataset_id: str | None, subject_id: str
    ) -> dict[str, Any]:
        """One subject, addressed with or without its dataset."""
        return self._subject_view(self._scoped_subject(user, company_id, dataset_id, subject_id))

    def update_subject(
        self, user: User, company_id: str, dataset_id: str, subject_id: str, body: Any
    ) -> dict:
        ds = self._dataset(self._company(user, company_id), dataset_id)
        s = self._subject(ds.company_id, subject_id, ds.id)
        for key, value in self._subject_fields(body, partial=True).items():
            setattr(s, key, value)
        self.received.accepted("update_subject", {"id": s.id})
        return self._subject_view(s)

    def _delete_subject(self, s: Subject) -> None:
        for batch_id in s.batch_ids:
            for image_id in list(self.batches[batch_id].image_ids):
                self._drop_image(self.images[image_id])
            del self.batches[batch_id]
        del self.subjects[s.id]
        del self.datasets[s.dataset_id].subject_ids[s.id]
        self.counters["subjects_deleted"] += 1

    def delete_subject(self, user: User, company_id: str, dataset_id: str, subject_id: str) -> None:
        ds = self._dataset(self._company(user, company_id), dataset_id)
        s = self._subject(ds.company_id, subject_id, ds.id)
        self._delete_subject(s)
        self.received.accepted("delete_subject", {"id": s.id})

    def bulk_delete_subjects(self, user: User, company_id: str, dataset_id: str, body: Any) -> None:
        """ASSUMED ``{"ids": [...]}``; unknown ids reject the whole request (nothing is deleted)."""
        ds = self._dataset(self._company(user, company_id), dataset_id)
        v = Validator(body)
        ids = v.anything("ids", default=MISSING)
        if ids is MISSING:
            v.fail("ids", "required", "This field is required.")
        elif not isinstance(ids, list) or not ids:
            v.fail(
                "ids",
                "not_a_list" if not isinstance(ids, list) else "empty",
                "This list may not be empty."
                if isinstance(ids, list)
                else f'Expected a list of items but got type "{type(ids).__name__}".',
            )
        v.check()
        wanted = [uuid_or_none(str(i)) for i in ids]
        missing = [
            str(i)
            for i, w in zip(ids, wanted, strict=True)
            if w is None or w not in self.subjects or self.subjects[w].dataset_id != ds.id
        ]
        if missing:
            raise field_error(
                "ids",
                "does_not_exist",
                f"{len(missing)} subject(s) do not exist in this dataset.",
                {"missing_ids": missing},
            )
        for sid in dict.fromkeys(wanted):
            self._delete_subject(self.subjects[sid])
        self.received.accepted("bulk_delete_subjects", {"dataset_id": ds.id, "count": len(set(wanted))})

    def delete_subject_photos(
        self, user: User, company_id: str, subject_id: str, dataset_id: str | None = None
    ) -> None:
        """GDPR: delete the image files now; records, results and aux records stay (DOC)."""
        s = self._scoped_subject(user, company_id, dataset_id, subject_id)
        for image in self._subject_images(s):
            image.photo_deleted = True
            self.blobs.delete(image.object_key)
        self.received.accepted("delete_subject_photos", {"id": s.id})

    def clear_subject_metadata(
        self, user: User, company_id: str, subject_id: str, dataset_id: str | None = None
    ) -> dict[str, Any]:
        """GDPR: blank name, birth date, biological sex and meta (effect ASSUMED)."""
        s = self._scoped_subject(user, company_id, dataset_id, subject_id)
        self._clear_subject(s)
        self.received.accepted("clear_subject_metadata", {"id": s.id})
        return self._subject_view(s)

    def _subject_images(self, s: Subject) -> list[Image]:
        return [self.images[i] for b in s.batch_ids for i in self.batches[b].image_ids]

    # --- inspection -------------------------------------------------------------------------------------------
    def inspect(self) -> dict[str, Any]:
        states = Counter(self.image_state(i) for i in self.images.values())
        return {
            "datasets": len(self.datasets),
            "subjects": len(self.subjects),
            "subjects_deleted": self.counters["subjects_deleted"],
            "duplicate_subject_names": self.received.duplicate_counts.get("create_subject", 0),
            "batches": len(self.batches),
            "images": len(self.images),
            "image_states": {s: states.get(s, 0) for s in IMAGE_STATES},
            "uploads": self.counters["uploads"],
            "computes": self.counters["computes"],
            "results_served": self.counters["results_served"],
            "result_files_served": self.counters["result_files_served"],
            "logins": self.counters["logins"],
            "private_tokens": len(self.private_tokens),
            "webhooks": len(self.webhooks),
            "stored_objects": len(self.blobs),
            "stored_bytes": self.blobs.total,
            "max_stored_bytes": self.blobs.max_bytes,
            "evicted_objects": self.blobs.evicted,
            "bytes_dropped": {
                k.removeprefix("bytes_dropped_"): n
                for k, n in self.counters.items()
                if k.startswith("bytes_dropped_")
            },
        }
