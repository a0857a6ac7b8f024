"""Turn decoded images into the response's faces: detect, sort, align, embed.

The hot path of the worker. Per chunk of images: decode, detect in batches of
equal input size, align every face, then embed all faces of the chunk in one
recognizer run. Full-resolution images are released as soon as their faces
are aligned, so memory follows the detector batch, not the task size.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from common.contract import DetectionParams, ErrorCode, ImageError
from worker.decode import DecodeError, decode_image
from worker.metrics import DETECTOR_BATCH, FACES, IMAGES, RECOGNIZER_BATCH, STAGE_SECONDS
from worker.models import Detections, FaceModels, FloatArray, ImageArray

logger = logging.getLogger(__name__)


@dataclass
class ImageFaces:
    """The kept faces of one image, largest first, before embedding."""

    boxes: FloatArray
    scores: FloatArray
    keypoints: FloatArray
    first_crop: int  # index of this image's first face in the chunk's crop list


@dataclass
class StageTimer:
    """Wall time per pipeline stage, in milliseconds, summed over a task."""

    totals: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.totals[stage] = self.totals.get(stage, 0.0) + elapsed * 1000
        STAGE_SECONDS.labels(stage).observe(elapsed)


def select_faces(
    detections: Detections, width: int, height: int, max_faces: int, cap: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Clip boxes to the image, sort largest first and keep at most max_faces (0 = all).

    Landmarks are left as predicted, even outside the image.
    """
    boxes = detections.boxes.copy()
    np.clip(boxes[:, 0::2], 0, width, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, height, out=boxes[:, 1::2])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-areas, kind="stable")
    limit = min(max_faces, cap) if max_faces > 0 else cap
    order = order[:limit]
    return boxes[order], detections.scores[order], detections.keypoints[order]


def face_documents(faces: ImageFaces, embeddings: FloatArray) -> list[dict[str, object]]:
    """Build the response dictionaries of one image's faces."""
    documents: list[dict[str, object]] = []
    for offset in range(len(faces.scores)):
        documents.append(
            {
                "bbox": faces.boxes[offset].tolist(),
                "kps": faces.keypoints[offset].tolist(),
                "det_score": float(faces.scores[offset]),
                "embedding": embeddings[faces.first_crop + offset],
            }
        )
    return documents


class ChunkProcessor:
    """Process one chunk of image files with loaded models."""

    def __init__(self, models: FaceModels, max_faces_per_image: int) -> None:
        self.models = models
        self.max_faces_per_image = max_faces_per_image

    def process(
        self,
        files: Sequence[bytes | None],
        first_index: int,
        params: DetectionParams,
        timer: StageTimer,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> tuple[list[list[dict[str, object]] | None], list[ImageError]]:
        """Return one face list (or None on failure) per file, and the per-image errors."""
        errors: list[ImageError] = []
        faces: list[ImageFaces | None] = [None] * len(files)
        crops: list[ImageArray] = []
        batch_size = self.models.detector.batch_size

        for start in range(0, len(files), batch_size):
            if should_stop():
                break
            images: list[ImageArray] = []
            positions: list[int] = []
            started = time.perf_counter()
            for position in range(start, min(start + batch_size, len(files))):
                data = files[position]
                index = first_index + position
                if data is None:
                    message = "the image bytes expired from Redis before a worker read them"
                    errors.append(image_error(index, "image_missing", f"{message}; resubmit it"))
                    continue
                try:
                    images.append(decode_image(data))
                    positions.append(position)
                except DecodeError as error:
                    logger.warning("Image %d failed to decode: %s", index, error)
                    errors.append(image_error(index, "image_decode_failed", str(error)))
            timer.add("decode", started)

            started = time.perf_counter()
            DETECTOR_BATCH.observe(len(images))
            detections = self.models.detector.detect(
                images, params["det_conf"], params["nms_thresh"]
            )
            timer.add("detect", started)

            started = time.perf_counter()
            for position, image, found in zip(positions, images, detections, strict=True):
                height, width = image.shape[:2]
                boxes, scores, keypoints = select_faces(
                    found, width, height, params["max_faces"], self.max_faces_per_image
                )
                faces[position] = ImageFaces(boxes, scores, keypoints, len(crops))
                crops.extend(self.models.recognizer.align(image, points) for points in keypoints)
            timer.add("align", started)

        started = time.perf_counter()
        RECOGNIZER_BATCH.observe(len(crops))
        embeddings = self.models.recognizer.embed(crops)
        timer.add("embed", started)

        IMAGES.labels("failed").inc(len(errors))
        IMAGES.labels("succeeded").inc(sum(item is not None for item in faces))
        FACES.inc(len(crops))

        results: list[list[dict[str, object]] | None] = [
            None if item is None else face_documents(item, embeddings) for item in faces
        ]
        return results, errors


def image_error(index: int, code: ErrorCode, message: str) -> ImageError:
    """Build a per-image error entry."""
    return {"index": index, "code": code, "message": message}
