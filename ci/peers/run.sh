#!/usr/bin/env bash
# Runs ON the GPU machine: time the peers (mamba_ssm, fla) beside our suite.
#
# Needs the peers' sources in a carried, git-ignored folder (ci/peers/prepare.sh
# makes it here): $PEERS/mamba_ssm, $PEERS/csrc/selective_scan and
# $PEERS/fla_core-*.whl. A selective_scan extension built by an earlier call may
# be carried in $PEERS/build/selective_scan_cuda.so (it is then loaded, not
# rebuilt), and Triton's cache (autotuning included) in $PEERS/triton-cache.tar.gz.
#
# usage: bash ci/peers/run.sh OUT_JSON [peers.py options...]
# env:   PEERS=.peers   where the sources are
#        PEERS_BUILD_ONLY=1  build the extension and stop
#        PEERS_PACK=1        afterwards pack the extension and Triton's autotuning
#                            choices into $OUT/peers-build.tar.gz for a later call
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
peers="${PEERS:-.peers}"
out_json="$1"
shift
[ -d "$peers/mamba_ssm" ] || { echo "peers/run.sh: no $peers/mamba_ssm (run ci/peers/prepare.sh here and carry $peers)" >&2; exit 2; }
work=/tmp/ssm-peers
mkdir -p "$work"
fla_args=()
if compgen -G "$peers/fla_core-*.whl" >/dev/null; then
    rm -rf "$work/fla" && mkdir -p "$work/fla"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$(ls "$peers"/fla_core-*.whl | head -n1)" "$work/fla"
    fla_args=(--fla-src "$work/fla")
fi
export TRITON_CACHE_DIR="$work/triton-cache"
export TRITON_CACHE_AUTOTUNING=1
mkdir -p "$TRITON_CACHE_DIR"
[ -f "$peers/triton-cache.tar.gz" ] && tar -xzf "$peers/triton-cache.tar.gz" -C "$TRITON_CACHE_DIR"
build="$work/build"
mkdir -p "$build"
[ -f "$peers/build/selective_scan_cuda.so" ] && cp "$peers/build/selective_scan_cuda.so" "$build/"
export PYTHONUNBUFFERED=1
if [ "${PEERS_BUILD_ONLY:-0}" = 1 ]; then
    python3 ci/peers/peers.py --mamba-src "$peers" --build-dir "$build" --out "$out_json" --build-only
    exit 0
fi
status=0
python3 ci/peers/peers.py --mamba-src "$peers" "${fla_args[@]}" --build-dir "$build" --out "$out_json" "$@" || status=$?
# What a later call can reuse (PEERS_PACK=1): the extension and Triton's
# autotuning choices (the compiled kernels, ~65 MB, stay behind).
if [ "${PEERS_PACK:-0}" = 1 ] && [ -n "${OUT:-}" ]; then
    mkdir -p "$work/pack/build" "$work/pack/autotune"
    cp "$build/selective_scan_cuda.so" "$work/pack/build/" 2>/dev/null || true
    (cd "$TRITON_CACHE_DIR" && find . -name '*.autotune.json' | tar -czf "$work/pack/triton-cache.tar.gz" -T -)
    tar -czf "$OUT/peers-build.tar.gz" -C "$work/pack" build triton-cache.tar.gz
    ls -la "$OUT/peers-build.tar.gz"
fi
exit $status
