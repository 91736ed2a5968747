"""Pydantic models of the Haut.ai SaaS API records (docs/service-api-facts.md §4). Tolerant: unknown fields are kept.

Only the fields the flows rely on are declared; everything else the service sends stays reachable through
``model_extra`` (``extra="allow"``). Secrets the API returns (a new private token, a webhook's keys) are
``SecretStr`` so they never show in a repr or a log line.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

Side = Literal["front", "left", "right"]
SIDE_IDS: dict[str, int] = {"front": 1, "right": 2, "left": 3}  # DOC: 1 front, 2 right, 3 left


class HautModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class LoginInfo(HautModel):
    """Who logged in (the tokens themselves stay inside the client)."""

    id: int | None = None
    email: str | None = None
    username: str | None = None
    company_id: str | None = None
    is_verified: bool | None = None


class PrivateToken(HautModel):
    """A long-lived private token. ``data`` (the token value) is only present in the create answer."""

    id: int
    name: str
    expiration_time: str | None = None
    data: SecretStr | None = None


class TechNamed(HautModel):
    """An application or algorithm version as another record lists it (a dataset, an application)."""

    id: int | None = None
    name: str | None = None
    tech_name: str


class Dataset(HautModel):
    id: str
    name: str
    company_id: str | None = None
    image_type_id: int | None = None
    image_type_tech_name: str | None = None
    connected_applications: list[TechNamed] = Field(default_factory=list)
    expire_images_after_days: int | None = None
    expire_metadata_after_days: int | None = None
    clean_images_as_soon_as_ready: bool | None = None
    creation_time: str | None = None

    @property
    def application_tech_names(self) -> list[str]:
        return [a.tech_name for a in self.connected_applications]


class Application(HautModel):
    id: int
    name: str
    tech_name: str
    algorithms_versions: list[TechNamed] = Field(default_factory=list)
    is_enabled: bool | None = None
    description: str | None = None


class Subject(HautModel):
    id: str
    name: str | None = None
    birth_date: str | None = None
    biological_sex: dict[str, Any] | None = None
    meta: Any = None
    creation_time: str | None = None
    dataset: dict[str, Any] | None = None


class SubjectSpec(BaseModel):
    """A subject to create (or find by name): ``name`` 1–512 characters; the rest optional."""

    name: str
    birth_date: str | None = None
    biological_sex: str | None = None  # dict id ("2") or tech name ("female")
    meta: Any = None


class UploadTarget(HautModel):
    """Where to PUT an image: a signed storage URL and exactly the headers to send with it."""

    url: str = Field(repr=False)  # signed: whoever holds it can write the object until it expires
    method: str = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)
    content_type: str | None = None
    id: str | None = None  # v3: the image id of this side

    @field_validator("headers", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value


class AuxImage(HautModel):
    id: str
    image_id: str | None = None
    aux_image_type: dict[str, Any] | None = None
    algo_app: dict[str, Any] | None = None
    url: str | None = None


class ImageRecord(HautModel):
    """An image record; the answer of the v1 signed-URL call also carries ``upload_url`` and ``image_batch_id``."""

    id: str
    name: str | None = None
    side: dict[str, Any] | None = None
    side_tech_name: str | None = None
    light: dict[str, Any] | None = None
    image_batch_id: str | None = None
    upload_url: UploadTarget | None = None
    creation_time: str | None = None
    quality_score: float | None = None
    quality_issues: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    urls: dict[str, Any] = Field(default_factory=dict)
    aux_images: list[AuxImage] = Field(default_factory=list)

    @field_validator("quality_issues", "problems", "aux_images", "urls", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any, info: Any) -> Any:
        if value is None:
            return {} if info.field_name == "urls" else []
        return value


class Metric(HautModel):
    value: Any = None
    widget_type: str | None = None
    name: str | None = None
    tech_name: str | None = None
    widget_meta: dict[str, Any] | None = None


class AreaResult(HautModel):
    area_name: str
    main_metric: Metric | None = None
    sub_metrics: list[Metric] = Field(default_factory=list)


class AlgorithmResult(HautModel):
    """One algorithm's result for one image (v1). ``is_ok`` false: the algorithm failed (see ``result``)."""

    id: str | None = None
    is_ok: bool = True
    image_id: str | None = None
    creation_time: str | None = None
    application_id: int | str | None = None
    application_name: str | None = None
    application_run_id: str | None = None
    image_type: str | None = None
    algorithm_family_tech_name: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)

    @property
    def area_results(self) -> list[AreaResult]:
        return [AreaResult.model_validate(a) for a in self.result.get("area_results") or []]

    def main_metric(self, area: str = "face") -> Metric | None:
        """The main metric of ``area`` (``face`` = the whole-face figure)."""
        return next((a.main_metric for a in self.area_results if a.area_name == area), None)

    @property
    def problem(self) -> str | None:
        """Why a failed algorithm failed, as far as the result says."""
        if self.is_ok:
            return None
        error = self.result.get("error")
        if isinstance(error, dict):
            return str(error.get("code") or error.get("detail") or error)
        problems = self.result.get("problems")
        return ", ".join(map(str, problems)) if problems else str(error or "algorithm failed")


def face_scores(results: list[AlgorithmResult]) -> dict[str, Any]:
    """``{family: value}`` of each successful algorithm's whole-face main metric (e.g. ``{"pores": 64}``)."""
    out: dict[str, Any] = {}
    for r in results:
        metric = r.main_metric("face") if r.is_ok else None
        if metric is not None and r.algorithm_family_tech_name:
            out[r.algorithm_family_tech_name.split(".", 1)[-1]] = metric.value
    return out


class V1Analysis(BaseModel):
    """The ids of an image sent for analysis through the v1 flow (what you need to fetch its results)."""

    dataset_id: str
    subject_id: str
    batch_id: str
    image_id: str
    side_id: int


class V3Upload(HautModel):
    """Answer of the v3 upload call: one target per requested side and the batch id."""

    image_batch_id: str
    front: UploadTarget | None = None
    left: UploadTarget | None = None
    right: UploadTarget | None = None

    def targets(self) -> dict[str, UploadTarget]:
        return {s: t for s in ("front", "left", "right") if (t := getattr(self, s)) is not None}


class V3Analysis(BaseModel):
    subject_id: str
    batch_id: str
    image_ids: dict[str, str]  # side -> image id


class V3Results(HautModel):
    """The ``face_skin_metrics_3`` object of v3 batch results; ready when ``all_algorithms_calculated``."""

    image_batch_id: str | None = None
    subject_id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    survey_results: list[Any] = Field(default_factory=list)
    all_algorithms_calculated: bool = False
    can_watch_predicted_images: bool | None = None
    predicted_images: dict[str, Any] = Field(default_factory=dict)

    @field_validator("parameters", "predicted_images", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def scores(self) -> dict[str, Any]:
        """``{parameter: score}`` for parameters that carry a ``score``."""
        return {k: v["score"] for k, v in self.parameters.items() if isinstance(v, dict) and "score" in v}


class Webhook(HautModel):
    """A dataset's results webhook (one per dataset; setting it again replaces it)."""

    url: str
    authorization: str | None = None
    authorization_key: str | None = None
    authorization_value: SecretStr | None = None
    method: str | None = None
    enabled: bool | None = None
    add_survey_answers: bool | None = None
    merge_webhooks: bool | None = None
    secret_key: SecretStr | None = None
