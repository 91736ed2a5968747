"""Label values -> valid Miniviz ``label_key``s: stable, at most 128 allowed characters."""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from typing import Any

import numpy as np
import pandas as pd

from clients.miniviz import LABEL_KEY_RE, MAX_LABEL_KEY


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def map_label_key(value: Any) -> str | None:
    """The Miniviz ``label_key`` for a label value, or None when there is no label.

    Stable (a pure function of the value) and always valid: at most 128 characters of ``A-Z a-z 0-9 - _ . :
    @ /``. Valid labels pass unchanged. Otherwise accents are stripped ("Küche" -> "Kuche") and whitespace
    becomes "_" ("Room 1" -> "Room_1"); any other character becomes "_" and an 8-character hash of the
    original is appended ("温度" -> "__-<hash>"), so labels that differ only in such characters stay apart.
    Labels over 128 characters are cut to 119 plus "-" and the hash. Numbers: 17.0 -> "17".
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            value = int(value)
    elif isinstance(value, np.integer):
        value = int(value)
    text = str(value).strip()
    if not text:
        return None
    if len(text) <= MAX_LABEL_KEY and LABEL_KEY_RE.match(text):
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    stripped = re.sub(r"\s+", "_", stripped)
    mapped = re.sub(r"[^A-Za-z0-9\-_.:@/]", "_", stripped)
    lossy = mapped != stripped
    if lossy or len(mapped) > MAX_LABEL_KEY:
        mapped = f"{mapped[: MAX_LABEL_KEY - 9]}-{_short_hash(text)}"
    return mapped


class LabelMapper:
    """``map_label_key`` with a cache, a record of labels it changed, and collisions (two labels, one key)."""

    def __init__(self, max_tracked: int = 100_000) -> None:
        self.max_tracked = max_tracked
        self._cache: dict[Any, str | None] = {}
        self.changed: dict[str, str] = {}  # original -> mapped, for labels that were not valid as given
        self._origin: dict[str, str] = {}  # mapped -> first original
        self.collisions: dict[str, set[str]] = {}

    def __call__(self, value: Any) -> str | None:
        try:
            return self._cache[value]
        except (KeyError, TypeError):
            pass
        mapped = map_label_key(value)
        if len(self._cache) < self.max_tracked:
            try:
                self._cache[value] = mapped
            except TypeError:
                pass
            if mapped is not None:
                original = str(value).strip() if not isinstance(value, float) else mapped
                if original != mapped and len(self.changed) < self.max_tracked:
                    self.changed[original] = mapped
                first = self._origin.setdefault(mapped, original)
                if first != original:
                    self.collisions.setdefault(mapped, {first}).add(original)
        return mapped
