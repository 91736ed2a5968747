"""Each service driven through its vendor's own documented example (docs/service-api-facts.md), host and credentials
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


def viziosense(emu: RunningEmulators) -> Iterator[str]:
    """Login, list devices, request a new image and fetch it once the documented 20 s have passed."""
    svc = emu["viziosense"]
    c = svc.credentials
    login = httpx.post(f"{svc.url}/api/v1/auth/login", json={"email": c["email"], "password": c["password"]})
    login.raise_for_status()
    token = login.json()["data"]["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    listed = httpx.get(
        f"{svc.url}/api/v1/devices", params={"is_online": "Online", "sort": "name"}, headers=auth
    ).json()
    yield f"logged in as {login.json()['data']['user']['email']}; {listed['meta']['total']} online device(s)"
    device = listed["data"][0]
    links = httpx.post(f"{svc.url}/api/v1/devices/{device['uuid']}/image", headers=auth).json()["data"]
    early = httpx.get(links[0]).status_code
    waited = wait_until(lambda: httpx.get(links[0]).status_code == 200, timeout=60, every=0.1)
    raw, annotated = httpx.get(links[0]), httpx.get(links[1])
    yield (
        f"image requested from {device['name']!r}: {early} at once, ready after {waited:.1f} s "
        f"(20 s emulated); raw {len(raw.content):,} bytes, annotated {len(annotated.content):,} bytes"
    )


def micrio(emu: RunningEmulators) -> Iterator[str]:
    """images/add with sources in S3 (presigned URLs), then image/status until every image is final."""
    import boto3

    s3c = emu["s3"].credentials
    s3 = boto3.client(
        "s3",
        endpoint_url=emu["s3"].url,
        aws_access_key_id=s3c["aws_access_key_id"],
        aws_secret_access_key=s3c["aws_secret_access_key"],
        region_name=s3c["region_name"],
    )
    sources = []
    for i in range(3):
        s3.put_object(
            Bucket=s3c["bucket"],
            Key=f"vendor-example/photo-{i}.jpg",
            Body=sample_jpeg(f"photo {i}", (1600, 1200)),
        )
        sources.append(
            {
                "sourceUrl": s3.generate_presigned_url(
                    "get_object",
                    Params={"Bucket": s3c["bucket"], "Key": f"vendor-example/photo-{i}.jpg"},
                    ExpiresIn=3600,
                )
            }
        )
    s3.put_object(Bucket=s3c["bucket"], Key="vendor-example/notes.txt", Body=b"not an image")
    sources.append(
        {
            "name": "notes",
            "sourceUrl": s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": s3c["bucket"], "Key": "vendor-example/notes.txt"},
                ExpiresIn=3600,
            ),
        }
    )
    svc = emu["micrio"]
    c = svc.credentials
    auth = {"organisationId": c["organisation_id"], "apiKey": c["api_key"]}
    added = httpx.post(
        f"{svc.url}/v2/images/add", json={**auth, "folderId": c["root_folder_id"], "images": sources}
    )
    added.raise_for_status()
    ids = [img["id"] for img in added.json()["result"]["images"]]
    yield f"added {len(ids)} images to folder {c['root_folder_id']}: {', '.join(ids)}"
    statuses: list[dict] = []

    def all_final() -> bool:
        nonlocal statuses
        r = httpx.post(f"{svc.url}/v2/image/status", json={**auth, "imageIds": ids})
        statuses = r.json()["result"]["images"]
        return all(s["status"] in ("ready", "error") for s in statuses)

    waited = wait_until(all_final, timeout=60, every=0.1)
    for s in statuses:
        detail = f"{s.get('width')}x{s.get('height')}" if s["status"] == "ready" else s.get("error")
        yield f"{s['id']} {s['name']}: {s['status']} ({detail})"
    folder = httpx.post(f"{svc.url}/v2/folder/status", json={**auth, "folderId": c["root_folder_id"]}).json()[
        "result"
    ]
    yield f"folder/status after {waited:.1f} s: {folder['numComplete']}/{folder['numTotal']} complete, {len(folder['erroredIds'])} errored"


def haut(emu: RunningEmulators) -> Iterator[str]:
    """Private token; dataset, subject, signed upload URL, the documented curl-style PUT, compute, results."""
    svc = emu["haut"]
    c = svc.credentials
    auth = {"Authorization": f"Bearer {c['private_token']}"}
    company = f"{svc.url}/api/v1/companies/{c['company_id']}"
    dataset = httpx.post(
        f"{company}/datasets/", json={"name": "demo study", "image_type_id": 1}, headers=auth
    ).json()
    httpx.post(
        f"{company}/applications/face_skin_metrics_2.0/attach-to-dataset/",
        json={"dataset_id": dataset["id"]},
        headers=auth,
    ).raise_for_status()
    subject = httpx.post(
        f"{company}/datasets/{dataset['id']}/subjects/", json={"name": "demo subject"}, headers=auth
    ).json()
    record = httpx.post(
        f"{company}/subjects/{subject['id']}/signed_upload_url/", json={}, headers=auth
    ).json()
    upload = record["upload_url"]
    put = httpx.request(
        upload["method"], upload["url"], headers=upload["headers"], content=sample_jpeg("selfie", (768, 1024))
    )
    yield f"dataset {dataset['name']!r}, subject {subject['name']!r}: signed upload PUT -> {put.status_code}"
    batch = record["image_batch_id"]
    httpx.post(f"{company}/batches/{batch}/compute/", headers=auth).raise_for_status()
    results_url = (
        f"{company}/datasets/{dataset['id']}/subjects/{subject['id']}/batches/{batch}"
        f"/images/{record['id']}/results/"
    )
    results: list = []

    def ready() -> bool:
        nonlocal results
        results = httpx.get(results_url, headers=auth).json()
        return bool(results)

    waited = wait_until(ready, timeout=60, every=0.1)
    metrics = [r["result"]["area_results"][0]["main_metric"] for r in results if r.get("is_ok")]
    shown = ", ".join(f"{m['tech_name']}={m['value']}" for m in metrics[:4])
    yield f"results after {waited:.1f} s: {len(results)} algorithms ({shown}, ...)"


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"not done after {timeout} s")
        time.sleep(every)
    return time.perf_counter() - start


EXAMPLES: dict[str, Callable[[RunningEmulators], Iterator[str]]] = {
    "Miniviz": miniviz,
    "VizioSense": viziosense,
    "Micrio": micrio,
    "Haut.ai": haut,
    "S3 (moto)": s3,
}
