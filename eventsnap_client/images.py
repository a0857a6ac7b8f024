"""Turn the images a caller passes into the base64 strings the service takes."""

import base64
import os
from collections.abc import Iterable
from pathlib import Path

# A str is sent as base64 text. A short str ending in one of these suffixes is
# almost certainly a file name passed by mistake, so it is rejected.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

ImageInput = bytes | bytearray | memoryview | str | os.PathLike[str]


def encode_image(image: ImageInput) -> str:
    """Return `image` as base64 text.

    bytes-like values are file contents, `os.PathLike` values (such as
    `pathlib.Path`) are files to read, and a `str` is already base64, with or
    without a `data:image/...;base64,` prefix.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return base64.b64encode(image).decode("ascii")
    if isinstance(image, os.PathLike):
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if isinstance(image, str):
        if len(image) < 4096 and Path(image).suffix.lower() in IMAGE_SUFFIXES:
            raise TypeError(
                f"{image!r} looks like a file name, but a str is sent as base64 text; "
                "pass pathlib.Path(...) to send a file."
            )
        return image
    raise TypeError(f"Expected bytes, a path or a base64 str, got {type(image).__name__}.")


def encode_images(images: Iterable[ImageInput]) -> list[str]:
    """Encode every image, raising ValueError for an empty batch."""
    if isinstance(images, bytes | bytearray | memoryview | str | os.PathLike):
        raise TypeError("images must be a list of images; wrap a single image in a list.")
    encoded = [encode_image(image) for image in images]
    if not encoded:
        raise ValueError("images is empty; pass at least one image.")
    return encoded
