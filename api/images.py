"""Validate request images: base64 decoding, format sniffing and header-only size checks.

Runs in a worker thread, never on the event loop. Nothing here decodes pixels:
the image size comes from the file header, so a small file that claims
30000x30000 pixels is rejected without allocating its pixels.
"""

import binascii
import re
from dataclasses import dataclass
from io import BytesIO

import pybase64
from PIL import Image, UnidentifiedImageError

# The size check below replaces Pillow's decompression-bomb guard, which would
# raise with a less useful message for limits the operator chose.
Image.MAX_IMAGE_PIXELS = None

ACCEPTED_FORMATS = "JPEG, PNG, WebP, BMP, TIFF or GIF"
DATA_URL = re.compile(rb"^data:[^,]{0,200}?;base64,", re.IGNORECASE)
WHITESPACE = b" \t\n\r\x0b\x0c"
URL_SAFE = bytes.maketrans(b"-_", b"+/")
# Pillow names the in-memory stream in some messages; clients need not see its address.
STREAM_REPR = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


class ImageInputError(ValueError):
    """One input image is invalid; `kind` becomes the 422 error's `type`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class CheckedImage:
    """An image file that passed validation, with the format and size from its header."""

    data: bytes
    format: str
    width: int
    height: int


def decode_base64(text: str) -> bytes:
    """Decode standard or URL-safe base64 with an optional data-URL prefix.

    Whitespace and line breaks anywhere are ignored and missing padding is added.
    """
    if not text.isascii():
        raise ImageInputError("base64_invalid", "contains characters that are not base64")
    if text[:5].lower() == "data:":
        text = DATA_URL.sub(b"", text.encode("ascii"), count=1).decode("ascii")

    # Fast path: plain standard base64, as most clients send it. Decoding a 4 MB
    # photo with pybase64 takes under a millisecond, while the normalisation below
    # copies the text twice, so it only runs when the fast path fails.
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass

    raw = text.encode("ascii").translate(URL_SAFE, WHITESPACE).rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageInputError("base64_invalid", f"is not valid base64 ({error})") from error


def sniff_format(data: bytes) -> str | None:
    """Return the accepted format name from the file's magic bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "TIFF"
    return None


def name_unsupported_format(data: bytes) -> str | None:
    """Name a known but unsupported format, so the error message can name it."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG"
    if data.startswith(b"%PDF"):
        return "PDF"
    return None


def check_image(text: str, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Decode one base64 input, then check it like `check_image_bytes`."""
    # Base64 inflates by 4/3; the extra tenth allows for line breaks and a data-URL
    # prefix. A longer string is rejected before it is decoded.
    if len(text) > max_bytes * 4 // 3 * 11 // 10 + 1024:
        raise ImageInputError(
            "image_too_large",
            f"is over the limit of {max_bytes} bytes per image (as base64, "
            f"{len(text)} characters); send a smaller or more compressed image",
        )

    return check_image_bytes(decode_base64(text), max_bytes, max_pixels)


def check_image_bytes(data: bytes, max_bytes: int, max_pixels: int) -> CheckedImage:
    """Check an image file's format and size from its header, or raise ImageInputError."""
    if not data:
        raise ImageInputError("image_empty", "is empty; send the bytes of an image file")
    if len(data) > max_bytes:
        raise ImageInputError(
            "image_too_large",
            f"is {len(data)} bytes, over the limit of {max_bytes} bytes per image; "
            "send a smaller or more compressed image",
        )

    image_format = sniff_format(data)
    if image_format is None:
        named = name_unsupported_format(data)
        description = (
            f"is {named}, which is not supported" if named else "is not a recognised image file"
        )
        raise ImageInputError("image_format_unsupported", f"{description}; send {ACCEPTED_FORMATS}")

    try:
        with Image.open(BytesIO(data)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(
            "image_invalid",
            f"has a {image_format} signature but an unreadable header "
            f"({STREAM_REPR.sub('', str(error)).strip()}); "
            f"send a complete {ACCEPTED_FORMATS} file",
        ) from error

    if width < 1 or height < 1:
        raise ImageInputError("image_invalid", f"declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageInputError(
            "image_too_many_pixels",
            f"is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}; "
            "downscale it before sending",
        )
    return CheckedImage(data, image_format, width, height)
