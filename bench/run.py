"""Benchmark the service against the in-process baseline on the same cores, in one run.

    python -m bench.run           # about 4 minutes on 2 cores; updates docs/benchmark.md
    python -m bench.run --quick   # about 1.5 minutes; leaves the docs page alone

Configurations run one after another, never overlapping: the baseline server,
the service with one worker (all cores), the service with two workers (half
the cores each). Each gets a fresh Redis, the same clients and the same
batches. Before them, the 4 MB transfer is timed; after the one-worker load,
the synchronous overhead. Results go to bench/results/<timestamp>.json and,
for full runs, into the results section of docs/benchmark.md.
"""

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import processes, report
from bench.corpus import build_corpus, transfer_photo
from bench.load import LoadResult, PreparedRequest, prepare_requests, run_load
from bench.overhead import measure_sync_overhead, read_task_documents, stage_profile
from bench.transfer import measure_transfer
from scripts.redis_server import start_redis

logger = logging.getLogger("bench.run")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
OVERHEAD_PHOTO = "yaoming.jpg"


@dataclass(frozen=True)
class Configuration:
    """One system under test."""

    name: str
    kind: str  # "baseline" or "service"
    workers: int
    threads: int  # onnxruntime intra-op threads per process


def configurations(cores: int) -> list[Configuration]:
    """Return the baseline and the two service layouts that share `cores` cores."""
    return [
        Configuration(f"baseline, 1 process x {cores} threads", "baseline", 0, cores),
        Configuration(f"service, 1 worker x {cores} threads", "service", 1, cores),
        Configuration(
            f"service, 2 workers x {max(cores // 2, 1)} threads", "service", 2, max(cores // 2, 1)
        ),
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.strip().splitlines()[0]
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="Measured seconds per configuration (default 60).",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=10.0,
        help="Unmeasured seconds of load before each measurement (default 10).",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, help="Closed-loop client threads (default 4)."
    )
    parser.add_argument(
        "--cores",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="Cores the configurations share; sets their thread counts (default: cores available).",
    )
    parser.add_argument(
        "--only",
        choices=["baseline", "service-1", "service-2"],
        action="append",
        help="Run only this configuration (repeatable); transfer and overhead still run.",
    )
    parser.add_argument(
        "--transfer-runs",
        type=int,
        default=30,
        help="Timed runs per path of the 4 MB transfer (default 30).",
    )
    parser.add_argument(
        "--overhead-requests",
        type=int,
        default=50,
        help="Sequential requests of the overhead measurement (default 50).",
    )
    parser.add_argument(
        "--provider",
        choices=["cpu", "cuda", "tensorrt"],
        default="cpu",
        help="EXECUTION_PROVIDER of the workers; the baseline uses CUDA unless cpu (default cpu).",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="Folder with one SCRFD and one ArcFace .onnx, for both sides (default: embedded).",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="Where the JSON results and process logs go (default bench/results).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: 15 s per configuration after 3 s warm-up, 10 transfer runs, "
        "15 overhead requests; leaves the docs page alone unless --update-docs.",
    )
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument(
        "--update-docs",
        dest="update_docs",
        action="store_true",
        default=None,
        help="Rewrite the results section of docs/benchmark.md (the default except with --quick).",
    )
    docs.add_argument(
        "--no-docs", dest="update_docs", action="store_false", help="Leave docs/benchmark.md alone."
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 15.0, 3.0
        args.transfer_runs, args.overhead_requests = 10, 15
    if args.update_docs is None:
        args.update_docs = not args.quick
    if args.duration <= 0 or args.warmup < 0 or args.concurrency < 1 or args.cores < 1:
        parser.error("--duration and --cores must be positive, --warmup >= 0, --concurrency >= 1")
    return args


def load_summary(config: Configuration, load: LoadResult) -> dict[str, Any]:
    if load.errors:
        logger.warning(
            "%s: %d failed requests, e.g. %s", config.name, load.errors, load.error_samples
        )
    return {
        "name": config.name,
        "kind": config.kind,
        "workers": config.workers,
        "threads": config.threads,
        "requests": load.requests,
        "errors": load.errors,
        "error_samples": load.error_samples,
        "images": load.images,
        "faces": load.faces,
        "images_per_s": load.images_per_s,
        "faces_per_s": load.faces_per_s,
        "latency_p50_ms": load.latency_percentile(50) * 1000,
        "latency_p99_ms": load.latency_percentile(99) * 1000,
    }


def run_baseline(
    config: Configuration, args: argparse.Namespace, requests: list[PreparedRequest], log_dir: Path
) -> dict[str, Any]:
    provider = "cpu" if args.provider == "cpu" else "cuda"
    server, base_url = processes.start_baseline(log_dir, config.threads, provider, args.model_dir)
    try:
        load = run_load(base_url, requests, args.concurrency, args.warmup, args.duration)
        summary = load_summary(config, load)
        summary["peak_rss_bytes"] = {"api": server.peak_rss_bytes(), "workers": 0, "redis": 0}
    finally:
        server.stop()
    return summary


def run_service(
    config: Configuration,
    args: argparse.Namespace,
    requests: list[PreparedRequest],
    log_dir: Path,
    overhead_photo: Any,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Run one service layout; return its summary and, for one worker, the overhead measurement."""
    redis_server = start_redis()
    started: list[processes.ManagedProcess] = []
    worker_env = {"INTRA_OP_THREADS": str(config.threads), "EXECUTION_PROVIDER": args.provider}
    if args.model_dir is not None:
        worker_env["MODEL_DIR"] = str(args.model_dir)
    layout_dir = log_dir / f"service-{config.workers}w"
    layout_dir.mkdir(parents=True, exist_ok=True)
    try:
        workers = [
            processes.start_worker(layout_dir, index, redis_server.url, worker_env)
            for index in range(config.workers)
        ]
        started += workers
        processes.wait_for_workers(workers, redis_server.url)
        api, base_url = processes.start_api(layout_dir, redis_server.url)
        started.append(api)

        load = run_load(base_url, requests, args.concurrency, args.warmup, args.duration)
        summary = load_summary(config, load)
        summary["peak_rss_bytes"] = {
            "api": api.peak_rss_bytes(),
            "workers": sum(worker.peak_rss_bytes() for worker in workers),
            "redis": processes.peak_rss_of(redis_server.process.pid),
        }
        summary["stage_profile"] = stage_profile(read_task_documents(redis_server.url))

        overhead = None
        if config.workers == 1 and args.overhead_requests > 0:
            overhead = measure_sync_overhead(
                base_url, redis_server.url, overhead_photo, args.overhead_requests
            )
            overhead["configuration"] = config.name
    finally:
        for process in reversed(started):
            process.stop()
        redis_server.stop()
    return summary, overhead


def display_path(path: Path) -> str:
    """Return `path` relative to the repository when it lies inside it, else absolute."""
    resolved = path.resolve()
    return (
        str(resolved.relative_to(processes.ROOT))
        if resolved.is_relative_to(processes.ROOT)
        else str(resolved)
    )


def selected(config: Configuration, only: list[str] | None) -> bool:
    key = "baseline" if config.kind == "baseline" else f"service-{config.workers}"
    return only is None or key in only


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # httpx logs every request at INFO, thousands per run.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    started_at = datetime.now(UTC)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    log_dir = args.results_dir / f"{stamp}-logs"
    log_dir.mkdir()
    results_file = args.results_dir / f"{stamp}.json"

    logger.info("Building the corpus")
    photos = build_corpus()
    requests = prepare_requests(photos)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "results_file": display_path(results_file),
        "machine": report.machine_description(),
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "cores": args.cores,
            "provider": args.provider,
            "model_dir": str(args.model_dir) if args.model_dir else "embedded",
            "corpus": {name: len(photo.data) for name, photo in photos.items()},
        },
        "configurations": [],
        # Other processes on the machine skew the numbers. A 1-minute load
        # average well above 0 before a configuration shows that they ran.
        "load_average_before": {},
    }

    logger.info("Timing the 4 MB transfer, %d runs per path", args.transfer_runs)
    transfer_redis = start_redis()
    try:
        results["transfer"] = measure_transfer(
            transfer_redis.url, transfer_photo(), args.transfer_runs
        )
    finally:
        transfer_redis.stop()

    for config in configurations(args.cores):
        if not selected(config, args.only):
            continue
        results["load_average_before"][config.name] = os.getloadavg()[0]
        logger.info(
            "Running %s: %.0f s warm-up, %.0f s measured", config.name, args.warmup, args.duration
        )
        begun = time.monotonic()
        if config.kind == "baseline":
            summary = run_baseline(config, args, requests, log_dir)
        else:
            summary, overhead = run_service(config, args, requests, log_dir, photos[OVERHEAD_PHOTO])
            if overhead is not None:
                results["sync_overhead"] = overhead
        logger.info(
            "%s: %.2f images/s, p50 %.0f ms, took %.0f s",
            config.name,
            summary["images_per_s"],
            summary["latency_p50_ms"],
            time.monotonic() - begun,
        )
        results["configurations"].append(summary)

    results["targets"] = report.evaluate_targets(results)
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    markdown = report.render_markdown(results)
    print(markdown)
    if args.update_docs:
        report.update_docs_page(markdown)
        logger.info("Updated %s", report.DOCS_PAGE)
    logger.info("Results in %s, process logs in %s", results_file, log_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
