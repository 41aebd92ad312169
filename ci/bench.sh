#!/usr/bin/env bash
# Runs ON the device machine (no cargo there), from the repository root: the
# benchmark suite with CUDA-event timing and NVML sampling, then each GPU case
# once more under Nsight Compute for its measured DRAM bytes, merged into one
# result set (schema ssm-bench-results v1, docs/BENCHMARKS.md).
#
# Binaries: the bench_suite runner and (optionally) the criterion GPU bench,
# from the device-prepare bundle (.gpu/loop/examples/ssm-benches__bench_suite,
# .gpu/loop/benches/ssm-benches__gpu_kernels-*) or a folder holding
# bench_suite and gpu_kernels (e.g. .gpu/bench, see docs/BENCHMARKS.md).
#
# usage: bash ci/bench.sh [bundle-or-bin-dir]
# env:   SSM_BENCH_QUICK=1       trimmed sweeps (every family, fewer points)
#        SSM_BENCH_FILTER=text   only cases whose id contains text (a,b: either)
#        SSM_BENCH_NCU=0         skip the ncu pass
#        SSM_BENCH_CRITERION=re  also run the criterion GPU bench on benchmarks matching re
#        SSM_BENCH_TIMEOUT=600   seconds per step (the full suite took over 280 s on the H200)
#        SSM_BENCH_PEERS=file    a peer timing file (ci/peers/run.sh) filed into bench.json
#        SSM_BENCH_CEILINGS=measured|datasheet  (default measured: copy, MMA, exp2 on this card)
# Writes to $OUT (at most 8 files): bench.json (the merged result set), bench.log,
# ncu.csv, ncu-manifest.json, ncu.log, criterion.log, nvidia-smi.txt; prints the table last.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
dir="${1:-.gpu/loop}"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
step_timeout="${SSM_BENCH_TIMEOUT:-600}"

find_bin() { # find_bin NAME: the first executable matching in the known layouts
    for candidate in "$dir/examples/ssm-benches__$1" "$dir/$1" "$dir"/benches/ssm-benches__"$1"*; do
        [ -x "$candidate" ] && { echo "$candidate"; return 0; }
    done
    return 1
}
runner="$(find_bin bench_suite)" || { echo "bench.sh: no bench_suite binary under $dir" >&2; exit 2; }

cuda_libs
export SSM_KERNEL_CACHE="${SSM_KERNEL_CACHE:-/tmp/ssm-kernel-cache}"
# Kernels: those embedded in the binaries at build time (they match the launchers
# compiled beside them); set SSM_KERNEL_DIR to hot-reload a source tree instead.
# The device machine has no git history: take the commit from the bundle's manifest.
if [ -z "${SSM_COMMIT:-}" ] && [ -f "$dir/manifest.json" ]; then
    SSM_COMMIT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' "$dir/manifest.json" 2>/dev/null)"
    SSM_COMMIT_DIRTY="$(python3 -c 'import json,sys; print(str(json.load(open(sys.argv[1]))["dirty"]).lower())' "$dir/manifest.json" 2>/dev/null)"
    export SSM_COMMIT SSM_COMMIT_DIRTY
fi

args=(--suite gpu --require-gpu)
[ "${SSM_BENCH_QUICK:-0}" = 1 ] && args+=(--quick)
[ -n "${SSM_BENCH_FILTER:-}" ] && args+=(--filter "$SSM_BENCH_FILTER")
timed_args=(--ceilings "${SSM_BENCH_CEILINGS:-measured}")
[ -n "${SSM_BENCH_PEERS:-}" ] && timed_args+=(--peers "$SSM_BENCH_PEERS")

status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,power.limit,clocks_event_reasons.active \
    --format=csv >"$out/nvidia-smi.txt" 2>&1 || true

echo "=== bench: $runner ${args[*]} ${timed_args[*]}"
timeout --kill-after=10 "$step_timeout" "$runner" "${args[@]}" "${timed_args[@]}" --json "$out/bench.json" >"$out/bench.log" 2>&1
rc=$?
[ $rc -eq 0 ] || { echo "bench: exit $rc (see bench.log)"; status=1; }

if [ "${SSM_BENCH_NCU:-1}" != 0 ] && [ -f "$out/bench.json" ]; then
    if command -v ncu >/dev/null 2>&1; then
        echo "=== ncu: each GPU case launched once"
        # --clock-control none: measure at the card's own clocks, as the timings were.
        # ncu flushes caches before each profiled launch (--cache-control all, its
        # default), so the DRAM bytes are those of a cold call.
        timeout --kill-after=10 "$step_timeout" ncu --clock-control none --print-units base --csv \
            --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum \
            --log-file "$out/ncu.csv" \
            "$runner" "${args[@]}" --ncu-manifest "$out/ncu-manifest.json" >"$out/ncu.log" 2>&1
        rc=$?
        if [ $rc -eq 0 ]; then
            "$runner" merge-ncu --results "$out/bench.json" --ncu "$out/ncu.csv" \
                --manifest "$out/ncu-manifest.json" >>"$out/ncu.log" 2>&1 || { echo "merge-ncu failed (see ncu.log)"; status=1; }
        else
            echo "ncu: exit $rc (see ncu.log)"; status=1
        fi
    else
        echo "ncu: not on PATH; DRAM bytes not measured" | tee "$out/ncu.log"
    fi
fi

if [ -n "${SSM_BENCH_CRITERION:-}" ]; then
    if crit="$(find_bin gpu_kernels)"; then
        echo "=== criterion: $crit --bench '${SSM_BENCH_CRITERION}'"
        timeout --kill-after=10 "$step_timeout" "$crit" --bench --noplot "$SSM_BENCH_CRITERION" >"$out/criterion.log" 2>&1 \
            || { echo "criterion: failed (see criterion.log)"; status=1; }
    else
        echo "criterion: no gpu_kernels binary under $dir" | tee "$out/criterion.log"
    fi
fi

tail -n 4 "$out/ncu.log" 2>/dev/null
grep -E "^(SKIPPED|FAILED)" "$out/bench.log"
[ -f "$out/bench.json" ] && "$runner" show "$out/bench.json"
exit $status
