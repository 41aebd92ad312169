#!/usr/bin/env bash
# Runs ON the device machine (no cargo there), from the repository root, over
# the bundle that ci/device-prepare.sh built (docs/FUZZING.md, "Sanitizers").
#
#   1. compute-sanitizer memcheck, racecheck, initcheck and synccheck, each over
#      `ssmk fuzz --gpu require` on the differential and API targets: small
#      random shapes (L <= 64, chunk > L, varlen with empty sequences, malformed
#      parameters) through every CUDA implementation, checked against the oracle.
#      With SANITIZE_TESTS=1, memcheck also runs every GPU test binary.
#   2. The planted race: racecheck over the same fuzzing with the Mamba-1 scan
#      kernel missing its prep barrier (fuzz/planted/make-kernels.sh, loaded by hot
#      reload through SSM_KERNEL_DIR). It must report a hazard; if it does not, the
#      gate cannot see a missing barrier and the script fails.
#
# Writes $OUT/sanitize-<tool>.log, $OUT/sanitize-planted-racecheck.log and
# $OUT/sanitize-summary.txt (printed last). Exits non-zero on any finding (or an
# escaped planted race).
#
# usage: bash ci/sanitize.sh [bundle-dir]          (default .gpu/loop)
#   run(command="bash ci/sanitize.sh .gpu/loop", carry=[".gpu/loop"], timeout_s=300)
# env:  SANITIZE_SECONDS=20   fuzzing time per tool (sanitized launches are slow)
#       SANITIZE_SEED=1       seed of the fuzzing (the same cases under every tool)
#       SANITIZE_TOOLS="memcheck racecheck initcheck synccheck"
#       SANITIZE_TESTS=1      also memcheck every GPU test binary of the bundle
#                             (or a glob of binary names: SANITIZE_TESTS='gpu_device_inputs*')
#       SANITIZE_PLANTED=0    skip the planted race
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bundle="${1:-.gpu/loop}"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
summary="$out/sanitize-summary.txt"
: >"$summary"
seconds="${SANITIZE_SECONDS:-20}"
seed="${SANITIZE_SEED:-1}"
tools="${SANITIZE_TOOLS:-memcheck racecheck initcheck synccheck}"
targets="${SANITIZE_TARGETS:-scan_diff,ssd_diff,step_diff,api_malformed,scan_bwd_diff}"
ssmk="$bundle/bin/ssmk"

say() { echo "$*" | tee -a "$summary"; }
if [ ! -x "$ssmk" ]; then
    say "sanitize: no $ssmk (run ci/device-prepare.sh here and carry $bundle)"
    exit 2
fi
sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
if [ ! -x "$sanitizer" ]; then
    say "sanitize: compute-sanitizer not found (PATH, /usr/local/cuda/bin)"
    exit 2
fi
cuda_libs
export SSM_REQUIRE_GPU=1 RUST_BACKTRACE=1
export SSM_KERNEL_CACHE="${SSM_KERNEL_CACHE:-/tmp/ssm-kernel-cache}"
# The kernels device-run.sh chose (SSM_DEVICE_KERNELS), else this checkout's.
export SSM_KERNEL_DIR="${SSM_KERNEL_DIR:-$repo_root/kernels}"
say "sanitize on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ): $("$sanitizer" --version | tail -n1)"
say "ssmk fuzz --gpu require --targets $targets --seconds $seconds --seed $seed, kernels $SSM_KERNEL_DIR"

failures=0
# sanitized NAME LOG TOOL COMMAND...: run COMMAND under TOOL; record the verdict.
# Sets $hazards to the tool's error count (-1 when it printed no summary).
sanitized() {
    local name="$1" log="$2" tool="$3"
    shift 3
    local start status
    start=$(date +%s)
    local extra=()
    [ "$tool" = racecheck ] && extra=(--racecheck-report all)
    "$sanitizer" --tool "$tool" "${extra[@]}" --error-exitcode 99 --print-limit 20 \
        --launch-timeout 0 "$@" >"$log" 2>&1
    status=$?
    hazards="$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$log" | tail -n1 | grep -Eo '[0-9]+' || echo -1)"
    local races
    races="$(grep -Eo 'RACECHECK SUMMARY: [0-9]+ hazard' "$log" | tail -n1 | grep -Eo '[0-9]+' || true)"
    [ -n "$races" ] && [ "$races" -gt "${hazards:-0}" ] && hazards="$races"
    printf '%-46s exit %-3s errors %-4s %5ss\n' "$name" "$status" "$hazards" "$(($(date +%s) - start))" \
        | tee -a "$summary"
    return "$status"
}

for tool in $tools; do
    if ! sanitized "$tool: ssmk fuzz" "$out/sanitize-$tool.log" "$tool" \
        "$ssmk" fuzz --gpu require --targets "$targets" --seconds "$seconds" --seed "$seed"; then
        failures=$((failures + 1))
        grep -m3 -E 'FINDING|replay:|=========.*(Invalid|Race|Uninitialized|Barrier|hazard)' \
            "$out/sanitize-$tool.log" | tee -a "$summary"
    fi
done

tests_glob="${SANITIZE_TESTS:-0}"
[ "$tests_glob" = 1 ] && tests_glob='*'
if [ "$tests_glob" != 0 ]; then
    : >"$out/sanitize-tests.log"
    for test in "$bundle"/tests/*; do
        [ -x "$test" ] || continue
        # shellcheck disable=SC2254 # the glob is the point
        case "$(basename "$test")" in $tests_glob) ;; *) continue ;; esac
        if ! sanitized "memcheck: $(basename "$test")" "$out/sanitize-test.tmp" memcheck \
            "$test" --test-threads=1; then
            failures=$((failures + 1))
        fi
        cat "$out/sanitize-test.tmp" >>"$out/sanitize-tests.log"
    done
    rm -f "$out/sanitize-test.tmp"
fi

if [ "${SANITIZE_PLANTED:-1}" = 1 ]; then
    planted="$(mktemp -d)"
    if bash fuzz/planted/make-kernels.sh "$planted" --full; then
        # The planted race must be reported: a non-zero exit with hazards counted.
        SSM_KERNEL_DIR="$planted" sanitized "planted race: racecheck, scan without barrier" \
            "$out/sanitize-planted-racecheck.log" racecheck \
            "$ssmk" fuzz --gpu require --targets scan_diff --seconds "$seconds" --seed "$seed"
        status=$?
        if [ "$status" -ne 0 ] && [ "${hazards:--1}" -gt 0 ]; then
            say "planted race: CAUGHT by racecheck"
        elif [ "$status" -ne 0 ]; then
            say "planted race: the run failed without a racecheck hazard (a fuzz finding?); see the log"
            failures=$((failures + 1))
        else
            say "planted race: NOT caught (racecheck reported no hazard)"
            failures=$((failures + 1))
        fi
    else
        say "planted race: could not build the mutated kernel tree"
        failures=$((failures + 1))
    fi
    rm -rf "$planted"
fi

say "sanitize: $failures failure(s)"
[ "$failures" -eq 0 ]
