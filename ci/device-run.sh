#!/usr/bin/env bash
# Runs ON the device machine (no cargo there), from the repository root, over
# the bundle that ci/device-prepare.sh built (carried by the `run` tool).
#
# Steps (each logged, timed and limited; a failing step does not stop the next):
#   info       gpu_info: device, NVRTC, headers, kernel hashes       -> gpu-info.json
#   resources  ssmk resources --json (every variant vs its budget)   -> resources.json
#   tests      every GPU test binary, SSM_REQUIRE_GPU=1              -> device-run.log
#   verify     ssmk verify --gpu require --json                      -> verify.json
#   custom     issue 13's SSD problem (SSM_CUSTOM_SHAPE, bf16, all options, chunk 128):
#              ssmk verify --impl cuda,cpu, ssmk bench --op ssd, ssmk fuzz --shape
#              (SSM_CUSTOM_FUZZ_CASES, default 4); then ssmk verify on the shapes in
#              SSM_DEVICE_VERIFY ("args;args;...")                     -> custom.log
#   fuzz       ssmk fuzz --gpu require (SSM_FUZZ_SECONDS, default 60)  -> device-run.log
#   sanitize   ci/sanitize.sh: compute-sanitizer memcheck/racecheck/initcheck/synccheck
#   peers      ci/peers/run.sh: mamba_ssm and fla timed on this card  -> results.tar.gz (peers.json)
#              (needs .peers carried; its CUDA extension is built in the background
#              from the start of the run, while the GPU tests run)
#   bench      examples bench_*, criterion benches (SSM_DEVICE_CRITERION=1), ci/bench.sh
#              (measured ceilings, every case verified then timed, ncu, the peers
#              filed into the same result set)                       -> results.tar.gz
# plus summary.txt (printed last) and manifest.json. At most 8 files come back.
#
# usage: bash ci/device-run.sh [bundle-dir] [step,step,...]
# env:   SSM_DEVICE_KERNELS=worktree (default: hot-reload this checkout's kernels/,
#        which travels with every call) | built (the copy made at prepare time)
#        SSM_DEVICE_FULL=1     pass --full to ssmk verify (the docs/DESIGN.md workloads)
#        SSM_STEP_TIMEOUT=240  seconds per step
#        SSM_DEVICE_ONLY=glob  run only tests/examples/benches whose bundle name
#                              matches (e.g. 'ssm-gpu__*' or '*decode*'; extglob,
#                              so several: '@(*decode*|*device_inputs)')
set -uo pipefail
shopt -s extglob
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bundle="${1:-.gpu/loop}"
steps="${2:-info,resources,tests,verify,bench}"
out="${OUT:-$repo_root/.gpu/out}"
mkdir -p "$out"
log="$out/device-run.log"
summary="$out/summary.txt"
: >"$log"
: >"$summary"
step_timeout="${SSM_STEP_TIMEOUT:-240}"

if [ ! -f "$bundle/manifest.json" ]; then
    echo "device-run: no bundle at $bundle (run ci/device-prepare.sh here and carry it)" | tee -a "$summary" >&2
    exit 2
fi
cp "$bundle/manifest.json" "$out/manifest.json"

# NVRTC and its builtins live beside the toolkit; ssm-gpu also finds them there itself.
cuda_libs
export SSM_REQUIRE_GPU=1
export SSM_KERNEL_CACHE=/tmp/ssm-kernel-cache
export SSM_RESULTS_DIR=/tmp/ssm-results
export RUST_BACKTRACE=1
rm -rf "$SSM_RESULTS_DIR" && mkdir -p "$SSM_RESULTS_DIR"
# A call that runs past its time returns only what lies under $OUT: pack the
# results folder into $out/results.tar.gz every 20 s (written aside, then
# renamed, so a kill never leaves half a file), not only at the end. A bench
# step cut short still returns its bench.log with every case it finished.
pack_results() {
    [ -n "$(ls -A "$SSM_RESULTS_DIR" 2>/dev/null)" ] || return 0
    tar -czf "$out/results.tar.gz.part" -C "$SSM_RESULTS_DIR" . 2>/dev/null \
        && mv -f "$out/results.tar.gz.part" "$out/results.tar.gz"
}
( while sleep 20; do pack_results; done ) &
packer_pid=$!
trap 'kill "$packer_pid" 2>/dev/null' EXIT
case "${SSM_DEVICE_KERNELS:-worktree}" in
    worktree) export SSM_KERNEL_DIR="$repo_root/kernels" ;;
    built) export SSM_KERNEL_DIR="$repo_root/$bundle/kernels" ;;
    *) echo "device-run: SSM_DEVICE_KERNELS must be worktree or built" >&2; exit 2 ;;
esac

failures=0
# The peers' CUDA extension takes minutes to build: start it now, in the
# background, so it overlaps the GPU tests (which time nothing); the peers step
# waits for it and then times on an otherwise idle CPU.
peers_build_pid=""
if [[ ",$steps," == *",peers,"* ]] && [ -d "${PEERS:-.peers}/mamba_ssm" ]; then
    PEERS_BUILD_ONLY=1 nice bash ci/peers/run.sh "$SSM_RESULTS_DIR/peers-build.json" >"$SSM_RESULTS_DIR/peers-build.log" 2>&1 &
    peers_build_pid=$!
fi
# run_step NAME COMMAND...: log output, record status and seconds in the summary.
run_step() {
    local name="$1"
    shift
    local start end status
    echo "=== $name: $*" >>"$log"
    start=$(date +%s.%N)
    timeout --kill-after=10 "$step_timeout" "$@" >>"$log" 2>&1
    status=$?
    end=$(date +%s.%N)
    local verdict=ok
    if [ $status -eq 124 ] || [ $status -eq 137 ]; then
        verdict="TIMEOUT after ${step_timeout}s"
    elif [ $status -ne 0 ]; then
        verdict="FAILED (exit $status)"
    fi
    [ "$verdict" = ok ] || failures=$((failures + 1))
    printf '%-58s %-22s %7.1fs\n' "$name" "$verdict" "$(awk "BEGIN { print $end - $start }")" >>"$summary"
    echo "=== $name: $verdict" >>"$log"
}

has_step() { [[ ",$steps," == *",$1,"* ]]; }
# selected PATH: the binary's bundle name matches SSM_DEVICE_ONLY (default: all).
selected() {
    local name
    name="$(basename "$1")"
    # shellcheck disable=SC2053 # the right side is a glob on purpose
    [[ $name == ${SSM_DEVICE_ONLY:-*} ]]
}
ssmk="$bundle/bin/ssmk"
# Subcommands appear as the CLI grows; skip (and say so) those not built in yet.
ssmk_has() { "$ssmk" help "$1" >/dev/null 2>&1; }

{
    echo "device-run on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv,noheader 2>&1 || true
    echo "bundle $bundle: $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["commit"][:12], "dirty" if m["dirty"] else "clean", "kernels", m["kernels_hash"][:12])' "$bundle/manifest.json" 2>&1)"
    python3 -c 'import json,sys; f=json.load(open(sys.argv[1])).get("build_failures"); print("NOT BUILT (left out of the bundle): " + ", ".join(f)) if f else None' "$bundle/manifest.json"
    echo "kernel sources: $SSM_KERNEL_DIR"
} >>"$summary"

if has_step info; then
    run_step "info: gpu_info" sh -c "'$bundle/bin/gpu_info' > '$out/gpu-info.json'"
fi
if has_step resources; then
    if ssmk_has resources; then
        run_step "resources: ssmk resources --json" sh -c "'$ssmk' resources --json > '$out/resources.json'"
    else
        echo "resources: SKIPPED (this ssmk has no 'resources' subcommand)" >>"$summary"
    fi
fi
if has_step tests; then
    for test in "$bundle"/tests/*; do
        [ -x "$test" ] && selected "$test" || continue
        # One thread: timings inside tests must not share the GPU with each other.
        run_step "test: $(basename "$test")" "$test" --test-threads=1 --nocapture
    done
fi
if has_step verify; then
    if ssmk_has verify; then
        full=()
        [ "${SSM_DEVICE_FULL:-0}" = 1 ] && full=(--full)
        run_step "verify: ssmk verify --gpu require ${full[*]}" \
            "$ssmk" verify --gpu require "${full[@]}" --json "$out/verify.json"
    else
        echo "verify: SKIPPED (this ssmk has no 'verify' subcommand)" >>"$summary"
    fi
fi
if has_step custom; then
    # Issue 13's problem on this card, then SSM_DEVICE_VERIFY="args;args;...":
    # ssmk verify on shapes of the caller's (e.g. "scan --shape b=4,D=5120,N=16,L=4096").
    # Each run's output also goes to custom.log (the log the issue keeps).
    custom_log="$out/custom.log"
    : >"$custom_log"
    # custom_run NAME CMD...: run_step with CMD's output tee'd to custom.log too.
    custom_run() {
        local name="$1"
        shift
        echo "=== $name: $*" >>"$custom_log"
        # shellcheck disable=SC2016 # expanded by the inner bash
        run_step "$name" bash -c 'log="$1"; shift; "$@" 2>&1 | tee -a "$log"; exit "${PIPESTATUS[0]}"' \
            custom_run "$custom_log" "$@"
    }
    custom_shape="${SSM_CUSTOM_SHAPE:-b=2,L=4097,H=24,P=64,N=96,G=3}"
    custom_run "custom: ssmk verify ssd --shape $custom_shape" \
        "$ssmk" verify ssd --shape "$custom_shape" --options all --dtype bf16 \
        --impl cuda,cpu --chunk 128 --gpu require --seed "${SSM_CUSTOM_SEED:-1}"
    custom_run "custom: ssmk bench --op ssd --shape $custom_shape" \
        "$ssmk" bench --op ssd --shape "$custom_shape" --options all --dtype bf16 \
        --chunk 128 --require-gpu --json "$SSM_RESULTS_DIR/custom-bench.json"
    custom_run "custom: ssmk fuzz --shape $custom_shape" \
        "$ssmk" fuzz --shape "$custom_shape" --targets ssd_diff --gpu require \
        --cases "${SSM_CUSTOM_FUZZ_CASES:-4}" \
        --seconds "$((step_timeout > 60 ? step_timeout - 30 : step_timeout / 2))"
    IFS=';' read -r -a custom_runs <<<"${SSM_DEVICE_VERIFY:-}"
    for custom in "${custom_runs[@]}"; do
        [ -n "$custom" ] || continue
        # shellcheck disable=SC2086 # the arguments are split on purpose
        custom_run "custom: ssmk verify $custom" "$ssmk" verify $custom
    done
fi
if has_step fuzz; then
    if ssmk_has fuzz; then
        run_step "fuzz: ssmk fuzz --gpu require --seconds ${SSM_FUZZ_SECONDS:-60}" \
            "$ssmk" fuzz --gpu require --seconds "${SSM_FUZZ_SECONDS:-60}"
    else
        echo "fuzz: SKIPPED (this ssmk has no 'fuzz' subcommand)" >>"$summary"
    fi
fi
if has_step sanitize; then
    run_step "sanitize: ci/sanitize.sh" env OUT="$SSM_RESULTS_DIR/sanitize" bash ci/sanitize.sh "$bundle"
fi
if has_step peers; then
    if [ -n "$peers_build_pid" ]; then
        wait "$peers_build_pid" || echo "peers: the extension build failed (see peers-build.log in results.tar.gz)" >>"$summary"
        run_step "peers: ci/peers/run.sh (mamba_ssm, fla)" env OUT="$SSM_RESULTS_DIR" \
            bash ci/peers/run.sh "$SSM_RESULTS_DIR/peers.json" ${SSM_PEERS_ARGS:-}
    else
        echo "peers: SKIPPED (no ${PEERS:-.peers}/mamba_ssm: run ci/peers/prepare.sh here and carry it)" >>"$summary"
    fi
fi
if has_step bench; then
    for example in "$bundle"/examples/*; do
        [ -x "$example" ] && selected "$example" || continue
        run_step "example: $(basename "$example")" "$example"
    done
    if [ "${SSM_DEVICE_CRITERION:-1}" = 1 ]; then
        for bench in "$bundle"/benches/*; do
            [ -x "$bench" ] && selected "$bench" || continue
            run_step "bench: $(basename "$bench")" "$bench" --bench
        done
    fi
    peers_file=""
    [ -f "$SSM_RESULTS_DIR/peers.json" ] && peers_file="$SSM_RESULTS_DIR/peers.json"
    run_step "bench: ci/bench.sh (ceilings + verified suite + NVML + ncu + peers)" \
        env OUT="$SSM_RESULTS_DIR/bench" SSM_BENCH_PEERS="$peers_file" bash ci/bench.sh "$bundle"
fi
kill "$packer_pid" 2>/dev/null
wait "$packer_pid" 2>/dev/null
pack_results

echo "steps failed: $failures" >>"$summary"
echo
cat "$summary"
[ "$failures" -eq 0 ]
