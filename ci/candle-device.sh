#!/usr/bin/env bash
# Issue 16 item 5: build here, run on the device, the candle integration with
# candle's CUDA backend (crates/candle-ssm, feature `cuda`).
#
#   bash ci/candle-device.sh build [bundle]   here: release-builds the example
#        `mamba2_block` and the test `gpu_candle` with `--features cuda` into the
#        bundle (default .gpu/candle, git-ignored), stripped and xz-compressed.
#   bash ci/candle-device.sh run [bundle]     on the device: runs both, writes
#        candle-gpu-test.log, candle-mamba2-block.log and candle-summary.txt to
#        $OUT (default .gpu/out).
#
# Building needs nvcc (candle-kernels compiles its kernels with it; cudarc reads
# the CUDA version from `nvcc --version`): the pinned CUDA 13.0 nvcc wheels of
# ci/upstream-check.sh, in the venv under its git-ignored `.work` (installed here when
# missing; SSM_NVCC_VENV names another venv). Linking needs libcuda, libcublas,
# libcublasLt, libcurand and libnvrtc (candle's cudarc links them dynamically)
# and libcudart (candle-kernels' static MoE kernels; the nvcc venv has it);
# this machine has none, so the link is made against stub libraries generated
# from cudarc's own bindings (every function it declares, each returning
# CUDA_ERROR_NO_DEVICE), with the sonames of CUDA 13: libcuda.so.1,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libnvrtc.so.13. The real
# libraries are found at run time on the device (/usr/local/cuda/lib64 and the
# driver): `ldd` in the bundle's manifest lists what the binaries need.
#
# env: CANDLE_TARGET_DIR (default target/candle-cuda), CUDA_COMPUTE_CAP (90)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mode="${1:-}"
bundle="${2:-.gpu/candle}"
under_gpu candle-device "$bundle"
log() { echo "candle-device: $*" >&2; }

build() {
    local start venv cu13 target work stubs cudarc_src root
    start=$(date +%s)
    venv="${SSM_NVCC_VENV:-$repo_root/ci/upstream-check/.work/venv}"
    if [ ! -x "$venv/bin/python" ]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
    if [ ! -x "$cu13/bin/nvcc" ]; then
        # The same pins as ci/upstream-check.sh (its comment says why each).
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-runtime==13.0.88" "nvidia-cuda-cccl==13.0.85" \
            "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88"
        cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
    fi
    [ -x "$cu13/bin/nvcc" ] || { log "no nvcc at $cu13/bin/nvcc"; exit 1; }
    target="${CANDLE_TARGET_DIR:-$repo_root/target/candle-cuda}"
    work="$target/cuda-root"

    # A CUDA root for the build: the wheels' headers and the link stubs.
    cudarc_ver="$(grep -A1 '^name = "cudarc"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p' | head -n1)"
    cudarc_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_ver" 2>/dev/null | head -n1)"
    if [ -z "$cudarc_src" ]; then
        cargo fetch --quiet
        cudarc_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_ver" | head -n1)"
    fi
    stubs="$work/lib/stubs"
    mkdir -p "$stubs"
    ln -sfn "$cu13/include" "$work/include"
    ln -sfn "$cu13/bin" "$work/bin"
    # candle-kernels' static MoE kernels link the CUDA runtime: the wheel's real one.
    ln -sfn "$cu13/lib/libcudart.so.13" "$work/lib/libcudart.so"
    python3 - "$cudarc_src/src" "$stubs" <<'PY'
import os, re, subprocess, sys, tempfile
src, out = sys.argv[1:3]
# (cudarc module, library, soname): the libraries candle's cudarc links.
libs = [("driver", "cuda", "libcuda.so.1"), ("cublas", "cublas", "libcublas.so.13"),
        ("cublaslt", "cublasLt", "libcublasLt.so.13"), ("curand", "curand", "libcurand.so.10"),
        ("nvrtc", "nvrtc", "libnvrtc.so.13")]
decl = re.compile(r"^\s+fn ([A-Za-z_][A-Za-z0-9_]*)\(", re.M)
for module, lib, soname in libs:
    text = open(os.path.join(src, module, "sys", "mod.rs")).read()
    names = sorted(set(n for n in decl.findall(text) if n.startswith(("cu", "nvrtc"))))
    with tempfile.NamedTemporaryFile("w", suffix=".c", delete=False) as f:
        f.write("/* link stub: the real library is loaded at run time */\n")
        for n in names:
            f.write(f"int {n}(void) {{ return 100; }}\n")
        path = f.name
    dst = os.path.join(out, f"lib{lib}.so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O0", f"-Wl,-soname,{soname}", "-o", dst, path], check=True)
    os.unlink(path)
    print(f"candle-device: stub {dst} ({soname}, {len(names)} functions)", file=sys.stderr)
PY

    export PATH="$cu13/bin:$PATH" CUDA_ROOT="$work" CUDA_PATH="$work"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CARGO_TARGET_DIR="$target"
    log "building (release, --features cuda) into $target"
    cargo build --release -p candle-ssm --features cuda --example mamba2_block
    local test_exe
    test_exe="$(cargo test --release -p candle-ssm --features cuda --test gpu_candle --no-run \
        --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_candle":
        print(m["executable"])
')"
    rm -rf "$bundle"
    mkdir -p "$bundle"
    cp "$target/release/examples/mamba2_block" "$bundle/candle-ssm__mamba2_block"
    cp "$test_exe" "$bundle/candle-ssm__gpu_candle"
    strip --strip-debug "$bundle"/candle-ssm__*
    cp "$repo_root/ci/candle-device.sh" "$repo_root/ci/lib.sh" "$bundle/"
    {
        echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- || echo ' + uncommitted changes')"
        echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ), $(rustc --version), nvcc $("$cu13/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP"
        for b in "$bundle"/candle-ssm__*; do
            echo "$(basename "$b"): $(du -k "$b" | cut -f1) KiB; needs:"
            readelf -d "$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'
        done
    } >"$bundle/manifest.txt"
    # candle embeds its PTX and cubins (about 30 MB of .nv_fatbin a binary): xz
    # brings each from ~53 MB to ~6 MB, inside the 64 MiB that travels.
    for b in "$bundle"/candle-ssm__*; do
        xz -T2 -6 "$b"
    done
    cat "$bundle/manifest.txt" >&2
    log "bundle $bundle ready ($(du -sk "$bundle" | cut -f1) KiB, $(( $(date +%s) - start )) s)"
    log "on the device: run(command = \"bash ci/candle-device.sh run $bundle\", carry = [\"$bundle\"])"
}

run() {
    local out status=0
    out="${OUT:-$repo_root/.gpu/out}"
    mkdir -p "$out"
    [ -f "$bundle/candle-ssm__gpu_candle.xz" ] || { echo "candle-device: no bundle at $bundle" >&2; exit 2; }
    # Unpack the binaries (xz, or Python's lzma where xz is missing).
    local bin="${TMPDIR:-/tmp}/candle-ssm-bin"
    rm -rf "$bin" && mkdir -p "$bin"
    for z in "$bundle"/candle-ssm__*.xz; do
        unpack_xz "$z" "$bin/$(basename "$z" .xz)"
    done
    cuda_libs
    export SSM_REQUIRE_GPU=1 SSM_KERNEL_CACHE=/tmp/ssm-kernel-cache SSM_RESULTS_DIR="$out"
    export SSM_KERNEL_DIR="$repo_root/kernels" RUST_BACKTRACE=1
    summary="$out/candle-summary.txt"
    {
        cat "$bundle/manifest.txt"
        nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 || true
        echo "ldd:"
        ldd "$bin/candle-ssm__gpu_candle" 2>&1 | sed 's/^/  /'
    } >"$summary"
    local t0
    t0=$(date +%s)
    if timeout 300 "$bin/candle-ssm__gpu_candle" --test-threads=1 >"$out/candle-gpu-test.log" 2>&1; then
        echo "gpu_candle: PASSED ($(( $(date +%s) - t0 )) s)" >>"$summary"
    else
        echo "gpu_candle: FAILED (status $?, $(( $(date +%s) - t0 )) s)" >>"$summary"
        status=1
    fi
    t0=$(date +%s)
    # The example writes $SSM_RESULTS_DIR/candle-mamba2-block.log itself.
    if timeout 240 "$bin/candle-ssm__mamba2_block" >"$out/candle-mamba2-block.stdout" 2>&1; then
        echo "mamba2_block: OK ($(( $(date +%s) - t0 )) s)" >>"$summary"
    else
        echo "mamba2_block: FAILED (status $?, $(( $(date +%s) - t0 )) s)" >>"$summary"
        status=1
    fi
    grep -E "^(test |SKIPPED|thread)" "$out/candle-gpu-test.log" >>"$summary" || true
    tail -n 30 "$out/candle-mamba2-block.stdout" >>"$summary"
    cat "$summary"
    return $status
}

case "$mode" in
    build) build ;;
    run) run ;;
    *) echo "usage: bash ci/candle-device.sh build|run [bundle]" >&2; exit 2 ;;
esac
