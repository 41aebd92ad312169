#!/usr/bin/env bash
# Planted kernel bugs for the sanitizer gate (docs/FUZZING.md, "Planted bugs").
#
# Writes the mutated kernel files into <out-dir> (with --full, a whole kernel
# tree): a copy of kernels/ with one mutation, to be
# used through hot reload (SSM_KERNEL_DIR=<out-dir>). Mutations:
#   mamba1/scan_fwd.cu   the barrier between the tile's prep (dt, dt*u, B/C rows
#                        into shared memory) and the scan lanes that read them is
#                        removed: a shared-memory read-after-write race that
#                        compute-sanitizer racecheck must report.
#
# usage: fuzz/planted/make-kernels.sh <out-dir> [--full]
#   --full   also copy every unmutated kernel file (a tree SSM_KERNEL_DIR can use)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:?usage: fuzz/planted/make-kernels.sh <out-dir> [--full]}"
full=0
[ "${2:-}" = "--full" ] && full=1
mkdir -p "$out/mamba1"
if [ "$full" -eq 1 ]; then
    cp -r "$repo/kernels/." "$out/"
fi
barrier='__syncthreads();  // prep visible to the scan lanes'
src="$repo/kernels/mamba1/scan_fwd.cu"
if [ "$(grep -cF "$barrier" "$src")" -ne 1 ]; then
    echo "make-kernels: the prep barrier of $src is gone or moved; update this script" >&2
    exit 1
fi
sed "s|$barrier|/* PLANTED BUG: barrier removed (fuzz/planted/make-kernels.sh) */|" "$src" \
    >"$out/mamba1/scan_fwd.cu"
