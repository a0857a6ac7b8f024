"""The SCRFD detector and the ArcFace recognizer, loaded once per worker process.

Both models come from insightface's model zoo, which reads the ONNX graphs and
sets each model's input normalisation. Inference is batched here. The detector
runs over several letterboxed images in one call and the recognizer over all
aligned faces of a chunk in one call, which saves onnxruntime's per-call
overhead and suits a GPU's large batches.
"""

import logging
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import onnxruntime
from insightface.model_zoo import model_zoo
from insightface.model_zoo.scrfd import distance2bbox, distance2kps
from insightface.utils import face_align
from numpy.typing import NDArray

from worker.model_files import ModelFiles
from worker.providers import ProviderSpec, check_session_providers, requested_providers
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

# insightface's norm_crop calls scikit-image's SimilarityTransform.estimate,
# deprecated in scikit-image 0.26; the result is unchanged, and the warning would
# otherwise appear in the first task's log of every worker.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning)

FloatArray = NDArray[np.float32]
ImageArray = NDArray[np.uint8]


@dataclass
class Detections:
    """Faces found in one image, in original image pixels, before sorting."""

    boxes: FloatArray  # (n, 4) x1, y1, x2, y2
    scores: FloatArray  # (n,)
    keypoints: FloatArray  # (n, 5, 2)


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """Build session options: fixed thread counts, no spinning, no per-shape memory patterns.

    One intra-op pool of `threads` per session and no inter-op parallelism, so
    two workers on one machine each given half the cores do not oversubscribe
    it. Memory patterns are planned per input shape; with a varying number of
    faces per call they only grow the arena, so they are off.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    # With spinning on, a pool's threads keep spinning after each run, so the
    # detector's idle pool slows the recognizer that runs right after it. On 2
    # cores with 2 threads each, both models ran about twice as fast without it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # w600k_mbf.onnx declares a [1, 512] output; batched runs are correct but
    # log a shape warning on every call at the default severity.
    options.log_severity_level = 3
    return options


def load_zoo_model(path: str, providers: list[ProviderSpec], threads: int) -> Any:
    """Load one ONNX file through insightface's model zoo router."""
    model = model_zoo.get_model(path, providers=providers, sess_options=session_options(threads))
    if model is None:
        raise RuntimeError(f"insightface could not recognise the model {path}")
    return model


class FaceDetector:
    """SCRFD over batches of letterboxed images, with per-image NMS."""

    def __init__(self, zoo_model: Any, input_size: tuple[int, int], batch_size: int = 8) -> None:
        if zoo_model.taskname != "detection":
            raise RuntimeError(f"{zoo_model.model_file} is not a detection model")
        if not zoo_model.use_kps:
            raise RuntimeError(f"{zoo_model.model_file} predicts no keypoints; use a *_bnkps model")
        self.model = zoo_model
        self.session: onnxruntime.InferenceSession = zoo_model.session
        self.input_size = input_size
        self.batch_size = batch_size
        self.anchor_centers = {
            stride: self._anchor_centers(stride) for stride in zoo_model._feat_stride_fpn
        }

    def _anchor_centers(self, stride: int) -> FloatArray:
        width, height = self.input_size
        rows, cols = height // stride, width // stride
        grid_y, grid_x = np.mgrid[:rows, :cols]
        grid = np.stack([grid_x, grid_y], axis=-1).astype(np.float32)
        centers: FloatArray = (grid * stride).reshape(-1, 2)
        if self.model._num_anchors > 1:
            centers = np.repeat(centers, self.model._num_anchors, axis=0)
        return centers

    def letterbox(self, image: ImageArray) -> tuple[ImageArray, float]:
        """Scale an image to fit the input size, keeping its aspect, padded at right and bottom.

        This matches insightface's own SCRFD preprocessing, so boxes agree with
        FaceAnalysis. A side is never scaled below one pixel, so a 1x2000 strip
        still produces a valid input.
        """
        width, height = self.input_size
        image_height, image_width = image.shape[:2]
        if image_height / image_width > height / width:
            new_height = height
            new_width = max(1, int(new_height * image_width / image_height))
        else:
            new_width = width
            new_height = max(1, int(new_width * image_height / image_width))
        scale = new_height / image_height
        canvas = np.zeros((height, width, 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = cv2.resize(image, (new_width, new_height))
        return canvas, scale

    def detect(
        self, images: list[ImageArray], det_conf: float, nms_thresh: float
    ) -> list[Detections]:
        """Detect faces in each image; returns one Detections per image, in order."""
        results: list[Detections] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            letterboxed = [self.letterbox(image) for image in chunk]
            blob = cv2.dnn.blobFromImages(
                [canvas for canvas, _ in letterboxed],
                1.0 / self.model.input_std,
                self.input_size,
                (self.model.input_mean,) * 3,
                swapRB=True,
            )
            outputs = self.session.run(self.model.output_names, {self.model.input_name: blob})
            for index, (_, scale) in enumerate(letterboxed):
                results.append(self._decode(outputs, index, scale, det_conf, nms_thresh))
        return results

    def _decode(
        self,
        outputs: list[FloatArray],
        index: int,
        scale: float,
        det_conf: float,
        nms_thresh: float,
    ) -> Detections:
        """Turn one image's raw SCRFD outputs into boxes, scores and keypoints."""
        fmc = self.model.fmc
        boxes, scores, keypoints = [], [], []
        for level, stride in enumerate(self.model._feat_stride_fpn):
            level_scores = outputs[level][index].reshape(-1)
            keep = np.where(level_scores >= det_conf)[0]
            if keep.size == 0:
                continue
            centers = self.anchor_centers[stride][keep]
            box_distances = outputs[level + fmc][index][keep] * stride
            kps_distances = outputs[level + 2 * fmc][index][keep] * stride
            boxes.append(distance2bbox(centers, box_distances))
            keypoints.append(distance2kps(centers, kps_distances).reshape(-1, 5, 2))
            scores.append(level_scores[keep])

        if not scores:
            return Detections(
                np.zeros((0, 4), np.float32),
                np.zeros(0, np.float32),
                np.zeros((0, 5, 2), np.float32),
            )

        all_scores = np.concatenate(scores).astype(np.float32)
        order = np.argsort(-all_scores, kind="stable")
        all_boxes = (np.concatenate(boxes) / scale).astype(np.float32)[order]
        all_kps = (np.concatenate(keypoints) / scale).astype(np.float32)[order]
        all_scores = all_scores[order]
        keep_nms = nms(all_boxes, all_scores, nms_thresh)
        return Detections(all_boxes[keep_nms], all_scores[keep_nms], all_kps[keep_nms])


def nms(boxes: FloatArray, scores: FloatArray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression with insightface's +1 pixel area convention."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(
            0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1
        )
        overlap = width * height
        iou = overlap / (areas[best] + areas[rest] - overlap)
        order = rest[iou <= threshold]
    return keep


class FaceRecognizer:
    """ArcFace over batches of faces aligned to 112x112 by their five landmarks."""

    def __init__(self, zoo_model: Any, batch_size: int) -> None:
        if zoo_model.taskname != "recognition":
            raise RuntimeError(f"{zoo_model.model_file} is not a recognition model")
        self.model = zoo_model
        self.session: onnxruntime.InferenceSession = zoo_model.session
        self.batch_size = batch_size
        self.crop_size = int(zoo_model.input_size[0])

    def align(self, image: ImageArray, keypoints: FloatArray) -> ImageArray:
        """Warp one face to the ArcFace template using its five landmarks."""
        crop: ImageArray = face_align.norm_crop(
            image, landmark=keypoints, image_size=self.crop_size
        )
        return crop

    def embed(self, crops: list[ImageArray]) -> FloatArray:
        """Return L2-normalised embeddings, one row per aligned face crop."""
        if not crops:
            return np.zeros((0, 512), np.float32)
        chunks = [
            self.model.get_feat(crops[start : start + self.batch_size])
            for start in range(0, len(crops), self.batch_size)
        ]
        features = np.concatenate(chunks).astype(np.float32)
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        normalised: FloatArray = features / np.maximum(norms, 1e-12)
        return normalised


@dataclass
class FaceModels:
    """The loaded detector and recognizer plus what was chosen, for logs and heartbeats."""

    detector: FaceDetector
    recognizer: FaceRecognizer
    files: ModelFiles
    provider: str
    threads: int


def load_models(files: ModelFiles, settings: WorkerSettings) -> FaceModels:
    """Create both sessions on the requested provider, or raise if it cannot be used."""
    onnxruntime.set_default_logger_severity(3)
    available = onnxruntime.get_available_providers()
    providers = requested_providers(settings.execution_provider, available, settings.trt_cache_dir)
    if settings.execution_provider == "tensorrt":
        settings.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    logger.info(
        "Loading models: detector=%s recognizer=%s requested_provider=%s available=%s threads=%d",
        files.detector,
        files.recognizer,
        settings.execution_provider,
        available,
        settings.threads,
    )

    detector_model = load_zoo_model(str(files.detector), providers, settings.threads)
    recognizer_model = load_zoo_model(str(files.recognizer), providers, settings.threads)
    used = [
        check_session_providers(
            settings.execution_provider, model.session.get_providers(), str(path)
        )
        for model, path in ((detector_model, files.detector), (recognizer_model, files.recognizer))
    ]

    models = FaceModels(
        detector=FaceDetector(detector_model, settings.det_size, settings.detection_batch_size),
        recognizer=FaceRecognizer(recognizer_model, settings.recognition_batch_size),
        files=files,
        provider=used[0],
        threads=settings.threads,
    )
    logger.info(
        "Models loaded: pack=%s provider=%s det_size=%dx%d intra_op_threads=%d",
        files.pack,
        models.provider,
        *settings.det_size,
        settings.threads,
    )
    return models
