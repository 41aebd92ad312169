#!/usr/bin/env bash
# v6 follow-up: a repeat of the committed measurement (variance), and
# compute-sanitizer memcheck/racecheck over the GPU tests of lengths, varlen and
# split sequences (fused kernel, prepass, C B^T pre-kernel, SIMT kernel).
set -u
B=.gpu/loop
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export SSM_KERNEL_DIR=$PWD/kernels SSM_REQUIRE_GPU=1 SSM_KERNEL_CACHE=/tmp/kc
BENCH=$B/examples/mamba2-ssd__gpu_ssd_bench
TESTS=$B/tests/mamba2-ssd__gpu_ssd
R=$OUT/r; mkdir -p $R
T0=$(date +%s)
for i in 1 2; do
  timeout 120 $BENCH --json $R/repeat$i.json --shapes M2-2.7B,M2-long,M2-groups --variants default > $R/repeat$i.log 2>&1
  echo "== repeat $i (rc $?, $(( $(date +%s) - T0 )) s)"; grep -E '^\| M2' $R/repeat$i.log | cut -d'|' -f2-5,13
done
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
# Warm the NVRTC cache outside the sanitizer, then check.
timeout 60 $TESTS lengths_varlen_and_split_sequences --test-threads 1 > $R/warm.log 2>&1; echo "warm rc=$?"
for tool in memcheck racecheck; do
  timeout 170 $CS --tool $tool --print-limit 20 --error-exitcode 9 $TESTS lengths_varlen_and_split_sequences --test-threads 1 --nocapture > $R/sanitizer_$tool.log 2>&1
  echo "== $tool rc=$? ($(( $(date +%s) - T0 )) s)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result|Hazard|Invalid" $R/sanitizer_$tool.log | head -8
done
tar czf $OUT/v6b.tar.gz -C $OUT r && rm -rf $R
