"""State records of the Haut.ai emulator (plain dataclasses; behaviour lives in the backend)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .results import ImageAnalysis

DAY = 86_400.0


def uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        return None


@dataclass
class User:
    id: int
    email: str
    password: str
    full_name: str
    company_ids: list[str]
    mfa_enabled: bool = False
    is_active: bool = True
    is_verified: bool = True


@dataclass
class Token:
    kind: str  # "access" | "refresh" | "private"
    user_id: int
    expires_at: float
    private_id: int | None = None


@dataclass
class PrivateToken:
    id: int
    user_id: int
    name: str
    expires_at: float
    token: str = field(repr=False)


@dataclass
class Dataset:
    id: str
    seq: int
    company_id: str
    name: str
    image_type_id: int
    expire_images_after_days: int | None
    expire_metadata_after_days: int | None
    clean_images_as_soon_as_ready: bool
    custom_branding: int | None
    author_id: int
    created_at: float
    # tech_name -> {"enabled_algorithms", "algorithms_flags", "at"}
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)
    subject_ids: dict[str, None] = field(default_factory=dict)  # ordered set: lists need no full scan


@dataclass
class Subject:
    id: str
    seq: int
    company_id: str
    dataset_id: str
    name: str
    birth_date: str | None
    biological_sex: dict[str, Any] | None
    meta: Any
    author_id: int
    created_at: float
    batch_ids: list[str] = field(default_factory=list)


@dataclass
class Batch:
    id: str
    company_id: str
    dataset_id: str
    subject_id: str
    created_at: float
    creation_time: str | None
    image_ids: list[str] = field(default_factory=list)
    computed_at: float | None = None


@dataclass
class Image:
    id: str
    seq: int
    company_id: str
    dataset_id: str
    subject_id: str
    batch_id: str
    name: str
    side_id: int
    light_id: int | None
    meta: Any
    app_args: Any
    created_at: float
    object_key: str
    uploaded_at: float | None = None
    analysis: ImageAnalysis | None = None
    queued_at: float | None = None
    processing_at: float | None = None
    done_at: float | None = None
    apps: tuple[str, ...] = ()  # applications attached when compute was called
    enabled_algorithms: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per app, at compute
    run_ids: dict[str, str] = field(default_factory=dict)
    photo_deleted: bool = False
