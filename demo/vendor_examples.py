"""Each service driven through its vendor's own documented example (vendor-docs/), host and credentials
pointed at the local emulators. Each example yields the lines the demo prints."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
from PIL import Image, ImageDraw

from emulators.launcher import RunningEmulators


def sample_jpeg(text: str, size: tuple[int, int] = (640, 480)) -> bytes:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    ImageDraw.Draw(img).text((20, 20), text, fill=(255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def miniviz(emu: RunningEmulators) -> Iterator[str]:
    """Quick-start data sample, then the image sample (Pro), then the same image again too early."""
    svc = emu["miniviz"]
    pro = next(p for p in svc.credentials["projects"] if p["plan"] == "pro")
    url = f"{svc.url}/api/project/{pro['project_id']}"
    auth = {"Authorization": f"Bearer {pro['token']}"}
    body = {
        "timestamp": now_ms(),
        "label_key": "Local_PC",
        "payload": {"temperature": 25, "humidity": 55, "switch": "true", "system_status": "running"},
    }
    r = httpx.post(url, json=body, headers=auth)
    r.raise_for_status()
    yield f"data event accepted: id={r.json()['id']}"
    image = {
        "timestamp": now_ms(),
        "label_key": "camera_1",
        "image_name": "image.jpg",
        "image_base64": base64.b64encode(sample_jpeg("camera_1")).decode(),
    }
    r = httpx.post(f"{url}/image", json=image, headers=auth)
    r.raise_for_status()
    yield f"image event accepted: id={r.json()['id']}"
    r = httpx.post(f"{url}/image", json=image, headers=auth)
    yield f"same label again at once: {r.status_code} (Retry-After {r.headers.get('Retry-After')} s, one image per 60 s per label)"
    free = next((p for p in svc.credentials["projects"] if p["plan"] == "free"), None)
    if free:
        r = httpx.post(
            f"{svc.url}/api/project/{free['project_id']}/image",
            json=image,
            headers={"Authorization": f"Bearer {free['token']}"},
        )
        yield f"image on the Free plan: {r.status_code} {r.json()['detail']}"


def s3(emu: RunningEmulators) -> Iterator[str]:
    """boto3 against moto's server, as any S3 client would with an endpoint URL."""
    import boto3

    svc = emu["s3"]
    c = svc.credentials
    client = boto3.client(
        "s3",
        endpoint_url=svc.url,
        aws_access_key_id=c["aws_access_key_id"],
        aws_secret_access_key=c["aws_secret_access_key"],
        region_name=c["region_name"],
    )
    client.put_object(Bucket=c["bucket"], Key="demo/hello.jpg", Body=sample_jpeg("hello"))
    listed = client.list_objects_v2(Bucket=c["bucket"], Prefix="demo/")
    yield f"bucket {c['bucket']}: put and listed {listed['KeyCount']} object(s)"
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": c["bucket"], "Key": "demo/hello.jpg"}, ExpiresIn=3600
    )
    r = httpx.get(url)
    yield f"presigned GET: {r.status_code}, {len(r.content):,} bytes"


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(every)
    return time.perf_counter() - start


EXAMPLES: dict[str, Callable[[RunningEmulators], Iterator[str]]] = {
    "Miniviz": miniviz,
    "S3 (moto)": s3,
}
