#!/usr/bin/env bash
# Runs ON the device machine: several device scripts in one call, each writing
# into its own folder under $OUT that is packed into PART.tar.gz as soon as the
# part ends (a call returns at most 8 files; a time-out keeps the parts done).
#
# usage: bash ci/device-session.sh PART[,PART...]
#   candle   ci/candle-device.sh run .gpu/candle
#   rust     ci/device-run.sh .gpu/loop-lead $SSM_SESSION_STEPS (default info,tests,sanitize,bench)
#   python   ci/python-device.sh run $SSM_SESSION_PY (default pytest,oracle,peer,timing)
#   decode   bench_decode_graph --tilings --target-us 3 (graph-replayed decode, every tiling)
# Each part's own environment switches (SSM_DEVICE_ONLY, SANITIZE_*, SSM_BENCH_*,
# SSM_PY_DEADLINE, ...) pass through. Prints every part's summary last.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
out="${OUT:?OUT must name the folder that comes back}"
summary="$out/session.txt"
: >"$summary"
# Carried bundles may hold xz-compressed binaries (the carry limit is 64 MiB):
# unpack them in place first (xz, or Python's lzma where xz is missing).
for z in .gpu/loop-lead/*/*.xz; do
    [ -f "$z" ] || continue
    unpack_xz "$z" "${z%.xz}" && rm -f "$z"
done
for part in ${1//,/ }; do
    dir="$out/$part"
    mkdir -p "$dir"
    t0=$SECONDS
    case "$part" in
        candle) OUT="$dir" bash ci/candle-device.sh run .gpu/candle >"$dir/stdout.txt" 2>&1 ;;
        rust) OUT="$dir" bash ci/device-run.sh .gpu/loop-lead "${SSM_SESSION_STEPS:-info,tests,sanitize,bench}" >"$dir/stdout.txt" 2>&1 ;;
        python) OUT="$dir" bash ci/python-device.sh run "${SSM_SESSION_PY:-pytest,oracle,peer,timing}" >"$dir/stdout.txt" 2>&1 ;;
        decode)
            (
                cuda_libs
                export SSM_KERNEL_DIR="$PWD/.gpu/loop-lead/kernels" SSM_KERNEL_CACHE=/tmp/ssm-kernel-cache
                timeout 240 .gpu/loop-lead/examples/ssm-benches__bench_decode_graph --tilings --target-us 3 \
                    --json "$dir/decode-graph.json"
            ) >"$dir/stdout.txt" 2>&1
            ;;
        *) echo "device-session: unknown part $part" >>"$summary"; continue ;;
    esac
    rc=$?
    echo "== $part: exit $rc after $((SECONDS - t0)) s" >>"$summary"
    tail -n 40 "$dir/stdout.txt" >>"$summary"
    tar -czf "$out/$part.tar.gz" -C "$out" "$part" && rm -rf "$dir"
done
cat "$summary"
