"""Camera snapshots for the VizioSense emulator: real JPEGs rendered with Pillow.

A snapshot is a parking-lot scene with a black band on top stamped with the device name and request time;
the annotated version adds detection boxes, labels and a summary. Scenes carry a noise texture so a 1280x720
frame is ~270 KB at quality 85, larger than Miniviz's 204,800-byte limit, as real camera frames are.

Cheap per request, by construction: each scene variant (raw and annotated) is encoded once, with a JPEG
restart marker after every row of 16-pixel blocks. Restart markers make each block row's coded data
independent, so a snapshot is the cached header, then the freshly encoded band rows (the only part that
changes: ~6 KB, ~0.5 ms to encode), then the cached coded rows below the band. The result is an ordinary
baseline JPEG that every decoder reads. Only the band is kept per request; ``compose`` joins bytes.
"""

from __future__ import annotations

import io
import random
import re
import threading
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

# Noise strength and its blend weight: tuned so a 1280x720 frame at quality 85 is ~270 KB (q90: ~330 KB).
NOISE_SIGMA = 50
NOISE_WEIGHT = 0.25
BOX_COLOURS = {"car": (255, 196, 0), "truck": (255, 90, 40), "person": (60, 220, 120)}
MCU = 16  # block-row height with 4:2:0 chroma subsampling (forced below)
_RST = re.compile(rb"\xff[\xd0-\xd7]")  # restart markers; 0xFF in coded data is always stuffed as FF 00
# Encoded scenes, shared by every renderer of this process with the same settings (a reset or a second
# backend does not encode them again): (width, height, quality, variant) -> (raw, annotated).
_SCENES: dict[tuple[int, int, int, int], tuple[EncodedFrame, EncodedFrame]] = {}
_SCENES_LOCK = threading.Lock()


@dataclass(frozen=True)
class Detection:
    label: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1


@dataclass(frozen=True)
class EncodedFrame:
    """A JPEG split for splicing: header (through SOS), coded data, and where each block row's data starts."""

    header: bytes
    coded: bytes  # entropy-coded data through the final EOI marker
    row_starts: tuple[int, ...]  # row_starts[k] = offset in ``coded`` of block row k


@dataclass(frozen=True)
class Stamp:
    """The coded data of a request's band (its block rows, no trailing marker)."""

    coded: bytes
    rows: int


def split_jpeg(data: bytes) -> EncodedFrame:
    """Split a baseline JPEG written with one restart interval per block row."""
    i = 2  # after SOI
    while True:
        if data[i] != 0xFF:
            raise ValueError("not a JPEG segment boundary")
        marker, length = data[i + 1], int.from_bytes(data[i + 2 : i + 4], "big")
        i += 2 + length
        if marker == 0xDA:  # start of scan: coded data follows
            header, coded = data[:i], data[i:]
            return EncodedFrame(header, coded, (0, *(m.end() for m in _RST.finditer(coded))))


class ImageRenderer:
    """Renders snapshots; thread-safe, scenes encoded once per variant."""

    def __init__(self, width: int = 1280, height: int = 720, quality: int = 85, variants: int = 4) -> None:
        if width < 320 or height < 240:
            raise ValueError(f"viziosense image size must be at least 320x240, got {width}x{height}")
        if not 1 <= quality <= 95:
            raise ValueError(f"viziosense image quality must be 1..95, got {quality}")
        self.width = width
        self.height = height
        self.quality = quality
        self.variants = max(1, variants)
        scale = height / 720
        self._font_title = ImageFont.load_default(size=max(14, round(34 * scale)))
        self._font_text = ImageFont.load_default(size=max(12, round(24 * scale)))
        self._font_label = ImageFont.load_default(size=max(10, round(20 * scale)))

    def warm_up(self) -> None:
        """Encode every scene variant now (~100 ms each) rather than on the first requests."""
        for variant in range(self.variants):
            self._scene(variant)

    def stamp(self, variant: int, title: str, lines: list[str]) -> Stamp:
        """Encode the band for one request: ``title`` and ``lines`` in white on black (runs in a thread)."""
        self._scene(variant)  # make sure the scene exists before a download needs it
        pad = max(6, self.height // 80)
        title_h = self._font_title.size + pad
        line_h = self._font_text.size + pad // 2
        rows = -(-(pad + title_h + line_h * len(lines) + pad) // MCU)
        rows = min(rows, self.height // MCU - 1)
        band = Image.new("RGB", (self.width, rows * MCU), (0, 0, 0))
        draw = ImageDraw.Draw(band)
        draw.text((pad * 2, pad), title, font=self._font_title, fill=(255, 255, 255))
        for i, line in enumerate(lines):
            draw.text((pad * 2, pad + title_h + i * line_h), line, font=self._font_text, fill=(200, 230, 255))
        coded = split_jpeg(self._encode(band)).coded
        return Stamp(coded[:-2], rows)  # drop EOI

    def compose(self, variant: int, stamp: Stamp, annotated: bool) -> bytes:
        """The full JPEG: cached header + band rows + restart marker + cached rows below the band."""
        frame = self._scene(variant)[1 if annotated else 0]
        marker = bytes((0xFF, 0xD0 + (stamp.rows - 1) % 8))
        return b"".join((frame.header, stamp.coded, marker, frame.coded[frame.row_starts[stamp.rows] :]))

    # --- scenes -------------------------------------------------------------------------------------
    def _scene(self, variant: int) -> tuple[EncodedFrame, EncodedFrame]:
        key = (self.width, self.height, self.quality, variant % self.variants)
        with _SCENES_LOCK:
            scene = _SCENES.get(key)
            if scene is None:
                raw, detections, tags, summary = self._draw_scene(key[3])
                annotated = raw.copy()
                self._annotate(annotated, detections, tags, summary)
                scene = _SCENES[key] = (
                    split_jpeg(self._encode(raw)),
                    split_jpeg(self._encode(annotated)),
                )
            return scene

    def _draw_scene(self, variant: int) -> tuple[Image.Image, list[Detection], list[Image.Image], str]:
        w, h = self.width, self.height
        rng = random.Random(f"viziosense-scene-{variant}")
        horizon = int(h * rng.uniform(0.28, 0.38))
        sky_top = (rng.randint(70, 120), rng.randint(110, 160), rng.randint(170, 225))
        sky_low = (rng.randint(170, 210), rng.randint(180, 215), rng.randint(200, 235))
        img = Image.new("RGB", (w, h), (rng.randint(70, 95),) * 3)  # asphalt
        gradient = Image.linear_gradient("L").resize((w, horizon))
        img.paste(
            Image.composite(
                Image.new("RGB", (w, horizon), sky_low), Image.new("RGB", (w, horizon), sky_top), gradient
            )
        )
        draw = ImageDraw.Draw(img)
        x = 0
        while x < w:  # buildings on the horizon
            bw, bh = rng.randint(w // 16, w // 6), rng.randint(h // 12, h // 4)
            shade = rng.randint(90, 170)
            draw.rectangle([x, horizon - bh, x + bw, horizon], fill=(shade, shade - 10, shade - 20))
            for wy in range(horizon - bh + 8, horizon - 8, max(8, h // 40)):
                draw.line([x + 6, wy, x + bw - 6, wy], fill=(shade + 40, shade + 40, shade + 20), width=2)
            x += bw + rng.randint(0, w // 40)
        detections: list[Detection] = []
        rows = 3
        row_h = (h - horizon) // rows
        bay_w = w // 10
        for row in range(rows):  # parking bays and parked vehicles: the annotated frame boxes these
            y0 = horizon + row * row_h + row_h // 6
            for col in range(10):
                bx = col * bay_w
                draw.line([bx, y0, bx, y0 + row_h * 2 // 3], fill=(235, 235, 235), width=max(2, w // 400))
                if rng.random() < 0.55:
                    kind = "truck" if rng.random() < 0.15 else "car"
                    cw, ch = int(bay_w * rng.uniform(0.62, 0.8)), int(row_h * rng.uniform(0.42, 0.58))
                    cx, cy = bx + (bay_w - cw) // 2, y0 + (row_h * 2 // 3 - ch) // 2
                    colour = tuple(rng.randint(20, 235) for _ in range(3))
                    draw.rounded_rectangle([cx, cy, cx + cw, cy + ch], radius=max(4, cw // 8), fill=colour)
                    draw.rectangle(
                        [cx + cw // 6, cy + ch // 6, cx + cw * 5 // 6, cy + ch // 2], fill=(40, 50, 60)
                    )
                    detections.append(Detection(kind, (cx, cy, cx + cw, cy + ch)))
        for _ in range(rng.randint(1, 3)):  # pedestrians
            px, py = rng.randint(0, w - 40), rng.randint(horizon + 10, h - 120)
            pw, ph = max(12, w // 60), max(40, h // 9)
            draw.ellipse([px + pw // 4, py, px + pw * 3 // 4, py + pw // 2], fill=(230, 200, 170))
            draw.rectangle([px, py + pw // 2, px + pw, py + ph], fill=(rng.randint(20, 200), 60, 120))
            detections.append(Detection("person", (px - 2, py - 2, px + pw + 2, py + ph + 2)))
        # Sensor-like noise: real frames do not compress to a few KB, and neither should ours.
        noisy = Image.blend(img, Image.effect_noise((w, h), NOISE_SIGMA).convert("RGB"), NOISE_WEIGHT)
        tags = [self._tag(d.label, rng.uniform(0.71, 0.99)) for d in detections]
        counts: dict[str, int] = {}
        for d in detections:
            counts[d.label] = counts.get(d.label, 0) + 1
        summary = "ANNOTATED  " + "  ".join(f"{label}: {n}" for label, n in sorted(counts.items()))
        return noisy, detections, tags, summary

    def _tag(self, label: str, confidence: float) -> Image.Image:
        text = f"{label} {confidence:.2f}"
        tag = Image.new(
            "RGB",
            (int(self._font_label.getlength(text)) + 6, self._font_label.size + 4),
            BOX_COLOURS.get(label, (255, 255, 255)),
        )
        ImageDraw.Draw(tag).text((3, 1), text, font=self._font_label, fill=(0, 0, 0))
        return tag

    def _annotate(
        self, img: Image.Image, detections: list[Detection], tags: list[Image.Image], summary: str
    ) -> None:
        draw = ImageDraw.Draw(img)
        width = max(2, self.width // 320)
        for det, tag in zip(detections, tags, strict=True):
            draw.rectangle(det.box, outline=BOX_COLOURS.get(det.label, (255, 255, 255)), width=width)
            img.paste(tag, (det.box[0], max(0, det.box[1] - tag.height)))
        tw = int(draw.textlength(summary, font=self._font_text)) + 20
        th = self._font_text.size + 14
        draw.rectangle([self.width - tw, self.height - th, self.width, self.height], fill=(180, 20, 20))
        draw.text(
            (self.width - tw + 10, self.height - th + 6), summary, font=self._font_text, fill=(255, 255, 255)
        )

    def _encode(self, img: Image.Image) -> bytes:
        """Baseline JPEG, standard Huffman tables, 4:2:0, a restart marker after every block row:
        the same settings for scenes and bands, so their coded rows can be spliced."""
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=self.quality, subsampling=2, optimize=False, restart_marker_rows=1)
        return buf.getvalue()
