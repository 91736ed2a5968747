"""Haut results as metric rows ``(algorithm, area, metric, value, value_text, tag)`` (pure).

``flatten_v1`` reads v1 per-image algorithm results, ``flatten_v3`` a v3 batch's ``parameters``;
``v1_failure`` / ``v3_failure`` say whether an analysis failed. Signed URLs (masks, predicted images) never
become rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from clients.haut_models import AlgorithmResult, V3Results

FACE = "face"  # area name of whole-face figures (v1 "face" area; v3 top-level parameter values)
# Bands of 0–100 "bad_good_line" scores (docs/service-api-facts.md §4.9, DOC), used when a result carries no tag.
_BANDS = ((90, "Excellent"), (80, "Great"), (70, "Good"), (50, "Average"), (30, "Poor"))
_V3_SKIP = {"masks", "predicted_images", "images", "urls"}  # nested signed URLs: never in a report


class MetricRow(NamedTuple):
    """One figure of a result: ``value`` for numbers, ``value_text`` for categories (e.g. a skin tone)."""

    algorithm: str
    area: str
    metric: str
    value: float | None
    value_text: str | None
    tag: str | None


# What outcomes keep: a MetricRow's fields as a plain tuple. The garbage collector stops tracking plain tuples
# of strings and numbers, not NamedTuples: ~100 rows per analysis otherwise trigger full collections (~0.1 s
# each, the event loop stopped) as a run goes on.
Row = tuple[str, str, str, float | None, str | None, str | None]


def plain(rows: Iterable[Sequence[Any]]) -> list[Row]:
    """Rows as plain tuples (from MetricRows, or from the lists a journal gives back)."""
    return [tuple(r) for r in rows]  # type: ignore[misc]


def band(score: float) -> str:
    """Documented band of a 0–100 ``bad_good_line`` score: (90,100] Excellent … [0,30] Bad."""
    return next((tag for lower, tag in _BANDS if score > lower), "Bad")


def _value(value: Any) -> tuple[float | None, str | None] | None:
    """``(value, value_text)``; None for values that are not reportable figures (None, containers, URLs)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return None, str(value).lower()
    if isinstance(value, int | float):
        return (float(value), None) if math.isfinite(value) else None
    text = str(value)
    if text.startswith(("http://", "https://")):
        return None
    return None, text


def flatten_v1(results: Sequence[AlgorithmResult]) -> list[MetricRow]:
    """Rows of v1 per-image results: every successful algorithm's area main metric and sub-metrics.

    ``algorithm`` is the family (``selfie_v2.pores`` → ``pores``); ``metric`` the metric's tech name; ``tag``
    the result's own tag, else the documented band of a 0–100 ``bad_good_line`` score. Results without
    ``area_results`` (e.g. recommendations), failed algorithms and entries without the documented shape
    (an area without a name, a metric that is not an object) add no rows.
    """
    # Reads the decoded JSON directly: validating ~100 metrics per image into models cost more than the rest
    # of handling the answer.
    rows: list[MetricRow] = []
    for result in results:
        if not result.is_ok:
            continue
        family = (result.algorithm_family_tech_name or result.application_name or "unknown").split(".")[-1]
        for area in result.result.get("area_results") or ():
            if not isinstance(area, dict) or not isinstance(area.get("area_name"), str):
                continue
            main, subs = area.get("main_metric"), area.get("sub_metrics")
            metrics = ([main] if main is not None else []) + (list(subs) if isinstance(subs, list) else [])
            for metric in metrics:
                if not isinstance(metric, dict):
                    continue
                value = metric.get("value")
                if type(value) is int or type(value) is float:  # nearly every metric: no call
                    parsed = (float(value), None) if math.isfinite(value) else None
                else:
                    parsed = _value(value)
                if parsed is None:
                    continue
                meta = metric.get("widget_meta")
                tag = meta.get("tag") if isinstance(meta, dict) else None
                if tag is None and metric.get("widget_type") == "bad_good_line" and parsed[0] is not None:
                    tag = band(parsed[0])
                name = metric.get("tech_name") or metric.get("name") or "value"
                rows.append(
                    MetricRow(family, area["area_name"], str(name), *parsed, str(tag) if tag else None)
                )
    return rows


def flatten_v3(parameters: Mapping[str, Any]) -> list[MetricRow]:
    """Rows of v3 batch ``parameters``: each parameter's scalar fields (area ``face``) and its ``areas``.

    ``{"pores": {"score": 64, "tag": "Average", "amount": 120, "areas": {"nose": {"score": 51}}}}`` gives
    ``(pores, face, score, 64, -, Average)``, ``(pores, face, amount, 120, -, -)``, ``(pores, nose, score, 51,
    -, -)``. Masks, images and anything URL-like are left out (signed URLs never reach a report).
    """
    rows: list[MetricRow] = []
    for name, entry in parameters.items():
        if name in _V3_SKIP:
            continue
        if not isinstance(entry, dict):
            parsed = _value(entry)
            if parsed is not None:
                rows.append(MetricRow(name, FACE, "value", *parsed, None))
            continue
        tag = entry.get("tag")
        for field, value in entry.items():
            if field == "tag" or field in _V3_SKIP:
                continue
            if field == "areas" and isinstance(value, dict):
                for area, figures in value.items():
                    figures = figures if isinstance(figures, dict) else {"score": figures}
                    for metric, figure in figures.items():
                        parsed = _value(figure)
                        if parsed is not None and metric != "tag":
                            area_tag = figures.get("tag") if metric == "score" else None
                            rows.append(MetricRow(name, area, metric, *parsed, area_tag))
                continue
            parsed = _value(value)
            if parsed is not None:
                row_tag = str(tag) if tag is not None and field == "score" else None
                rows.append(MetricRow(name, FACE, field, *parsed, row_tag))
    return rows


def v1_failure(results: Sequence[AlgorithmResult]) -> tuple[str | None, str | None]:
    """``(error, warnings)``: an error when every algorithm failed; warnings naming the ones that did."""
    failed = [r for r in results if not r.is_ok]
    if not failed:
        return None, None
    problems = sorted(
        {f"{(r.algorithm_family_tech_name or '?').split('.')[-1]}: {r.problem}" for r in failed}
    )
    if len(failed) == len(results):
        return "analysis failed: " + ", ".join(
            sorted({r.problem or "algorithm failed" for r in failed})
        ), None
    return None, "algorithms failed: " + "; ".join(problems)


def v3_failure(results: V3Results) -> str | None:
    if results.parameters:
        return None
    problems = (results.model_extra or {}).get("problems")
    if isinstance(problems, dict):
        text = "; ".join(f"{side}: {', '.join(map(str, p))}" for side, p in problems.items())
    else:
        text = str(problems or "no parameters in the results")
    return f"analysis failed: {text}"
