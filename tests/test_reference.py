"""The service agrees with insightface's own FaceAnalysis on the same models and photos."""

import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.samples import REFERENCE_PHOTOS, b64, read
from tests.test_detect import box_iou
from worker.model_files import EMBEDDED_FILES, embedded_model_dir


@pytest.fixture(scope="module")
def face_analysis(tmp_path_factory: pytest.TempPathFactory) -> object:
    """insightface's FaceAnalysis on a folder holding only the two embedded models."""
    from insightface.app import FaceAnalysis

    folder = tmp_path_factory.mktemp("buffalo_s")
    for name in EMBEDDED_FILES:
        (folder / name).symlink_to(embedded_model_dir() / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FaceAnalysis(
            name=str(folder),
            allowed_modules=["detection", "recognition"],
            providers=["CPUExecutionProvider"],
        )
    analysis.prepare(ctx_id=-1, det_size=(640, 640))
    return analysis


def clip_box(box: np.ndarray, width: int, height: int) -> list[float]:
    return [
        float(np.clip(box[0], 0, width)),
        float(np.clip(box[1], 0, height)),
        float(np.clip(box[2], 0, width)),
        float(np.clip(box[3], 0, height)),
    ]


@pytest.mark.parametrize("name", sorted(REFERENCE_PHOTOS))
def test_service_matches_face_analysis(
    client: httpx.Client, face_analysis: object, name: str
) -> None:
    locate: Callable[[], Path] = REFERENCE_PHOTOS[name]
    path = locate()
    image = cv2.imread(str(path))
    height, width = image.shape[:2]
    expected = face_analysis.get(image)  # type: ignore[attr-defined]

    response = client.post("/", json={"inputs": [b64(read(path))]})
    assert response.status_code == 200
    faces = response.json()[0]

    assert len(faces) == len(expected)
    assert len(faces) > 0
    for reference in expected:
        reference_box = clip_box(reference.bbox, width, height)
        match = max(faces, key=lambda face: box_iou(face["bbox"], reference_box))
        embedding = reference.embedding / np.linalg.norm(reference.embedding)
        assert box_iou(match["bbox"], reference_box) >= 0.98
        assert float(np.dot(match["embedding"], embedding)) >= 0.999
        assert abs(match["det_score"] - float(reference.det_score)) < 0.01
