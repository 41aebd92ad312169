#!/usr/bin/env bash
# Fuzzing gate (docs/FUZZING.md), stable Rust only:
#   1. the regression tests: every past finding, the committed seed corpora
#      (fuzz/corpus/<target>/) replayed, and a few hundred random cases;
#   2. each cargo-fuzz target for a bounded time, starting from its corpus
#      (`cargo fuzz build -s none` works on stable; no sanitizer).
# Without cargo-fuzz (`cargo install cargo-fuzz`), step 2 runs the same checks
# from random seeds through `ssmk fuzz` for the same total time.
#
# usage: ci/fuzz.sh [seconds-per-target]
#   FUZZ_SECONDS   seconds per target (default 15: about 4 minutes in all on 2
#                  cores, of which the instrumented build takes 1 to 2)
#   FUZZ_TARGETS   space-separated subset of the targets
# A finding exits non-zero; its input is in fuzz/artifacts/<target>/ (replay:
# SSM_FUZZ_TARGET=<target> SSM_FUZZ_INPUT=<file> cargo test -p ssm-verify
# --test regressions replay_input -- --ignored --nocapture).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-${FUZZ_SECONDS:-15}}"
targets="${FUZZ_TARGETS:-scan_diff ssd_diff step_diff api_malformed cpu_determinism ssd_bwd_diff scan_bwd_diff}"
start=$(date +%s)
log() { echo "== fuzz: $*"; }

log "regressions and corpus replay"
cargo test -q -p ssm-verify --test regressions

if cargo fuzz --version >/dev/null 2>&1; then
    log "building the targets (cargo fuzz build -s none)"
    (cd fuzz && cargo fuzz build -s none)
    for target in $targets; do
        # New inputs go to a scratch folder; the committed corpus is only read.
        scratch="$(mktemp -d)"
        output="$(mktemp)"
        marker="$(mktemp)"
        log "$target for ${seconds} s"
        set +e
        (cd fuzz && cargo fuzz run -s none "$target" "$scratch" "corpus/$target" -- \
            -max_total_time="$seconds" -max_len=512 -timeout=10 -print_final_stats=1) >"$output" 2>&1
        status=$?
        set -e
        grep -E '(DONE|number_of_executed_units|panicked|^\[|^  problem|SUMMARY|Test unit written)' "$output" || true
        found="$(find fuzz/artifacts/"$target" -newer "$marker" -type f 2>/dev/null || true)"
        rm -rf "$scratch" "$output" "$marker"
        if [ -n "$found" ]; then
            log "FINDING in $target: $found"
            exit 1
        fi
        [ "$status" -eq 0 ] || { log "$target exited with $status"; exit 1; }
    done
else
    total=$(( seconds * $(echo "$targets" | wc -w) ))
    log "cargo-fuzz is not installed: random cases through ssmk fuzz for ${total} s"
    list="$(echo "$targets" | tr ' ' ',')"
    cargo run -q --profile test -p ssmk -- fuzz --gpu off --seconds "$total" --targets "$list" \
        --artifact-dir fuzz/artifacts
fi
log "passed in $(( $(date +%s) - start )) s"
