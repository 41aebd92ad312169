#!/usr/bin/env bash
# SSD v7 (commit f5f0523, kernels 44272752): the committed measurement, the GPU
# tests, compute-sanitizer on the split-sequence test, the full suite. One archive.
set -u
B=.gpu/loop
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export SSM_COMMIT=$(python3 -c 'import json; print(json.load(open(".gpu/loop/manifest.json"))["commit"])')
R=$OUT/r; mkdir -p $R/ssd $R/suite; T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $R/ssd/smi.txt
SSM_KERNEL_CACHE=/tmp/kc SSM_REQUIRE_GPU=1 timeout 150 $B/examples/mamba2-ssd__gpu_ssd_bench --json $R/ssd/ssd_fwd_h100.json \
  --shapes M2-2.7B,M2-long,M2-groups --variants default,states,z,split6 > $R/ssd/bench.log 2>&1
echo "== ssd bench rc=$? ($(( $(date +%s) - T0 )) s) commit $SSM_COMMIT"; grep -E '^\| M2' $R/ssd/bench.log | cut -d'|' -f2-5,11-13
SSM_KERNEL_CACHE=/tmp/kc SSM_REQUIRE_GPU=1 timeout 200 $B/tests/mamba2-ssd__gpu_ssd --test-threads 1 --nocapture > $R/ssd/gpu_ssd_tests.log 2>&1; echo "== tests rc=$? ($(( $(date +%s) - T0 )) s)"
grep -E "test result|FAILED|panicked" $R/ssd/gpu_ssd_tests.log | head -5
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  SSM_KERNEL_CACHE=/tmp/kc SSM_REQUIRE_GPU=1 timeout 150 $CS --tool $tool --print-limit 20 --error-exitcode 9 $B/tests/mamba2-ssd__gpu_ssd lengths_varlen_and_split_sequences --test-threads 1 > $R/ssd/sanitizer_$tool.log 2>&1
  echo "== $tool rc=$? ($(( $(date +%s) - T0 )) s)"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test result" $R/ssd/sanitizer_$tool.log | head -3
done
OUT=$R/suite SSM_BENCH_TIMEOUT=200 bash ci/bench.sh $B 2>&1 | grep -E "===|merge|M2-|M1-2.8B/bf16|FAIL|SKIP|commit"
echo "== done ($(( $(date +%s) - T0 )) s)"
tar czf $OUT/v7.tar.gz -C $OUT r && rm -rf $R
