#!/usr/bin/env bash
# Kernel pack (README "Running without NVRTC"): compiles every kernel variant the
# crates list for sm_80, sm_86, sm_89, sm_90 (SASS) and compute_90 (PTX for newer
# devices) with the pinned NVRTC, fails if any does not compile, then looks every
# module up again with NVRTC switched off (`ssmk kernels check`) and loads the
# resource report's variants from the pack alone (SSM_KERNEL_PACK_ONLY=1), so the
# run-time path is exercised too. No GPU needed. Prints how long it took (about 40 s of
# wall time on 2 idle cores; KERNEL_PACK_COVERAGE=models builds the larger
# release pack: 1782 modules, 114 MiB, 9 minutes of CPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash .ci/install-cuda.sh >/dev/null
coverage="${KERNEL_PACK_COVERAGE:-reference}"
out="${KERNEL_PACK_DIR:-$(mktemp -d)/kernel-pack}"
cargo build -q -p ssmk
ssmk() { cargo run -q -p ssmk -- "$@"; }
start=$(date +%s)
# Cache off: every module is compiled here, not taken from an earlier run.
SSM_KERNEL_CACHE=off ssmk kernels pack --coverage "$coverage" --out "$out"
built=$(date +%s)
ssmk kernels check --pack "$out" --coverage "$coverage"
# The run-time path (Compiler::from_env with SSM_KERNEL_PACK, NVRTC off): every
# variant of the resource report must load from the pack. (Its budget verdicts
# are kernel_budgets.rs's business, so only load failures count here.)
report="$(dirname "$out")/resources-from-pack.json"
SSM_KERNEL_PACK="$out" SSM_KERNEL_PACK_ONLY=1 ssmk resources --json >"$report" || true
if ! grep -q '"passed"' "$report" || grep -q '"verdict": "compile_failed"' "$report"; then
    echo "kernel pack: variants of \`ssmk resources\` did not load from the pack (see $report)" >&2
    grep -B3 -A3 '"compile_failed"' "$report" >&2 || true
    exit 1
fi
echo "kernel pack ($coverage): built in $(( built - start )) s, checked in $(( $(date +%s) - built )) s; $(du -sh "$out" | cut -f1) in $out"
