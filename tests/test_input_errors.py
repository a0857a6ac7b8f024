"""Every kind of bad input gets its exact status, `loc` and error type, never a 500."""

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import ServiceProcess, start_api
from tests.samples import b64, encode, png_header_only, read, t1_image, t1_jpg, vectron_image

GOOD = b64(read(vectron_image("yaoming.jpg")))

SMALL_LIMITS = {
    "MAX_IMAGES_PER_REQUEST": "3",
    "MAX_IMAGE_BYTES": "100000",
    "MAX_IMAGE_PIXELS": "1000000",
    "MAX_BODY_BYTES": "600000",
}


@pytest.fixture(scope="module")
def limited(redis_url: str, logs_dir: Path, worker: ServiceProcess) -> Iterator[httpx.Client]:
    """A second API process with small limits, on the same Redis and worker."""
    service, base_url = start_api(redis_url, logs_dir / "api-limited.log", **SMALL_LIMITS)
    with httpx.Client(base_url=base_url, timeout=60) as http:
        yield http
    service.stop()


def only_error(response: httpx.Response) -> dict:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert len(detail) == 1, detail
    error: dict = detail[0]
    return error


def post_inputs(client: httpx.Client, inputs: list[str], **params: object) -> httpx.Response:
    return client.post("/", json={"inputs": inputs, **params})


def truncated_jpeg() -> bytes:
    data = encode(t1_image(), "JPEG", quality=90)
    return data[: len(data) // 3]


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64

IMAGE_CASES = [
    # (name, input string, expected type, words the message must contain)
    ("bad_base64", "not*base64!", "base64_invalid", "base64"),
    ("non_ascii", "ümlaut", "base64_invalid", "base64"),
    ("empty_string", "", "image_empty", "empty"),
    ("not_an_image", b64(b"hello, this is plain text"), "image_format_unsupported", "JPEG"),
    ("svg", b64(SVG), "image_format_unsupported", "SVG"),
    ("heic", b64(HEIC), "image_format_unsupported", "HEIC"),
    ("png_bomb_header", b64(png_header_only(30000, 30000)), "image_too_many_pixels", "30000x30000"),
    ("broken_png_header", b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10), "image_invalid", "PNG"),
]


@pytest.mark.parametrize("name,text,kind,words", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_rejected_with_index(
    client: httpx.Client, name: str, text: str, kind: str, words: str
) -> None:
    error = only_error(post_inputs(client, [GOOD, GOOD, text]))

    assert error["loc"] == ["body", "inputs", 2]
    assert error["type"] == kind
    assert error["msg"].startswith("Image 2 ")
    assert words in error["msg"]


def test_every_bad_image_listed(client: httpx.Client) -> None:
    response = post_inputs(client, ["???", GOOD, "", GOOD])

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [(item["loc"], item["type"]) for item in detail] == [
        (["body", "inputs", 0], "base64_invalid"),
        (["body", "inputs", 2], "image_empty"),
    ]


def test_truncated_jpeg_rejected_by_worker(client: httpx.Client) -> None:
    error = only_error(post_inputs(client, [GOOD, b64(truncated_jpeg())]))

    assert error["loc"] == ["body", "inputs", 1]
    assert error["type"] == "image_decode_failed"
    assert "truncated" in error["msg"]


PARAM_CASES = [
    ({"det_conf": 2}, ["body", "det_conf"], "less_than_equal"),
    ({"det_conf": -0.1}, ["body", "det_conf"], "greater_than_equal"),
    ({"det_conf": "high"}, ["body", "det_conf"], "float_parsing"),
    ({"nms_thresh": 1.5}, ["body", "nms_thresh"], "less_than_equal"),
    ({"max_faces": -1}, ["body", "max_faces"], "greater_than_equal"),
    ({"max_faces": 1.5}, ["body", "max_faces"], "int_from_float"),
    ({"max_faces": "all"}, ["body", "max_faces"], "int_parsing"),
]


@pytest.mark.parametrize("params,loc,kind", PARAM_CASES, ids=[str(c[0]) for c in PARAM_CASES])
def test_bad_parameter_rejected(client: httpx.Client, params: dict, loc: list, kind: str) -> None:
    error = only_error(post_inputs(client, [GOOD], **params))

    assert error["loc"] == loc
    assert error["type"] == kind


def test_missing_inputs_rejected(client: httpx.Client) -> None:
    error = only_error(client.post("/", json={"max_faces": 1}))

    assert error["loc"] == ["body", "inputs"]
    assert error["type"] == "missing"


def test_empty_inputs_rejected(client: httpx.Client) -> None:
    error = only_error(post_inputs(client, []))

    assert error["loc"] == ["body", "inputs"]
    assert error["type"] == "too_short"


def test_inputs_of_wrong_type_rejected(client: httpx.Client) -> None:
    error = only_error(client.post("/", json={"inputs": [GOOD, 42]}))

    assert error["loc"] == ["body", "inputs", 1]
    assert error["type"] == "string_type"


def test_malformed_json_rejected(client: httpx.Client) -> None:
    response = client.post(
        "/", content=b'{"inputs": ["abc"', headers={"content-type": "application/json"}
    )
    error = only_error(response)

    assert error["loc"] == ["body"]
    assert error["type"] == "json_invalid"


def test_too_many_images_rejected(limited: httpx.Client) -> None:
    error = only_error(post_inputs(limited, [GOOD] * 4))

    assert error["loc"] == ["body", "inputs"]
    assert error["type"] == "too_long"
    assert "limit of 3" in error["msg"]


def test_image_over_byte_limit_rejected(limited: httpx.Client) -> None:
    large = encode(t1_image(), "PNG")  # about 1 MB raw, well over 100000 bytes
    assert len(large) > 100_000
    error = only_error(post_inputs(limited, [GOOD, b64(large[:300_000])]))

    assert error["loc"] == ["body", "inputs", 1]
    assert error["type"] == "image_too_large"


def test_image_over_pixel_limit_rejected(limited: httpx.Client) -> None:
    big = encode(Image.new("RGB", (1001, 1000)), "PNG")
    error = only_error(post_inputs(limited, [b64(big)]))

    assert error["loc"] == ["body", "inputs", 0]
    assert error["type"] == "image_too_many_pixels"
    assert "1001x1000" in error["msg"]


def test_body_over_limit_gets_413(limited: httpx.Client) -> None:
    response = post_inputs(limited, ["A" * 700_000])

    assert response.status_code == 413
    assert "MAX_BODY_BYTES" in response.json()["detail"]


def test_body_over_limit_without_length_gets_413(limited: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"inputs": ["'
        for _ in range(80):
            yield b"A" * 10_000
        yield b'"]}'

    response = limited.post("/", content=chunks(), headers={"content-type": "application/json"})

    assert response.status_code == 413


def test_limits_still_accept_valid_request(limited: httpx.Client) -> None:
    response = post_inputs(limited, [GOOD, GOOD])

    assert response.status_code == 200
    assert [len(faces) for faces in response.json()] == [1, 1]


def test_worker_survives_bad_input(client: httpx.Client) -> None:
    post_inputs(client, [b64(truncated_jpeg())])
    response = post_inputs(client, [b64(read(t1_jpg()))])

    assert response.status_code == 200
    assert len(response.json()[0]) == 6


def test_base64_of_valid_image_with_bad_character_rejected(client: httpx.Client) -> None:
    text = base64.b64encode(read(t1_jpg())).decode()
    error = only_error(post_inputs(client, [text[:500] + "%" + text[500:]]))

    assert error["loc"] == ["body", "inputs", 0]
    assert error["type"] == "base64_invalid"


def test_unreadable_header_message_names_no_object(client: httpx.Client) -> None:
    error = only_error(post_inputs(client, [b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)]))

    assert error["type"] == "image_invalid"
    assert "BytesIO" not in error["msg"]
    assert "0x" not in error["msg"]
