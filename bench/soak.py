"""Memory soak: a few hundred requests of mixed sizes, then small ones, with resident memory
of the worker and the API sampled after every request.

    python -m bench.soak [--requests 300]

Starts its own Redis, one worker and the API on 127.0.0.1 and writes the RSS
curve into docs/benchmark.md between the soak markers. The first two thirds
cycle through a collage of 64 faces (face crops of the shipped photos on an
8x8 grid), a 12-megapixel photo and small one-face photos. The last third
sends small photos only, so memory that levels off stays flat there.
"""

import argparse
import base64
import io
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from PIL import Image

from bench.corpus import shipped_photo_paths
from bench.processes import start_api, start_worker, wait_for_workers
from scripts.redis_server import start_redis

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmark.md"
START_MARKER = "<!-- soak:start (written by python -m bench.soak; edits here are lost) -->"
END_MARKER = "<!-- soak:end -->"
COLLAGE_GRID = 8
COLLAGE_CELL = 128
MIB = 1024 * 1024


@dataclass
class Sample:
    """Resident memory of both processes after one request."""

    index: int
    kind: str
    status: int
    worker_rss: int
    api_rss: int


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def face_collage(http: httpx.Client) -> bytes:
    """Tile 64 face crops of the shipped group photos, found by the service itself."""
    crops: list[Image.Image] = []
    paths = shipped_photo_paths()
    for name in ("t1.jpg", "players.jpg", "gdp.jpg", "astronaut.png"):
        data = paths[name].read_bytes()
        response = http.post("/", json={"inputs": [b64(data)]})
        response.raise_for_status()
        photo = Image.open(io.BytesIO(data)).convert("RGB")
        for face in response.json()[0]:
            x1, y1, x2, y2 = face["bbox"]
            # A margin around the box keeps the whole head in the crop, as in a real photo.
            margin = 0.4 * max(x2 - x1, y2 - y1)
            box = (x1 - margin, y1 - margin, x2 + margin, y2 + margin)
            crops.append(photo.crop(tuple(round(value) for value in box)))
    side = COLLAGE_GRID * COLLAGE_CELL
    collage = Image.new("RGB", (side, side), (128, 128, 128))
    for cell in range(COLLAGE_GRID * COLLAGE_GRID):
        crop = crops[cell % len(crops)].resize((COLLAGE_CELL, COLLAGE_CELL))
        row, column = divmod(cell, COLLAGE_GRID)
        collage.paste(crop, (column * COLLAGE_CELL, row * COLLAGE_CELL))
    return jpeg(collage)


def twelve_megapixel_photo() -> bytes:
    photo = Image.open(shipped_photo_paths()["t1.jpg"]).convert("RGB")
    return jpeg(photo.resize((4000, 3000)))


def rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def run_soak(
    http: httpx.Client, worker_pid: int, api_pid: int, requests: int
) -> tuple[list[Sample], int]:
    """Send `requests` requests, mixed for the first two thirds, then small ones.

    Returns the samples and the number of faces found in the collage.
    """
    small = b64(shipped_photo_paths()["yaoming.jpg"].read_bytes())
    collage = b64(face_collage(http))
    large = b64(twelve_megapixel_photo())
    mixed_cycle = [("collage", collage), ("12mp", large), ("small", small), ("small", small)]
    collage_faces = len(http.post("/", json={"inputs": [collage]}).json()[0])

    samples: list[Sample] = []
    mixed_until = requests * 2 // 3
    for index in range(requests):
        kind, text = (
            mixed_cycle[index % len(mixed_cycle)] if index < mixed_until else ("small", small)
        )
        status = http.post("/", json={"inputs": [text]}).status_code
        samples.append(Sample(index, kind, status, rss(worker_pid), rss(api_pid)))
    return samples, collage_faces


def growth(samples: list[Sample], field: str) -> float:
    """Return how much RSS grew over the second half, relative to the end of the first half."""
    values = [getattr(sample, field) for sample in samples]
    half = len(values) // 2
    return max(values[half:]) / max(values[:half]) - 1


def markdown(samples: list[Sample], collage_faces: int, seconds: float) -> str:
    checkpoints = sorted({round(len(samples) * step / 10) - 1 for step in range(1, 11)})
    rows = "\n".join(
        f"| {samples[i].index + 1} | {samples[i].kind} | {samples[i].worker_rss / MIB:.0f} | "
        f"{samples[i].api_rss / MIB:.0f} |"
        for i in checkpoints
    )
    statuses = sorted({sample.status for sample in samples})
    return f"""{START_MARKER}

### Memory soak

`python -m bench.soak --requests {len(samples)}` on {platform.machine()}, {psutil.cpu_count()}
cores, {datetime.now(UTC):%Y-%m-%d}: one worker, one API process, {len(samples)} requests of one
image each in {seconds:.0f} s, statuses {statuses}. The first two thirds cycle through a
{COLLAGE_GRID}x{COLLAGE_GRID} collage of face crops ({collage_faces} faces found), a
12-megapixel photo and two small one-face photos; the last third sends small photos only.

| after request | kind | worker RSS (MiB) | API RSS (MiB) |
|---:|---|---:|---:|
{rows}

Growth of the peak RSS in the second half over the first half: worker
{growth(samples, "worker_rss"):+.1%}, API {growth(samples, "api_rss"):+.1%}.

{END_MARKER}"""


def write_section(section: str) -> None:
    text = DOC.read_text()
    if START_MARKER in text:
        before = text[: text.index(START_MARKER)]
        after = text[text.index(END_MARKER) + len(END_MARKER) :]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="Requests to send.")
    arguments = parser.parse_args()

    log_dir = Path(tempfile.mkdtemp(prefix="eventsnap-soak-"))
    server = start_redis()
    worker = start_worker(log_dir, 0, server.url, {"WORKER_METRICS_PORT": "0"})
    api = None
    try:
        wait_for_workers([worker], server.url)
        api, base_url = start_api(log_dir, server.url)
        started = time.monotonic()
        with httpx.Client(base_url=base_url, timeout=120) as http:
            samples, collage_faces = run_soak(http, worker.pid, api.pid, arguments.requests)
        section = markdown(samples, collage_faces, time.monotonic() - started)
    finally:
        if api is not None:
            api.stop()
        worker.stop()
        server.stop()
    write_section(section)
    print(section)


if __name__ == "__main__":
    main()
