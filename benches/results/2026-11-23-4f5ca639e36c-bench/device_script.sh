#!/usr/bin/env bash
# Clean-commit bundle (4f5ca63, kernels 443b2d49): the SSD benchmark once more
# with the commit recorded, then the full benchmark suite + ncu DRAM bytes
# (ci/bench.sh) for a new gate baseline.
set -u
B=.gpu/loop
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export SSM_COMMIT=$(python3 -c 'import json; print(json.load(open(".gpu/loop/manifest.json"))["commit"])')
T0=$(date +%s)
mkdir -p $OUT/ssd
SSM_KERNEL_CACHE=/tmp/kc SSM_REQUIRE_GPU=1 timeout 150 $B/examples/mamba2-ssd__gpu_ssd_bench --json $OUT/ssd/ssd_fwd_h100.json \
  --shapes M2-2.7B,M2-long,M2-groups --variants default,states,z > $OUT/ssd/bench.log 2>&1
echo "== ssd bench rc=$? ($(( $(date +%s) - T0 )) s) commit $SSM_COMMIT"; grep -E '^\| M2' $OUT/ssd/bench.log | cut -d'|' -f2-5,13
SSM_BENCH_TIMEOUT=200 bash ci/bench.sh $B 2>&1 | tail -60
echo "== done ($(( $(date +%s) - T0 )) s)"
