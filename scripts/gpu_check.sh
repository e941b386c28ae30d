#!/usr/bin/env bash
# The GPU check, as one prepared script for a lent device (see docs/gpu.md):
#   1. the CUDA test suite (tests/gpu),
#   2. `benchmark perf` at 224 px (erm, cafe, clip_ft; per-sample path with one DataLoader
#      worker per core vs the harness path; every precision; the training loop's feeding
#      variants, a compiled run, packed processes; matmul rates; evaluation cold/warm),
#   3. the synth5_gpu grid (5 methods x 5 sources, 1 epoch, 224 px) through MLflow into a
#      local SQLite store, jobs packed on the one GPU,
# each under its own time limit, writing logs and JSON into OUT (default results/gpu_check).
#
#   scripts/gpu_check.sh [--dry-run] [OUT]
#
# --dry-run: the same stages on the CPU at toy sizes (CI runs it), no wheels installed.
# Wheels in .whl/ (packages the device lacks: mlflow, open_clip, ...) are installed into a
# private folder first; the project itself is used from this checkout.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
OUT_DIR="${1:-${OUT:-results/gpu_check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export BENCHMARK_CACHE="$WORK/cache" BENCHMARK_RESULTS="$WORK/results" BENCHMARK_SLOTS="$WORK/slots"
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
: > "$OUT_DIR/stages.jsonl"

# stage NAME LIMIT_S COMMAND...: run it with a time limit, its output in OUT/NAME.log, and a
# line {stage, rc, seconds} in OUT/stages.jsonl; a failing stage does not stop the next.
stage() {
    local name=$1 limit=$2
    shift 2
    local start end rc
    start=$(date +%s.%N)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    "$PY" -c 'import json,sys; print(json.dumps({"stage": sys.argv[1], "rc": int(sys.argv[2]), "seconds": round(float(sys.argv[4]) - float(sys.argv[3]), 1)}))' \
        "$name" "$rc" "$start" "$end" >> "$OUT_DIR/stages.jsonl"
    tail -n 3 "$OUT_DIR/$name.log"
}

if (( ! DRY_RUN )) && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

if (( DRY_RUN )); then
    export BENCHMARK_GPU_TESTS_DEVICE=cpu
    TESTS=(-k "not compile")
    PERF=(--quick --precisions auto --pack 2 --device cpu)
    GRID=(--methods cafe,scn --sources synth5/studio,synth5/film --device cpu --jobs-per-gpu 2
          --set encoder=torchvision:mobilenet_v2:imagenet --set backbone.name=mobilenet_v2
          --set backbone.weights=imagenet --set recipe.input_size=32)
    for domain in studio webcam wild film lowres; do GRID+=(--set "dataset_options.synth5/$domain.scale=0.03"); done
    LIMITS=(300 300 300)
else
    TESTS=()
    PERF=(--methods erm,cafe,clip_ft --precisions auto,fp32,bf16 --steps 20 --loop-steps 60 --compile --pack 4,8)
    GRID=(--jobs-per-gpu 4)
    LIMITS=(130 200 110)
fi

stage env 60 bash -c "nvidia-smi || true; \"$PY\" -c 'import torch, platform; print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"gpu\", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'; nproc; \"$PY\" -m pip list 2>/dev/null | grep -i -E '^(torch|torchvision|mlflow|open.clip|numpy|scikit-learn|pandas) '"
BENCHMARK_GPU_REPORT="$OUT_DIR/tests.jsonl" stage tests "${LIMITS[0]}" "$PY" -m pytest -q -o addopts= -p no:cacheprovider tests/gpu "${TESTS[@]}"
stage perf "${LIMITS[1]}" "$PY" -m benchmark perf "${PERF[@]}" --json "$OUT_DIR/perf.json"
stage grid "${LIMITS[2]}" bash -c "\"$PY\" -m benchmark run --protocol synth5_gpu ${GRID[*]} && \"$PY\" scripts/grid_summary.py synth5_gpu \"$OUT_DIR/grid.json\""
echo "stages:"; cat "$OUT_DIR/stages.jsonl"
"$PY" -c 'import json,sys; sys.exit(any(json.loads(l)["rc"] for l in open(sys.argv[1]) if json.loads(l)["stage"] != "env"))' "$OUT_DIR/stages.jsonl"
