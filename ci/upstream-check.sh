#!/usr/bin/env bash
# Issue 16, item 4: our library crates and candle-core with `cuda` must build in
# one dependency graph (candle turns on cudarc's `dynamic-linking` and
# `cuda-version-from-build-system`; ours use `fallback-dynamic-loading` and name
# no CUDA version). No GPU is needed: the scratch crate is only `cargo check`ed.
#
# The scratch crate (template: ci/upstream-check/) is written to a temporary
# directory outside the repository, so neither the workspace nor
# .cargo/config.toml (CUDARC_CUDA_VERSION) applies to it, as for an upstream
# project. candle-kernels' build script and cudarc's version detection need
# nvcc: the CUDA 13.0.88 nvcc and runtime wheels and the 13.0.85 CCCL headers
# (cuda_fp16.h includes <nv/target>), with nvcc's own nvvm and crt pinned too
# (left free, pip takes the newest, whose PTX ptxas 13.0 refuses; never 13.1+),
# in a virtual environment. That environment and the target directory live in
# the git-ignored folder `.work` inside the template's folder.
#
#   CANDLE_VERSION   candle-core requirement (default "0": the latest 0.x)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
template="$repo/ci/upstream-check"
work="$template/.work"
mkdir -p "$work"
start=$(date +%s)

venv="$work/venv"
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.88" "nvidia-cuda-cccl==13.0.85" \
    "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
if [ ! -x "$cu13/bin/nvcc" ]; then
    echo "upstream-check: no nvcc at $cu13/bin/nvcc after install" >&2
    exit 1
fi

scratch="$(mktemp -d "${TMPDIR:-/tmp}/ssm-upstream-check.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
sed -e "s#@REPO@#$repo#g" -e "s#@CANDLE_VERSION@#${CANDLE_VERSION:-0}#g" \
    "$template/Cargo.toml.in" >"$scratch/Cargo.toml"
cp -r "$template/src" "$scratch/src"

cd "$scratch"
# CUDARC_CUDA_VERSION unset: the version must come from the graph (candle's nvcc).
env -u CUDARC_CUDA_VERSION \
    PATH="$cu13/bin:$PATH" CUDA_ROOT="$cu13" CUDA_PATH="$cu13" CUDA_COMPUTE_CAP=90 \
    CARGO_TARGET_DIR="$work/target" CARGO_INCREMENTAL=0 \
    cargo check --quiet
candle="$(grep -A1 '^name = "candle-core"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')"
cudarc="$(grep -A1 '^name = "cudarc"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p' | tr '\n' ' ')"
echo "upstream-check: ssm-core, ssm-gpu, mamba1-scan, mamba2-ssd + candle-core $candle (cuda), cudarc $cudarc: cargo check passed ($(( $(date +%s) - start )) s)"
