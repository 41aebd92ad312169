#!/usr/bin/env bash
# v6: the state update's hi/lo split only with final states. Committed
# measurement first (default/states/z, the three workloads), then the GPU tests,
# then comparisons through the experiment switches.
set -u
B=.gpu/loop
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export SSM_KERNEL_DIR=$PWD/kernels SSM_REQUIRE_GPU=1 SSM_KERNEL_CACHE=/tmp/kc
BENCH=$B/examples/mamba2-ssd__gpu_ssd_bench
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > $R/smi.txt
T0=$(date +%s)
run() { name=$1; shift; flags=$1; shift
  SSM_NVRTC_FLAGS="$flags" timeout 200 $BENCH --json $R/$name.json "$@" > $R/$name.log 2>&1
  echo "== $name [$flags] $* (rc $?, $(( $(date +%s) - T0 )) s)"; grep -E '^\| (M2|off)' $R/$name.log | cut -d'|' -f2-5,11-13; }
S="--shapes M2-2.7B,M2-long,M2-groups"
run v6 "" $S --variants default,states,z
( SSM_NVRTC_FLAGS="" timeout 220 $B/tests/mamba2-ssd__gpu_ssd --test-threads 1 --nocapture > $R/gpu_ssd_tests.log 2>&1; echo "tests rc=$? ($(( $(date +%s) - T0 )) s)" )
grep -E "test result|FAILED|panicked" $R/gpu_ssd_tests.log | head -5
run split_always "-DSSD_STATE_SPLIT=1" $S --variants default
run z_noprefetch "-DSSD_Z_PREFETCH=0" $S --variants z
run early0 "-DSSD_EARLY_CB=0" --shapes M2-2.7B,M2-long --variants default
run uintra "-DSSD_UNROLL_INTRA=1" --shapes M2-2.7B,M2-long --variants default
tar czf $OUT/v6.tar.gz -C $OUT r && rm -rf $R
