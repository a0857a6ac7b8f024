"""Describe the machine, render results as Markdown and rewrite the docs page's results section."""

import importlib.metadata
import os
import platform
import re
from pathlib import Path
from typing import Any

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmark.md"
START_MARKER = "<!-- results:start (written by python -m bench.run; edits here are lost) -->"
END_MARKER = "<!-- results:end -->"

THROUGHPUT_TARGET = 1.3
TRANSFER_TARGET_MS = 10.0
OVERHEAD_TARGET_MS = 5.0
MIB = 1024 * 1024


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_description() -> dict[str, Any]:
    """Return CPU model, cores available, memory and the versions that shape the numbers."""
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu_model": cpu_model,
        "cores_available": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_bytes / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": package_version("onnxruntime"),
        "onnxruntime_gpu": package_version("onnxruntime-gpu"),
        "insightface": package_version("insightface"),
        "celery": package_version("celery"),
    }


def ratio(value: float, reference: float) -> float:
    return value / reference if reference else float("nan")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one entry per target and configuration: what was measured and whether it met it."""
    targets: list[dict[str, Any]] = []
    configs = results["configurations"]
    baseline = next((config for config in configs if config["kind"] == "baseline"), None)
    for config in configs:
        if config["kind"] != "service" or baseline is None:
            continue
        speedup = ratio(config["images_per_s"], baseline["images_per_s"])
        targets.append(
            {
                "target": f"throughput >= {THROUGHPUT_TARGET}x baseline",
                "configuration": config["name"],
                "measured": f"{speedup:.2f}x",
                "met": speedup >= THROUGHPUT_TARGET,
            }
        )
        latency = ratio(config["latency_p50_ms"], baseline["latency_p50_ms"])
        targets.append(
            {
                "target": "p50 latency <= baseline",
                "configuration": config["name"],
                "measured": f"{config['latency_p50_ms']:.0f} ms ({latency:.2f}x)",
                "met": config["latency_p50_ms"] <= baseline["latency_p50_ms"],
            }
        )
    transfer = results.get("transfer")
    if transfer:
        median = transfer["service"]["median_ms"]
        plain = transfer["plain_celery_argument"]["median_ms"]
        targets.append(
            {
                "target": f"4 MB photo API to worker <= {TRANSFER_TARGET_MS:.0f} ms median",
                "configuration": "service path",
                "measured": f"{median:.1f} ms (plain Celery argument: {plain:.1f} ms)",
                "met": median <= TRANSFER_TARGET_MS,
            }
        )
    overhead = results.get("sync_overhead")
    if overhead:
        targets.append(
            {
                "target": f"sync overhead <= {OVERHEAD_TARGET_MS:.0f} ms p50",
                "configuration": overhead["configuration"],
                "measured": f"{overhead['overhead_p50_ms']:.1f} ms",
                "met": overhead["overhead_p50_ms"] <= OVERHEAD_TARGET_MS,
            }
        )
    return targets


def with_ratio(value: float, reference: float | None, digits: int) -> str:
    text = f"{value:.{digits}f}"
    if reference:
        text += f" ({value / reference:.2f}x)"
    return text


ROW = "| {name} | {images} | {faces} | {p50} | {p99} | {rss} | {requests} ({errors}) |"


def results_table(results: dict[str, Any]) -> list[str]:
    configs = results["configurations"]
    baseline = next((config for config in configs if config["kind"] == "baseline"), None)
    lines = [
        "| Configuration | images/s | faces/s | p50 ms | p99 ms | peak RSS MiB: API + workers "
        "(+ Redis) | requests (errors) |",
        "|---|---|---|---|---|---|---|",
    ]
    for config in configs:
        reference = baseline if baseline is not None and config is not baseline else None
        rss = config["peak_rss_bytes"]
        process_total = (rss["api"] + rss["workers"]) / MIB
        rss_text = with_ratio(
            process_total,
            (reference["peak_rss_bytes"]["api"] / MIB) if reference else None,
            0,
        )
        if config["kind"] == "service":
            parts = (rss["api"] / MIB, rss["workers"] / MIB, rss["redis"] / MIB)
            rss_text += ": {:.0f} + {:.0f} (+ {:.0f})".format(*parts)
        lines.append(
            ROW.format(
                name=config["name"],
                images=with_ratio(
                    config["images_per_s"], reference and reference["images_per_s"], 2
                ),
                faces=with_ratio(config["faces_per_s"], reference and reference["faces_per_s"], 1),
                p50=with_ratio(
                    config["latency_p50_ms"], reference and reference["latency_p50_ms"], 0
                ),
                p99=with_ratio(
                    config["latency_p99_ms"], reference and reference["latency_p99_ms"], 0
                ),
                rss=rss_text,
                requests=config["requests"],
                errors=config["errors"],
            )
        )
    return lines


def render_markdown(results: dict[str, Any]) -> str:
    """Render one run's results as the Markdown of the docs page's results section."""
    machine = results["machine"]
    settings = results["settings"]
    lines = [
        f"Run of {results['started_at']} (`{results['command']}`), "
        f"results file `{results['results_file']}`.",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores_available']} cores available, "
        f"{machine['memory_gib']} GiB RAM, Linux {machine['kernel']}, Python {machine['python']}, "
        f"onnxruntime {machine['onnxruntime']}, insightface {machine['insightface']}.",
        "",
        f"Load: {settings['concurrency']} closed-loop clients, {settings['warmup_s']:.0f} s "
        f"warm-up, then {settings['duration_s']:.0f} s measured per configuration; "
        f"provider {settings['provider']}. Ratios in brackets are to the baseline. "
        "One-minute load average before each configuration: "
        + ", ".join(f"{value:.1f}" for value in results["load_average_before"].values())
        + ".",
        "",
        *results_table(results),
        "",
        "| Target | Configuration | Measured | Met |",
        "|---|---|---|---|",
    ]
    for target in results["targets"]:
        met = "met" if target["met"] else "not met"
        lines.append(
            f"| {target['target']} | {target['configuration']} | {target['measured']} | {met} |"
        )

    transfer = results.get("transfer")
    if transfer:
        lines += [
            "",
            f"Moving a {transfer['photo_bytes'] / 1e6:.1f} MB JPEG from the API to the worker, "
            f"median of {transfer['service']['runs']} runs per path, step medians in ms:",
            "",
            "| Path | Total | Steps |",
            "|---|---|---|",
        ]
        for label, key in (
            ("service", "service"),
            ("plain Celery argument", "plain_celery_argument"),
        ):
            path = transfer[key]
            steps = ", ".join(
                f"{name} {value:.1f}" for name, value in path["steps_median_ms"].items()
            )
            lines.append(f"| {label} | {path['median_ms']:.1f} | {steps} |")

    overhead = results.get("sync_overhead")
    if overhead:
        lines += [
            "",
            f"Synchronous overhead, {overhead['requests']} sequential requests with "
            f"{overhead['photo']} on {overhead['configuration']}: client latency p50 "
            f"{overhead['latency_p50_ms']:.1f} ms, worker processing p50 "
            f"{overhead['worker_processing_p50_ms']:.1f} ms, overhead p50 "
            f"{overhead['overhead_p50_ms']:.1f} ms and p90 {overhead['overhead_p90_ms']:.1f} ms.",
        ]

    profiles = [config for config in results["configurations"] if config.get("stage_profile")]
    if profiles:
        lines += [
            "",
            "Worker stage times per image (ms, all tasks of the configuration, warm-up included):",
            "",
            "| Configuration | " + " | ".join(stage_names(profiles)) + " |",
            "|---|" + "---|" * len(stage_names(profiles)),
        ]
        for config in profiles:
            per_image = config["stage_profile"]["per_image_ms"]
            cells = " | ".join(
                f"{per_image.get(stage, 0.0):.1f}" for stage in stage_names(profiles)
            )
            lines.append(f"| {config['name']} | {cells} |")
    return "\n".join(lines)


def stage_names(configs: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for config in configs:
        for stage in config["stage_profile"]["per_image_ms"]:
            if stage not in names:
                names.append(stage)
    return names


def update_docs_page(markdown: str, page: Path = DOCS_PAGE) -> None:
    """Replace the text between the page's result markers with `markdown`."""
    text = page.read_text()
    pattern = re.compile(re.escape(START_MARKER) + r".*?" + re.escape(END_MARKER), re.DOTALL)
    if not pattern.search(text):
        raise RuntimeError(f"{page} lacks the markers {START_MARKER!r} and {END_MARKER!r}")
    replacement = f"{START_MARKER}\n\n{markdown}\n\n{END_MARKER}"
    page.write_text(pattern.sub(lambda _match: replacement, text, count=1))
