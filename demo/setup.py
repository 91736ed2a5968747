"""Demo blocks pointing at running emulators, and generated sample inputs."""

from __future__ import annotations

import io
from typing import Any

import boto3
from PIL import Image, ImageDraw
from prefect_aws import AwsCredentials, S3Bucket
from pydantic import SecretStr

from blocks import HautCredentials, MicrioCredentials, MinivizCredentials, VizioSenseCredentials
from emulators.launcher import RunningEmulators

# The names prefect.yaml's deployments use by default.
BLOCK_NAMES = {
    "micrio": "micrio-demo",
    "s3": "s3-demo",
    "miniviz": "miniviz-demo",
    "viziosense": "viziosense-demo",
    "haut": "haut-demo",
}


def emulator_aws_credentials(s3: Any) -> AwsCredentials:
    """prefect-aws credentials for the S3 emulator ``s3`` (its keys, region and endpoint)."""
    c = s3.credentials
    return AwsCredentials(
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=SecretStr(c["aws_secret_access_key"]),
        region_name=c["region_name"],
        aws_client_parameters={"endpoint_url": s3.url},
    )


async def save_demo_blocks(emu: RunningEmulators, time_scale: float = 1.0) -> dict[str, str]:
    """Save one block per service, pointing at the emulators (rate intervals scaled like their clocks)."""
    saved: dict[str, str] = {}
    if "s3" in emu:
        aws = emulator_aws_credentials(emu["s3"])
        await S3Bucket(bucket_name=emu["s3"].credentials["bucket"], credentials=aws).asave(
            BLOCK_NAMES["s3"], overwrite=True
        )
        saved["s3"] = BLOCK_NAMES["s3"]
    if "micrio" in emu:
        c = emu["micrio"].credentials
        await MicrioCredentials(
            organisation_id=c["organisation_id"], api_key=SecretStr(c["api_key"]), base_url=emu["micrio"].url
        ).asave(BLOCK_NAMES["micrio"], overwrite=True)
        saved["micrio"] = BLOCK_NAMES["micrio"]
    if "miniviz" in emu:
        p = emu["miniviz"].credentials["projects"][0]
        await MinivizCredentials(
            project_id=p["project_id"],
            token=SecretStr(p["token"]),
            plan=p["plan"],
            base_url=emu["miniviz"].url,
            data_interval_seconds=15 * time_scale,
            image_interval_seconds=60 * time_scale,
        ).asave(BLOCK_NAMES["miniviz"], overwrite=True)
        saved["miniviz"] = BLOCK_NAMES["miniviz"]
    if "viziosense" in emu:
        c = emu["viziosense"].credentials
        await VizioSenseCredentials(api_key=SecretStr(c["api_key"]), base_url=emu["viziosense"].url).asave(
            BLOCK_NAMES["viziosense"], overwrite=True
        )
        saved["viziosense"] = BLOCK_NAMES["viziosense"]
    if "haut" in emu:
        c = emu["haut"].credentials
        await HautCredentials(
            company_id=c["company_id"], private_token=SecretStr(c["private_token"]), base_url=emu["haut"].url
        ).asave(BLOCK_NAMES["haut"], overwrite=True)
        saved["haut"] = BLOCK_NAMES["haut"]
    return saved


def s3_client(emu: RunningEmulators) -> Any:
    c = emu["s3"].credentials
    return boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )


def sample_photo(index: int, size: tuple[int, int] = (1600, 1200)) -> bytes:
    """A distinct 'photo': a gradient with a few shapes and a caption."""
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(img)
    for k in range(5):
        x, y = (index * 97 + k * 211) % (size[0] - 200), (index * 53 + k * 131) % (size[1] - 200)
        draw.ellipse((x, y, x + 180, y + 180), fill=((index * 40 + k * 60) % 256, 120, (k * 90) % 256))
    draw.text((40, 40), f"archive photo #{index}", fill=(255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def put_micrio_samples(emu: RunningEmulators, prefix: str = "micrio-demo/", count: int = 24) -> str:
    """Sample photos (and one text file that is not an image) under an S3 prefix; returns its s3:// URI."""
    s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"{prefix}photo-{i:03d}.jpg", Body=sample_photo(i))
    s3.put_object(Bucket=bucket, Key=f"{prefix}scan-notes.jpg", Body=b"this 'jpg' is a text file")
    return f"s3://{bucket}/{prefix}"


def sample_selfie(seed: int, size: int = 768) -> bytes:
    """A face-like selfie (skin-toned oval, eyes, brows, nose, mouth); ``seed`` varies tones and features."""
    img = Image.new("RGB", (size, size), (225, 230 - seed, 235))
    d = ImageDraw.Draw(img)
    k = size / 512
    d.ellipse((106 * k, 56 * k, 406 * k, 456 * k), fill=(224, 172 - 3 * seed, 138))
    for x in (190, 322):
        d.ellipse(((x - 28) * k, 200 * k, (x + 28) * k, 232 * k), fill=(255, 255, 255))
        d.ellipse(((x - 10) * k, 206 * k, (x + 10) * k, 226 * k), fill=(70, 45, 30))
        d.line(((x - 34) * k, 180 * k, (x + 34) * k, (174 - seed) * k), fill=(90, 60, 40), width=6)
    d.polygon([(256 * k, 230 * k), (236 * k, 310 * k), (276 * k, 310 * k)], fill=(205, 150, 120))
    d.chord((196 * k, 330 * k, 316 * k, 400 * k), 0, 180, fill=(170, 60, 70))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def put_selfie_samples(emu: RunningEmulators, prefix: str = "selfies/", subjects: int = 4) -> str:
    """Selfies in one folder per subject, plus a thumbnail too small and a 'photo' that is not an image."""
    s3, bucket = s3_client(emu), emu["s3"].credentials["bucket"]
    for i in range(subjects):
        s3.put_object(Bucket=bucket, Key=f"{prefix}subject-{i:02d}/front.jpg", Body=sample_selfie(i))
    small = io.BytesIO()
    Image.new("RGB", (120, 120), (200, 160, 140)).save(small, "JPEG")
    s3.put_object(Bucket=bucket, Key=f"{prefix}subject-00/thumbnail.jpg", Body=small.getvalue())
    s3.put_object(Bucket=bucket, Key=f"{prefix}subject-01/notes.jpg", Body=b"not really a jpeg")
    return f"s3://{bucket}/{prefix}"


def put_history_sample(emu: RunningEmulators, key: str = "history/greenhouse.csv", hours: int = 6) -> str:
    """Sensor history: 3 greenhouses, one reading every 5 minutes, a few bad rows; returns its s3:// URI."""
    import numpy as np
    import pandas as pd

    times = pd.date_range("2026-01-01", periods=hours * 12, freq="5min", tz="UTC")
    frames = []
    for n, label in enumerate(("greenhouse 1", "greenhouse-2", "Serre Nord")):
        frames.append(
            pd.DataFrame(
                {
                    "timestamp": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "label_key": label,
                    "temperature": (20 + n + np.sin(np.arange(len(times)) / 6)).round(2),
                    "humidity": (50 + 5 * np.cos(np.arange(len(times)) / 9)).round(1),
                    "vent_open": pd.Series(np.arange(len(times)) % 7 == 0, dtype=object),
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df.loc[3, "timestamp"] = "not a time"
    df.loc[10, ["temperature", "humidity"]] = float("nan")
    df.loc[10, "vent_open"] = None
    bucket = emu["s3"].credentials["bucket"]
    s3_client(emu).put_object(Bucket=bucket, Key=key, Body=df.to_csv(index=False).encode())
    return f"s3://{bucket}/{key}"
