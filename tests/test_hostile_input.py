"""Hostile request bodies: each kind gets its exact status, never a 500 or a dead worker.

Cases that test_input_errors.py covers already (bombs declared in a PNG
header, SVG, HEIC, truncated bodies, tiny and thin images) are not repeated.
"""

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.samples import b64, encode, noise_image, read, t1_image, vectron_image

GOOD = b64(read(vectron_image("yaoming.jpg")))
JSON_HEADERS = {"content-type": "application/json"}


def post_raw(client: httpx.Client, body: bytes, path: str = "/") -> httpx.Response:
    return client.post(path, content=body, headers=JSON_HEADERS)


def error_types(response: httpx.Response) -> list[tuple[list, str]]:
    assert response.status_code == 422, response.text
    return [(error["loc"], error["type"]) for error in response.json()["detail"]]


def test_base64_far_over_limit_rejected(client: httpx.Client) -> None:
    # About 30 MiB once decoded, over MAX_IMAGE_BYTES (20 MiB) but under MAX_BODY_BYTES.
    text = "A" * (40 * 1024 * 1024)
    response = client.post("/", json={"inputs": [GOOD, text]})

    assert error_types(response) == [(["body", "inputs", 1], "image_too_large")]


@pytest.mark.parametrize("path", ["/", "/tasks"])
def test_deeply_nested_json_rejected(client: httpx.Client, path: str) -> None:
    depth = 100_000
    body = b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"
    response = post_raw(client, body, path)

    assert error_types(response) == [(["body"], "json_invalid")]


MALFORMED_BODIES = {
    "zero_bytes": b"",
    "not_utf8": b'{"inputs": ["\xff\xfe"]}',
    "trailing_garbage": b'{"inputs": ["abc"]} {}',
    "single_quotes": b"{'inputs': ['abc']}",
    "control_character": b'{"inputs": ["a\x00b"]',
}


@pytest.mark.parametrize("name", sorted(MALFORMED_BODIES))
def test_malformed_json_variants_rejected(client: httpx.Client, name: str) -> None:
    response = post_raw(client, MALFORMED_BODIES[name])

    assert error_types(response) == [(["body"], "json_invalid")]


WRONG_TYPES = [
    # (body, expected loc, expected type)
    (b"null", ["body"], "model_type"),
    (b"[]", ["body"], "model_type"),
    (b'"inputs"', ["body"], "model_type"),
    (b'{"inputs": null}', ["body", "inputs"], "list_type"),
    (b'{"inputs": "abc"}', ["body", "inputs"], "list_type"),
    (b'{"inputs": {"0": "abc"}}', ["body", "inputs"], "list_type"),
    (b'{"inputs": [["abc"]]}', ["body", "inputs", 0], "string_type"),
    (b'{"inputs": ["GOOD"], "max_faces": [1]}', ["body", "max_faces"], "int_type"),
    (b'{"inputs": ["GOOD"], "det_conf": {"value": 0.5}}', ["body", "det_conf"], "float_type"),
    (b'{"inputs": ["GOOD"], "parameters": [0.5]}', ["body", "parameters"], "model_type"),
]


@pytest.mark.parametrize(
    "body,loc,kind", WRONG_TYPES, ids=[case[0].decode() for case in WRONG_TYPES]
)
def test_wrong_types_rejected(client: httpx.Client, body: bytes, loc: list, kind: str) -> None:
    response = post_raw(client, body.replace(b"GOOD", GOOD.encode()))

    assert error_types(response) == [(loc, kind)]


NON_FINITE = [
    # (raw JSON value of the parameter, parameter, expected type)
    (b"NaN", "det_conf", "finite_number"),
    (b"Infinity", "det_conf", "finite_number"),
    (b"-Infinity", "nms_thresh", "finite_number"),
    (b"1e400", "det_conf", "finite_number"),
    (b"1e400", "max_faces", "finite_number"),
    (b"100000000000000000000000000000", "max_faces", "less_than_equal"),
    (b"-100000000000000000000000000000", "max_faces", "greater_than_equal"),
]


@pytest.mark.parametrize(
    "value,field,kind", NON_FINITE, ids=[f"{case[1]}={case[0].decode()}" for case in NON_FINITE]
)
def test_non_finite_and_huge_numbers_rejected(
    client: httpx.Client, value: bytes, field: str, kind: str
) -> None:
    body = b'{"inputs": ["%s"], "%s": %s}' % (GOOD.encode(), field.encode(), value)
    response = post_raw(client, body)

    assert error_types(response) == [(["body", field], kind)]


def test_huge_max_faces_in_parameters_rejected(client: httpx.Client) -> None:
    body = b'{"inputs": ["%s"], "parameters": {"max_faces": 1e30}}' % GOOD.encode()

    assert error_types(post_raw(client, body)) == [
        (["body", "parameters", "max_faces"], "int_parsing_size")
    ]


def test_largest_max_faces_accepted(client: httpx.Client) -> None:
    response = client.post("/", json={"inputs": [GOOD], "max_faces": 2**31 - 1})

    assert response.status_code == 200, response.text
    assert len(response.json()[0]) == 1


def test_zero_byte_image_rejected(client: httpx.Client) -> None:
    # base64 of zero bytes is the empty string; "=" alone decodes to zero bytes too.
    response = client.post("/", json={"inputs": [GOOD, "="]})

    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "inputs", 1]
    assert error["type"] in {"image_empty", "base64_invalid"}


def test_zero_byte_upload_rejected(client: httpx.Client) -> None:
    response = client.post("/upload", files=[("files", ("empty.jpg", b"", "image/jpeg"))])

    assert error_types(response) == [(["body", "files", 0], "image_empty")]


def test_animated_webp_uses_first_frame(client: httpx.Client) -> None:
    photo = t1_image()
    animated = encode(
        photo, "WEBP", save_all=True, append_images=[noise_image(*photo.size)], quality=90
    )
    assert Image.open(io.BytesIO(animated)).n_frames == 2
    response = client.post("/", json={"inputs": [b64(animated)]})

    assert response.status_code == 200, response.text
    assert len(response.json()[0]) == 6


def test_data_url_with_wrong_media_type_still_sniffed(client: httpx.Client) -> None:
    text = "data:text/html;base64," + base64.b64encode(read(vectron_image("yaoming.jpg"))).decode()
    response = client.post("/", json={"inputs": [text]})

    assert response.status_code == 200, response.text
    assert len(response.json()[0]) == 1


def test_worker_alive_after_hostile_inputs(client: httpx.Client) -> None:
    response = client.post("/", json={"inputs": [GOOD]})

    assert response.status_code == 200
    assert len(response.json()[0]) == 1
