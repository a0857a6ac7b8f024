"""POST / end to end: real API, Redis, worker and ONNX models on real photos."""

import base64

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.samples import (
    b64,
    encode,
    noise_image,
    read,
    skimage_image,
    t1_image,
    t1_jpg,
    vectron_image,
    with_exif_orientation,
)


def post(client: httpx.Client, images: list[bytes], **params: object) -> list[list[dict]]:
    response = client.post("/", json={"inputs": [b64(data) for data in images], **params})
    assert response.status_code == 200, response.text
    faces: list[list[dict]] = response.json()
    return faces


def box_iou(first: list[float], second: list[float]) -> float:
    x1, y1 = max(first[0], second[0]), max(first[1], second[1])
    x2, y2 = min(first[2], second[2]), min(first[3], second[3])
    overlap = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (
        second[3] - second[1]
    )
    return overlap / (area - overlap)


def area(face: dict) -> float:
    x1, y1, x2, y2 = face["bbox"]
    return (x2 - x1) * (y2 - y1)


def test_t1_returns_six_unit_embeddings(client: httpx.Client) -> None:
    faces = post(client, [read(t1_jpg())])

    assert len(faces) == 1
    assert len(faces[0]) == 6
    for face in faces[0]:
        assert len(face["bbox"]) == 4
        assert len(face["kps"]) == 5
        assert all(len(point) == 2 for point in face["kps"])
        assert 0.5 <= face["det_score"] <= 1.0
        assert len(face["embedding"]) == 512
        assert abs(np.linalg.norm(face["embedding"]) - 1.0) < 1e-4


def test_faces_sorted_largest_first(client: httpx.Client) -> None:
    faces = post(client, [read(vectron_image("players.jpg"))])[0]

    areas = [area(face) for face in faces]
    assert len(faces) == 22
    assert areas == sorted(areas, reverse=True)


@pytest.mark.parametrize("limit", [1, 3, 22, 50])
def test_max_faces_returns_prefix_of_full_list(client: httpx.Client, limit: int) -> None:
    photo = read(vectron_image("players.jpg"))
    full = post(client, [photo])[0]
    limited = post(client, [photo], max_faces=limit)[0]

    assert len(limited) == min(limit, len(full))
    assert [face["bbox"] for face in limited] == [face["bbox"] for face in full[:limit]]
    for short, long in zip(limited, full, strict=False):
        assert np.dot(short["embedding"], long["embedding"]) > 0.9999


def test_results_follow_input_order(client: httpx.Client) -> None:
    images = [
        read(skimage_image("coffee.png")),
        read(t1_jpg()),
        read(skimage_image("astronaut.png")),
        read(vectron_image("gdp.jpg")),
    ]
    faces = post(client, images)

    assert [len(item) for item in faces] == [0, 6, 1, 5]


def test_boxes_clipped_to_image(client: httpx.Client) -> None:
    photo = t1_image()
    full = post(client, [encode(photo, "PNG")])[0]
    # Cut through the middle of the leftmost face, so its box reaches past the edge.
    leftmost = min(full, key=lambda face: face["bbox"][0])
    x1, _, x2, _ = leftmost["bbox"]
    cut = int((x1 + x2) / 2)
    cropped = photo.crop((cut, 0, photo.width, photo.height))

    faces = post(client, [encode(cropped, "PNG")], det_conf=0.3)[0]

    assert faces, "the cropped photo still shows faces"
    for face in faces:
        left, top, right, bottom = face["bbox"]
        assert 0 <= left <= right <= cropped.width
        assert 0 <= top <= bottom <= cropped.height
    assert min(face["bbox"][0] for face in faces) == 0.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_applied(client: httpx.Client, orientation: int) -> None:
    photo = t1_image()
    upright = post(client, [encode(photo, "JPEG", quality=95)])[0]
    rotated = post(client, [with_exif_orientation(photo, orientation)])[0]

    assert len(rotated) == len(upright) == 6
    for face in upright:
        match = max(rotated, key=lambda other: box_iou(face["bbox"], other["bbox"]))
        assert box_iou(face["bbox"], match["bbox"]) > 0.9
        assert np.dot(face["embedding"], match["embedding"]) > 0.95


def image_formats() -> dict[str, bytes]:
    photo = t1_image()
    grey16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257).astype(np.uint16)
    return {
        "jpeg_baseline": encode(photo, "JPEG", quality=92),
        "jpeg_progressive": encode(photo, "JPEG", quality=92, progressive=True),
        "jpeg_cmyk": encode(photo.convert("CMYK"), "JPEG", quality=92),
        "png_alpha": encode(photo.convert("RGBA"), "PNG"),
        "png_16bit": encode(Image.fromarray(grey16), "PNG"),
        "png_palette": encode(photo.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "png_grey": encode(photo.convert("L"), "PNG"),
        "webp": encode(photo, "WEBP", quality=90),
        "bmp": encode(photo, "BMP"),
        "tiff": encode(photo, "TIFF"),
        "gif_animated": encode(
            photo, "GIF", save_all=True, append_images=[noise_image(*photo.size)]
        ),
    }


FORMATS = image_formats()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_format_decoded_to_six_faces(client: httpx.Client, name: str) -> None:
    data = FORMATS[name]
    faces = post(client, [data])[0]

    assert len(faces) == 6


def test_16bit_png_decoded_to_8bit_levels(client: httpx.Client) -> None:
    """A 16-bit PNG scaled to 8 bits gives the same embeddings as its 8-bit twin."""
    grey = t1_image().convert("L")
    grey16 = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)
    eight, sixteen = post(client, [encode(grey, "PNG"), encode(grey16, "PNG")])

    assert len(eight) == len(sixteen) == 6
    for first, second in zip(eight, sixteen, strict=True):
        assert np.dot(first["embedding"], second["embedding"]) > 0.9999


def base64_variants(data: bytes) -> dict[str, str]:
    plain = base64.b64encode(data).decode()
    return {
        "data_url": "data:image/jpeg;base64," + plain,
        "line_breaks": "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76)),
        "spaces_and_crlf": " " + plain[:1000] + "\r\n " + plain[1000:] + "\t",
        "no_padding": plain.rstrip("="),
        "url_safe": base64.urlsafe_b64encode(data).decode(),
        "url_safe_no_padding": base64.urlsafe_b64encode(data).decode().rstrip("="),
    }


def test_base64_variants_accepted(client: httpx.Client) -> None:
    # Trim the file by one byte until its base64 needs padding, and make sure the
    # URL-safe alphabet differs from the standard one, so both variants are exercised.
    data = encode(t1_image(), "JPEG", quality=90)
    while len(data) % 3 == 0:
        data += b"\x00"
    variants = base64_variants(data)
    assert "=" in base64.b64encode(data).decode()
    assert variants["url_safe"] != base64.b64encode(data).decode()

    response = client.post("/", json={"inputs": list(variants.values())})

    assert response.status_code == 200, response.text
    assert [len(faces) for faces in response.json()] == [6] * len(variants)


@pytest.mark.parametrize("size", [(1, 1), (1, 2000), (2000, 1), (7, 5)])
def test_tiny_and_thin_images_return_no_faces(client: httpx.Client, size: tuple[int, int]) -> None:
    faces = post(client, [encode(Image.new("RGB", size, (128, 128, 128)), "PNG")])

    assert faces == [[]]


def test_photo_without_faces_returns_empty_list(client: httpx.Client) -> None:
    assert post(client, [read(skimage_image("coffee.png"))]) == [[]]


def test_det_conf_filters_scores(client: httpx.Client) -> None:
    photo = read(vectron_image("players.jpg"))
    strict = post(client, [photo], det_conf=0.8)[0]
    loose = post(client, [photo], det_conf=0.3)[0]

    assert all(face["det_score"] >= 0.8 for face in strict)
    assert len(strict) < 22 <= len(loose)


def test_response_carries_request_id(client: httpx.Client) -> None:
    response = client.post(
        "/",
        json={"inputs": [b64(read(vectron_image("yaoming.jpg")))]},
        headers={"X-Request-ID": "test-request-42"},
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"] == "test-request-42"


def test_png_with_alpha_has_same_faces_as_opaque(client: httpx.Client) -> None:
    photo = t1_image()
    opaque, transparent = post(client, [encode(photo, "PNG"), encode(photo.convert("RGBA"), "PNG")])

    assert len(opaque) == len(transparent) == 6
    assert [face["bbox"] for face in opaque] == [face["bbox"] for face in transparent]


def test_large_batch_returns_every_image(client: httpx.Client) -> None:
    images = [read(vectron_image("yaoming.jpg"))] * 10 + [read(skimage_image("coffee.png"))]
    faces = post(client, images)

    assert [len(item) for item in faces] == [1] * 10 + [0]


@pytest.mark.parametrize("image_format", ["PNG", "WEBP"])
def test_malformed_exif_left_unrotated(client: httpx.Client, image_format: str) -> None:
    """Pillow raises on a broken EXIF block; the pixels are still decoded, unrotated."""
    data = encode(t1_image(), image_format, exif=b"Exif\x00\x00" + b"\x00" * 8)

    faces = post(client, [data])

    assert len(faces[0]) == 6
