"""Model-only throughput: the detector and the recognizer as bare onnxruntime sessions.

The model packs are the embedded buffalo_s models and every pack named in
worker/model_files.py that exists under MODEL_ROOT. For each pack and each
requested provider, the detector runs on 640x640 inputs and the recognizer on
112x112 faces at several batch sizes, reported as images/s and faces/s. Inputs are fixed
random tensors, because the run time of these graphs does not depend on
pixel values; decoding, alignment and NMS are left out (see bench/run.py for
end to end).

    python -m bench.gpu_models --provider cuda --provider tensorrt --out models.json
    python -m bench.gpu_models --provider cpu --quick    # checks the script without a GPU
"""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from worker.model_files import EMBEDDED_FILES, PACK_FILES, embedded_model_dir
from worker.providers import check_session_providers, requested_providers

logger = logging.getLogger("bench.gpu_models")

DETECTOR_SIZE = 640
RECOGNIZER_SIZE = 112


def model_sets(model_root: Path) -> list[tuple[str, Path, Path]]:
    """Return (name, detector, recognizer) for the embedded models and each pack present."""
    embedded = embedded_model_dir()
    found = [("buffalo_s (embedded)", embedded / EMBEDDED_FILES[0], embedded / EMBEDDED_FILES[1])]
    for pack, (detector_name, recognizer_name) in PACK_FILES.items():
        detector = model_root / pack / detector_name
        recognizer = model_root / pack / recognizer_name
        if detector.is_file() and recognizer.is_file():
            found.append((pack, detector, recognizer))
    return found


def create_session(path: Path, provider: str, threads: int, trt_cache: Path) -> Any:
    """Create a session on `provider`, or raise if onnxruntime fell back to another one."""
    providers = requested_providers(
        provider,
        onnxruntime.get_available_providers(),
        trt_cache,
    )
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # w600k_mbf.onnx warns about its [1, 512] output per call
    session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    check_session_providers(provider, session.get_providers(), path.name)
    return session


def time_batches(
    session: Any, side: int, batch: int, iterations: int, max_seconds: float
) -> dict[str, float]:
    """Run one batch size: one untimed first run (engine builds land here), then timed runs."""
    name = session.get_inputs()[0].name
    inputs = np.random.default_rng(0).standard_normal((batch, 3, side, side), dtype=np.float32)
    started = time.perf_counter()
    session.run(None, {name: inputs})
    first_run_s = time.perf_counter() - started

    runs = 0
    started = time.perf_counter()
    while runs < iterations and (runs == 0 or time.perf_counter() - started < max_seconds):
        session.run(None, {name: inputs})
        runs += 1
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "runs": runs,
        "ms_per_run": elapsed / runs * 1000,
        "items_per_s": batch * runs / elapsed,
        "first_run_s": first_run_s,
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for pack, detector, recognizer in model_sets(args.model_root):
        for provider in args.provider:
            for role, path, side in (
                ("detector", detector, DETECTOR_SIZE),
                ("recognizer", recognizer, RECOGNIZER_SIZE),
            ):
                row: dict[str, Any] = {
                    "pack": pack,
                    "model": path.name,
                    "role": role,
                    "provider": provider,
                    "results": [],
                }
                rows.append(row)
                try:
                    session = create_session(path, provider, args.threads, args.trt_cache_dir)
                    for batch in args.batch_sizes:
                        result = time_batches(
                            session, side, batch, args.iterations, args.max_seconds
                        )
                        row["results"].append(result)
                        unit = "images/s" if role == "detector" else "faces/s"
                        logger.info(
                            "%s %s on %s, batch %d: %.1f %s (first run %.2f s)",
                            pack, path.name, provider, batch,
                            result["items_per_s"], unit, result["first_run_s"],
                        )  # fmt: skip
                except Exception as error:
                    # One model or provider failing must not hide the measurements of the rest.
                    row["error"] = f"{type(error).__name__}: {error}"
                    logger.error("%s %s on %s failed: %s", pack, path.name, provider, row["error"])
    return rows


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_models", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--provider", action="append", choices=["cpu", "cuda", "tensorrt"],
        help="Execution provider to measure (repeatable; default cuda and tensorrt).",
    )  # fmt: skip
    parser.add_argument(
        "--batch-sizes", type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 8, 32], help="Comma-separated batch sizes (default 1,8,32).",
    )  # fmt: skip
    parser.add_argument(
        "--iterations", type=int, default=20, help="Timed runs per batch size (default 20)."
    )
    parser.add_argument(
        "--max-seconds", type=float, default=10.0,
        help="Stop the timed runs of one batch size after this many seconds (default 10).",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="Intra-op threads per session (default: cores available).",
    )  # fmt: skip
    parser.add_argument(
        "--model-root", type=Path,
        default=Path(os.environ.get("MODEL_ROOT", "~/.insightface/models")).expanduser(),
        help="Folder with model packs, one sub-folder each (default $MODEL_ROOT or "
        "~/.insightface/models).",
    )  # fmt: skip
    parser.add_argument(
        "--trt-cache-dir", type=Path,
        default=Path(os.environ.get("TRT_CACHE_DIR", "bench/results/trt-cache")),
        help="TensorRT engine and timing cache folder (default $TRT_CACHE_DIR, else "
        "bench/results/trt-cache).",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="Write the results as JSON to this file.")
    parser.add_argument(
        "--quick", action="store_true",
        help="Batch sizes 1 and 8, 3 timed runs of at most 2 s each.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    args.provider = args.provider or ["cuda", "tensorrt"]
    if args.quick:
        args.batch_sizes, args.iterations, args.max_seconds = [1, 8], 3, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.trt_cache_dir.mkdir(parents=True, exist_ok=True)
    rows = measure(args)

    print(
        "| Pack | Model | Provider | " + " | ".join(f"batch {b}" for b in args.batch_sizes) + " |"
    )
    print("|---|---|---|" + "---|" * len(args.batch_sizes))
    for row in rows:
        unit = "img/s" if row["role"] == "detector" else "faces/s"
        cells = [f"{result['items_per_s']:.1f} {unit}" for result in row["results"]]
        if "error" in row:
            cells.append(f"failed: {row['error'][:80]}")
        print(f"| {row['pack']} | {row['model']} | {row['provider']} | " + " | ".join(cells) + " |")

    if args.out:
        document = {
            "onnxruntime": onnxruntime.__version__,
            "available_providers": onnxruntime.get_available_providers(),
            "rows": rows,
        }
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
