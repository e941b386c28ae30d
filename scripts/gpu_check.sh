#!/usr/bin/env bash
# The GPU check, as one prepared script for a lent device (see docs/gpu.md):
#   1. the CUDA test suite (tests/gpu),
#   2. the synth5_gpu grid (5 methods x 5 sources, 1 epoch, 224 px) through MLflow into a
#      local SQLite store, jobs packed on the one GPU, with MLflow's system metrics (GPU ones too),
#   3. the synth5_lodo grid (leave one domain out) at the same 224 px setting, and its table,
#   4. `benchmark explain`: GradCAM maps of eac and cafe from the grid's runs, on the GPU,
#   5. `benchmark perf` at 224 px for cafe (per-sample path with one DataLoader worker per core
#      vs the harness path per precision; the training loop's variants, compiled with and
#      without CUDA graphs; 8 packed processes with and without cuDNN autotuning; matmul rates;
#      evaluation cold/warm),
#   6. the packed processes again under NVIDIA MPS (when the daemon starts),
#   7. `fuse`: fused training (benchmark.training.fused): cafe and erm with K = 1..32 jobs in one
#      process at each precision, and fused processes packed 2 and 4,
#   8. `fuse_mps`: the fused processes packed again under MPS,
#   9. `fuse_grid`: the synth5_gpu grid fused vs packed (wall time of each, one FINISHED run per job),
#  10. `vit`: erm and cafe fine-tuning the CLIP ViT-B/32 image tower end to end (openclip:ViT-B-32,
#      random weights time as the real ones) at 224 px in bf16: images/s and peak memory,
# each under its own time limit, in this order (what matters most first, so a cut loses the
# least), writing logs and JSON into OUT (default results/gpu_check). With BUNDLE=FILE.tgz set,
# OUT is packed into that one file after every stage (the device tool returns few files).
#
#   scripts/gpu_check.sh [--dry-run] [--stages NAME,...] [OUT]
#
# --dry-run: the same stages on the CPU at toy sizes (CI runs it), no wheels installed, no MPS.
# --stages: only these (env always runs); explain reads the grid's runs, so it goes with grid.
#   At their time limits all stages take over the 10 minutes one device call may run: on a
#   device, run `--stages tests,grid,lodo,explain`, then `--stages perf,perf_mps` or
#   `--stages fuse,fuse_mps,fuse_grid`, or `--stages vit` (each well within one call).
# Wheels in .whl/ (packages the device lacks: mlflow, open_clip, grad-cam, ...) are installed
# into a private folder first, then this checkout, editable and without dependencies (its entry
# points register the methods; `benchmark.protocols` maps to protocols/).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
ALL_STAGES="tests,grid,lodo,explain,perf,perf_mps,fuse,fuse_mps,fuse_grid,vit"
STAGES=$ALL_STAGES
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
if [[ "${1:-}" == "--stages" ]]; then STAGES="${2:-}"; shift 2; fi
for name in ${STAGES//,/ }; do
    if [[ ",$ALL_STAGES," != *",$name,"* ]]; then
        echo "--stages: no stage '$name' (stages: $ALL_STAGES)" >&2
        exit 2
    fi
done
wanted() { [[ ",$STAGES," == *",$1,"* ]]; }
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
    if [[ -n "${BUNDLE:-}" ]]; then tar czf "$BUNDLE" -C "$OUT_DIR" .; fi
}

if (( ! DRY_RUN )) && compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi
if (( ! DRY_RUN )); then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || { echo "installing this checkout failed"; exit 1; }
fi

if (( DRY_RUN )); then
    export BENCHMARK_GPU_TESTS_DEVICE=cpu
    TESTS=(-k "cafe and not cafe_ and not compile")  # the plumbing, on the CPU: cafe alone in each parametrised test
    SMALL=(--device cpu --set encoder=torchvision:mobilenet_v2:imagenet --set backbone.name=mobilenet_v2
           --set backbone.weights=imagenet --set recipe.input_size=32 --set recipe.epochs=1)
    for domain in studio webcam wild film lowres; do SMALL+=(--set "dataset_options.synth5/$domain.scale=0.03"); done
    GRID=(--methods cafe,eac --sources synth5/studio --jobs-per-gpu 2 --system-metrics-every 0.5 "${SMALL[@]}")
    LODO=(--methods cafe --sources synth5/studio+synth5/webcam+synth5/wild+synth5/film "${SMALL[@]}")
    EXPLAIN=(--device cpu --images 4)
    PERF=(--quick --methods erm,cafe --pack 2 --device cpu)  # every precision: tests/test_gpu_check.py reads every field
    FUSE_PERF=(--quick --loop-only --variant-methods "" --fuse 1,2 --fuse-methods cafe --precisions auto
               --pack 2 --pack-fuse 2 --device cpu)
    FUSE_GRID=(--methods cafe --sources synth5/studio --seeds 0,1 "${SMALL[@]}")
    FUSE_K=2
    # The same family's plumbing on the CPU: the smaller ViT-S/32 tower, erm alone, in fp32 (bf16
    # matmuls are 6-10x slower on CPUs without AVX512-BF16; the precision is only a flag here).
    VIT=(--quick --loop-only --variant-methods erm --loop-variants default --backbone openclip:ViT-S-32:none
         --size 224 --batch-size 4 --loop-steps 2 --precisions auto --device cpu)
    LIMITS=(300 300 200 100 300 0 300 0 300 300)
else
    TESTS=()
    GPU_SETTING=(--set encoder=openclip:ViT-B-32:random --set backbone.name=resnet18 --set backbone.weights=none
                 --set recipe.input_size=224)
    GRID=(--jobs-per-gpu 4 --system-metrics-every 2)
    LODO=(--jobs-per-gpu 4 --system-metrics-every 2 "${GPU_SETTING[@]}")
    EXPLAIN=()
    PERF=(--methods cafe --precisions auto,bf16 --eval-methods cafe --steps 20 --loop-steps 60 --compile
          --pack 8 --pack-variants default,cudnn_benchmark)
    PERF_MPS=(--loop-only --methods cafe --variant-methods "" --loop-steps 60 --pack 4,8
              --pack-variants default,cudnn_benchmark)
    # Measured on an H100 (2026-11-26): tests 140 s, grid 56 s + start and summary, lodo 43 s +
    # start, summary and table, explain 34 s, perf over 160 s (two compilations of 60 s or more).
    FUSE_PERF=(--loop-only --variant-methods "" --fuse 1,4,8,16,32 --fuse-methods cafe,erm --precisions auto,bf16
               --loop-steps 30 --pack 2,4 --pack-fuse 8)
    FUSE_MPS=(--loop-only --variant-methods "" --loop-steps 30 --pack 2,4 --pack-fuse 8)
    # A method's seeds on one source fuse (sources of other sizes train in separate groups).
    FUSE_GRID=(--methods cafe,eac --sources synth5/studio,synth5/film --num-seeds 8)
    FUSE_K=8
    VIT=(--loop-only --variant-methods erm,cafe --backbone openclip:ViT-B-32:none --size 224
         --batch-size 64 --loop-steps 30 --precisions bf16)
    # fuse, fuse_mps, fuse_grid, vit: not yet timed on a device; sized to fit one call of 8 minutes.
    LIMITS=(200 150 150 90 330 150 240 90 150 150)
fi

stage env 60 bash -c "nvidia-smi || true; \"$PY\" -c 'import torch, platform; print(\"python\", platform.python_version(), \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \"gpu\", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'; nproc; \"$PY\" -m pip list 2>/dev/null | grep -i -E '^(torch|torchvision|mlflow|open.clip|numpy|scikit-learn|pandas) '"
wanted tests && BENCHMARK_GPU_REPORT="$OUT_DIR/tests.jsonl" stage tests "${LIMITS[0]}" "$PY" -m pytest -q -o addopts= -p no:cacheprovider tests/gpu "${TESTS[@]}"
wanted grid && stage grid "${LIMITS[1]}" bash -c "\"$PY\" -m benchmark run --protocol synth5_gpu ${GRID[*]} && \"$PY\" scripts/grid_summary.py synth5_gpu \"$OUT_DIR/grid.json\""
wanted lodo && stage lodo "${LIMITS[2]}" bash -c "\"$PY\" -m benchmark run --protocol synth5_lodo ${LODO[*]} && \"$PY\" scripts/grid_summary.py synth5_lodo \"$OUT_DIR/lodo.json\" && \"$PY\" -m benchmark table --protocol synth5_lodo --out \"$OUT_DIR/lodo_table.md\""
wanted explain && stage explain "${LIMITS[3]}" "$PY" -m benchmark explain --protocol synth5_gpu --methods eac,cafe \
    --source synth5/studio --target synth5/film "${EXPLAIN[@]}" --out "$OUT_DIR/gradcam.png"
wanted perf && stage perf "${LIMITS[4]}" "$PY" -m benchmark perf "${PERF[@]}" --json "$OUT_DIR/perf.json"
if wanted perf_mps && (( ! DRY_RUN )) && command -v nvidia-cuda-mps-control > /dev/null && nvidia-cuda-mps-control -d; then
    stage perf_mps "${LIMITS[5]}" "$PY" -m benchmark perf "${PERF_MPS[@]}" --json "$OUT_DIR/perf_mps.json"
    echo quit | nvidia-cuda-mps-control
fi
wanted fuse && stage fuse "${LIMITS[6]}" "$PY" -m benchmark perf "${FUSE_PERF[@]}" --json "$OUT_DIR/fuse.json"
# The synth5_gpu grid trained fused (a method's jobs in one process) and packed (as many
# processes on the GPU), each into its own JSON-lines store (no database in the timing): each
# grid run's seconds are its wall time.
FUSED_DB="MLFLOW_TRACKING_URI=jsonl:$WORK/fused" PACKED_DB="MLFLOW_TRACKING_URI=jsonl:$WORK/packed"
wanted fuse_grid && stage fuse_grid "${LIMITS[8]}" bash -c "
    $FUSED_DB \"$PY\" -m benchmark run --protocol synth5_gpu --fuse $FUSE_K ${FUSE_GRID[*]} --system-metrics-every 0 &&
    $FUSED_DB \"$PY\" scripts/grid_summary.py synth5_gpu \"$OUT_DIR/fuse_grid_fused.json\" &&
    $PACKED_DB \"$PY\" -m benchmark run --protocol synth5_gpu --jobs-per-gpu $FUSE_K ${FUSE_GRID[*]} --system-metrics-every 0 &&
    $PACKED_DB \"$PY\" scripts/grid_summary.py synth5_gpu \"$OUT_DIR/fuse_grid_packed.json\""
if wanted fuse_mps && (( ! DRY_RUN )) && command -v nvidia-cuda-mps-control > /dev/null && nvidia-cuda-mps-control -d; then
    stage fuse_mps "${LIMITS[7]}" "$PY" -m benchmark perf "${FUSE_MPS[@]}" --json "$OUT_DIR/fuse_mps.json"
    echo quit | nvidia-cuda-mps-control
fi
wanted vit && stage vit "${LIMITS[9]}" "$PY" -m benchmark perf "${VIT[@]}" --json "$OUT_DIR/vit.json"
echo "stages:"; cat "$OUT_DIR/stages.jsonl"
"$PY" -c 'import json,sys; sys.exit(any(json.loads(l)["rc"] for l in open(sys.argv[1]) if json.loads(l)["stage"] != "env"))' "$OUT_DIR/stages.jsonl"
