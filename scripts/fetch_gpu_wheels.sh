#!/usr/bin/env bash
# Download into .whl/ the wheels the GPU machine lacks for scripts/gpu_check.sh: mlflow,
# open_clip_torch and grad-cam (`benchmark explain`) with everything they need, for CPython 3.12
# on x86-64 Linux, minus the packages its image already has (scripts/device_packages.txt) and
# the CUDA libraries. About 37 MB.
#
#   scripts/fetch_gpu_wheels.sh        (then carry .whl with the device call)
set -euo pipefail
cd "$(dirname "$0")/.."
MLFLOW_VERSION=$(python3 -c 'from importlib.metadata import version; print(version("mlflow"))' 2>/dev/null || echo 3.17.2)
GRADCAM_VERSION=$(python3 -c 'from importlib.metadata import version; print(version("grad-cam"))' 2>/dev/null || echo 1.5.7)
all=$(mktemp -d)
trap 'rm -rf "$all"' EXIT
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 \
    --platform manylinux_2_35_x86_64 -d "$all" "mlflow==$MLFLOW_VERSION" "open_clip_torch>=3.0"
# grad-cam is published as a source archive only: build its pure-Python wheel here (with ttach, its
# one need the image lacks; opencv, matplotlib, scikit-learn and tqdm are there).
python3 -m pip wheel -q --no-deps -w "$all" "grad-cam==$GRADCAM_VERSION" ttach
mkdir -p .whl
for wheel in "$all"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr '_.' '--' | tr '[:upper:]' '[:lower:]')
    if [[ $name == nvidia-* ]] || grep -qx "$name" scripts/device_packages.txt; then continue; fi
    cp "$wheel" .whl/
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
