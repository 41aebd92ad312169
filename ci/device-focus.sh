#!/usr/bin/env bash
# Runs ON the device machine: one focused build-check-time call for kernel work
# in progress (docs/DESIGN.md §5), over a trimmed device-prepare bundle whose
# binaries may be xz-compressed to fit the carry limit. Kernels are hot-reloaded
# from this checkout's kernels/ (they travel with every call), so a kernel-only
# change needs no new bundle.
#
# Steps, each limited and logged under $OUT; results.tar.gz is refreshed after
# every step, so a call that runs out of time still returns what it finished:
#   tests   the bundle's test binaries matching SSM_FOCUS_TESTS (a glob, e.g.
#           '*gpu_ssd_backward*'), SSM_REQUIRE_GPU=1           -> tests.log
#   bench   ci/bench.sh with SSM_BENCH_QUICK=1 and SSM_BENCH_FILTER=$SSM_FOCUS_BENCH
#           (CUDA events, measured ceilings, each case verified first; ncu DRAM
#           bytes merged)                                       -> bench.json, bench.log
#   ncu     one launch of the cases matching SSM_FOCUS_NCU_CASES, kernels matching
#           the regex SSM_FOCUS_NCU_KERNELS, with the stall sections
#           (WarpStateStats, SchedulerStats, MemoryWorkloadAnalysis) -> ncu-detail.csv
#   peers   (before bench) ci/peers/run.sh when .peers was carried (SSM_PEERS_ARGS):
#           mamba_ssm timed on this card in this call, filed into bench.json -> peers.json
# and prints a short table (bench show) last.
#
# usage: bash ci/device-focus.sh BUNDLE [step,step,...]   (default: tests,bench,ncu)
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bundle="${1:?usage: device-focus.sh BUNDLE [steps]}"
steps="${2:-tests,bench,ncu}"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out/results"
step_timeout="${SSM_STEP_TIMEOUT:-240}"

for f in "$bundle"/bin/*.xz "$bundle"/tests/*.xz "$bundle"/examples/*.xz "$bundle"/benches/*.xz; do
    [ -f "$f" ] && xz -d -f -T0 "$f"
done
chmod +x "$bundle"/bin/* "$bundle"/tests/* "$bundle"/examples/* 2>/dev/null

cuda_libs
export SSM_REQUIRE_GPU=1
export SSM_KERNEL_DIR="$repo_root/kernels"
export SSM_KERNEL_CACHE=/tmp/ssm-kernel-cache
if [ -z "${SSM_COMMIT:-}" ] && [ -f "$bundle/manifest.json" ]; then
    SSM_COMMIT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"])' "$bundle/manifest.json")"
    export SSM_COMMIT
fi
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
pack() { tar -C "$out" -czf "$out/results.tar.gz.part" results && mv "$out/results.tar.gz.part" "$out/results.tar.gz"; }
has() { [[ ",$steps," == *",$1,"* ]]; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv >"$out/results/smi.txt" 2>&1 || true
note "device-focus: commit ${SSM_COMMIT:-?}, kernels from $SSM_KERNEL_DIR, steps $steps"

if has tests; then
    : >"$out/tests.log"
    for t in "$bundle"/tests/${SSM_FOCUS_TESTS:-*}; do
        [ -x "$t" ] || continue
        start=$SECONDS
        timeout --kill-after=10 "$step_timeout" "$t" --test-threads=1 >>"$out/tests.log" 2>&1
        rc=$?
        note "test $(basename "$t"): exit $rc ($((SECONDS - start)) s)"
    done
    grep -E "^test result|FAILED|panicked" "$out/tests.log" | tail -n 20 >>"$summary"
    cp "$out/tests.log" "$out/results/"
    pack
fi

if has peers && [ -d .peers ]; then
    start=$SECONDS
    # shellcheck disable=SC2086 # SSM_PEERS_ARGS is a list of options
    timeout --kill-after=10 400 bash ci/peers/run.sh "$out/results/peers.json" ${SSM_PEERS_ARGS:-} >"$out/results/peers.log" 2>&1
    note "peers: exit $? ($((SECONDS - start)) s)"
    cp "$out/results/peers.json" "$out/" 2>/dev/null
    pack
fi

if has bench; then
    start=$SECONDS
    peers_file=""
    [ -f "$out/results/peers.json" ] && peers_file="$out/results/peers.json"
    OUT="$out/results" SSM_BENCH_QUICK=1 SSM_BENCH_FILTER="${SSM_FOCUS_BENCH:-}" SSM_BENCH_PEERS="$peers_file" \
        SSM_BENCH_TIMEOUT="$step_timeout" bash ci/bench.sh "$bundle" >"$out/results/bench-step.log" 2>&1
    note "bench: exit $? ($((SECONDS - start)) s)"
    cp "$out/results/bench.json" "$out/results/bench.log" "$out/" 2>/dev/null
    pack
fi

if has ncu && [ -n "${SSM_FOCUS_NCU_CASES:-}" ]; then
    start=$SECONDS
    runner="$bundle/examples/ssm-benches__bench_suite"
    timeout --kill-after=10 "$step_timeout" ncu --clock-control none --print-units base --csv --page details \
        --section SpeedOfLight --section Occupancy --section LaunchStats \
        --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
        -k "regex:${SSM_FOCUS_NCU_KERNELS:-.}" --log-file "$out/results/ncu-detail.csv" \
        "$runner" --suite gpu --require-gpu --quick --filter "$SSM_FOCUS_NCU_CASES" \
        --ncu-manifest "$out/results/ncu-detail-manifest.json" >"$out/results/ncu-detail.log" 2>&1
    note "ncu: exit $? ($((SECONDS - start)) s)"
    python3 - "$out/results/ncu-detail.csv" <<'EOF' | tee -a "$summary"
import csv, sys
rows = list(csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')))
if not rows:
    sys.exit()
head = rows[0]
k, m, v = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value")
want = ("Duration", "Achieved Occupancy", "Compute (SM) Throughput", "DRAM Throughput", "Registers Per Thread")
for r in rows[1:]:
    if r[m] in want:
        print(f"ncu {r[k][:40]:40s} {r[m]:28s} {r[v]}")
EOF
    pack
fi

[ -f "$out/bench.json" ] && "$bundle/examples/ssm-benches__bench_suite" show "$out/bench.json" | tail -n 40
cat "$summary"
