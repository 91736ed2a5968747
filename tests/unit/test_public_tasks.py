"""Batch tasks with no other test of their own, called as a user would (``.fn``) on real photographs."""

from __future__ import annotations

import io
import os
import shutil

import pandas as pd
import skimage
from PIL import Image

from flows.skin_analysis.inputs import collect_skin_inputs
from flows.skin_analysis.tables import write_skin_reports
from tasks.image_fit import FittedImage
from tasks.images import Rejected, downscale_images
from tasks.tables import save_table

PHOTOS = os.path.join(os.path.dirname(skimage.__file__), "data")


def photo(name: str) -> bytes:
    with open(os.path.join(PHOTOS, name), "rb") as fh:
        return fh.read()


def test_downscale_images_shrinks_each_photo_and_rejects_what_is_not_one():
    out = downscale_images.fn([photo("astronaut.png"), b"not an image", photo("rocket.jpg")], 256)
    assert [type(o) for o in out] == [FittedImage, Rejected, FittedImage]
    assert out[1].index == 1 and out[1].reason
    for fitted in (out[0], out[2]):
        assert max(fitted.width, fitted.height) == 256
        assert max(Image.open(io.BytesIO(fitted.data)).size) == 256


def test_save_table_writes_by_extension_and_reads_back(tmp_path):
    df = pd.DataFrame({"item": [1, 2], "name": ["Zoë", "a;b"], "score": [0.5, None]})
    for name in ("r.csv", "r.parquet"):
        written = save_table.fn(df, str(tmp_path / name))
        back = pd.read_csv(written) if name.endswith(".csv") else pd.read_parquet(written)
        assert back["name"].tolist() == ["Zoë", "a;b"] and back["item"].tolist() == [1, 2]


async def test_collect_skin_inputs_lists_a_folder_of_photos(tmp_path):
    for subject, name in (("jane", "astronaut.png"), ("joe", "coffee.png")):
        (tmp_path / subject).mkdir()
        shutil.copy(os.path.join(PHOTOS, name), tmp_path / subject / name)
    (tmp_path / "notes.txt").write_text("not a photo")
    inputs = await collect_skin_inputs.fn(str(tmp_path))
    assert sorted(i.subject for i in inputs.images) == ["jane", "joe"]
    assert inputs.ignored_files == 1


async def test_write_skin_reports_writes_both_tables(tmp_path):
    wide = pd.DataFrame({"item": [1], "status": ["done"], "subject_key": ["k1"]})
    tidy = pd.DataFrame({"item": [1], "metric": ["acne"], "value": [71.0]})
    report, metrics = await write_skin_reports.fn(
        wide, tidy, str(tmp_path / "run.csv"), str(tmp_path / "run-metrics.parquet")
    )
    assert pd.read_csv(report).to_dict("records") == wide.to_dict("records")
    assert pd.read_parquet(metrics).to_dict("records") == tidy.to_dict("records")
