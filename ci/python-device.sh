#!/usr/bin/env bash
# The ssm_kernels Python package on the GPU machine (issue 18).
#
#   bash ci/python-device.sh prepare          HERE: the wheel (ci/python.sh) and
#                                             pytest's wheels into .gpu/python
#   bash ci/python-device.sh run [STEPS]      ON THE DEVICE (no Rust there): install
#                                             the carried wheel into /tmp, then the steps
#
# STEPS (comma-separated, default pytest,oracle,peer,timing,long,models):
#   pytest   crates/python/tests (NumPy and torch, CPU and CUDA; SSM_REQUIRE_GPU=1,
#            outputs poisoned with NaN)                         -> python-pytest.log
#   oracle, peer, timing, long, models: the sections of
#            crates/python/gpu_tests/run_gpu.py                  -> python-gpu.json, python-gpu.log
# mamba_ssm is the peer when .peers is carried (ci/peers/prepare.sh makes it): its
# CUDA selective_scan is built in the background from the start (ci/peers/run.sh,
# about 150 s) unless .peers/build/selective_scan_cuda.so is carried.
#
# A device call (carry the wheel folder, and .peers for the peer):
#   run(command = "bash ci/python-device.sh run", carry = [".gpu/python", ".peers"], timeout_s = 600)
# env: SSM_PY_DEADLINE (seconds from the start by which everything must end, default
#      570: the device's 10-minute call), SSM_PY_QUICK=1 (shorter timing windows)
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mode="${1:-run}"
wheels=.gpu/python

if [ "$mode" = prepare ]; then
    set -e
    bash ci/python.sh
    mkdir -p "$wheels/tools"
    .venv-python/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: \
        pytest==9.2.0 -d "$wheels/tools"
    du -sh "$wheels"
    exit 0
fi
[ "$mode" = run ] || { echo "usage: ci/python-device.sh prepare|run [steps]" >&2; exit 2; }

steps="${2:-pytest,oracle,peer,timing,long,models}"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
deadline="${SSM_PY_DEADLINE:-570}"
# Seconds left before the deadline, at least 30.
left() { local l=$((deadline - SECONDS)); [ $l -lt 30 ] && l=30; echo $l; }
has() { [[ ",$steps," == *",$1,"* ]]; }

wheel="$(ls "$wheels"/ssm_kernels-*.whl 2>/dev/null | head -n1)"
[ -n "$wheel" ] || { echo "python-device: no wheel in $wheels (run 'bash ci/python-device.sh prepare' here and carry $wheels)" >&2; exit 2; }
site=/tmp/ssm-python-site
rm -rf "$site" && mkdir -p "$site"
# Unpacked onto PYTHONPATH rather than pip-installed: no network, no index, and
# the abi3 module loads on any CPython >= 3.10.
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$site"
if ! python3 -c 'import pytest' 2>/dev/null; then
    for w in "$wheels"/tools/*.whl; do
        [ -f "$w" ] && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$site"
    done
fi
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
cuda_libs
export SSM_KERNEL_CACHE=/tmp/ssm-kernel-cache
export PYTHONUNBUFFERED=1
{
    echo "python-device on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    python3 -c 'import sys, torch, ssm_kernels; print("python", sys.version.split()[0], "torch", torch.__version__, "ssm_kernels", ssm_kernels.build_info())' 2>&1
} | tee "$out/python-device-info.txt"

peers="${PEERS:-.peers}"
mamba_args=()
build_pid=""
if [ -d "$peers/mamba_ssm" ]; then
    mamba_args=(--mamba-src "$peers" --build-dir /tmp/ssm-peers/build)
    if has peer || has timing || has long || has models; then
        PEERS_BUILD_ONLY=1 nice bash ci/peers/run.sh /tmp/ssm-peers-build.json >"$out/python-peers-build.log" 2>&1 &
        build_pid=$!
    fi
else
    echo "python-device: no $peers/mamba_ssm carried: the mamba_ssm comparisons are SKIPPED" | tee -a "$out/python-device-info.txt"
fi

status=0
pytest_summary="not run"
if has pytest; then
    echo "=== pytest crates/python/tests (CPU and CUDA)"
    # At most half of what is left: the GPU sections need the rest.
    SSM_REQUIRE_GPU=1 SSM_KERNELS_POISON=1 timeout --kill-after=10 "$(( $(left) / 2 ))" \
        python3 -m pytest -q -p no:cacheprovider -o console_output_style=classic crates/python/tests \
        >"$out/python-pytest.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || status=1
    pytest_summary="$(tail -n 1 "$out/python-pytest.log") (exit $rc)"
    grep -E "^(FAILED|ERROR)" "$out/python-pytest.log" | head -20
    echo "pytest: $pytest_summary"
fi
if [ -n "$build_pid" ]; then
    echo "=== waiting for the mamba_ssm extension build"
    # Bounded: the GPU sections keep at least 240 s; a build still running then is
    # left behind (mamba_ssm's scan is then reported as unavailable).
    while kill -0 "$build_pid" 2>/dev/null && [ $((deadline - SECONDS)) -gt 240 ]; do sleep 2; done
    if kill -0 "$build_pid" 2>/dev/null; then
        echo "python-device: the selective_scan build is still running; mamba_ssm's scan is SKIPPED"
    else
        wait "$build_pid" || echo "python-device: the selective_scan build failed (see python-peers-build.log); mamba_ssm's scan is SKIPPED"
    fi
fi
sections=()
for s in oracle peer timing long models; do has "$s" && sections+=("$s"); done
if [ ${#sections[@]} -gt 0 ]; then
    quick=()
    [ "${SSM_PY_QUICK:-0}" = 1 ] && quick=(--quick)
    joined="$(IFS=,; echo "${sections[*]}")"
    timeout --kill-after=10 "$(left)" python3 crates/python/gpu_tests/run_gpu.py \
        --sections "$joined" --out "$out" --pytest-summary "$pytest_summary" "${mamba_args[@]}" "${quick[@]}" \
        2>&1 | tee "$out/python-gpu.log"
    rc=${PIPESTATUS[0]}
    [ $rc -eq 0 ] || status=1
    [ $rc -eq 124 ] && echo "python-device: run_gpu.py TIMED OUT at the deadline (python-gpu.json holds the rows measured)"
fi
exit $status
