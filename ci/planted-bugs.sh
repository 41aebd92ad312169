#!/usr/bin/env bash
# Planted bugs (docs/FUZZING.md): with each bug of ssm_core::planted active, the
# property tests and the fuzz targets' logic (crates/verify/tests/planted_bugs.rs)
# must FAIL. The property tests of a forward bug are crates/verify/tests/
# equivalence.rs; of an SSD backward bug (ssd-bwd-*) crates/mamba2-ssd/tests/
# backward_properties.rs; of a Mamba-1 backward bug (scan-bwd-*)
# crates/mamba1-scan/tests/backward_properties.rs. Prints the catch table: for the
# property tests the first property to fail and the wall time until it reported
# (shrinking limited to 1 ms), for the fuzz logic the random cases and wall time
# until the first failing case.
#
# usage: ci/planted-bugs.sh [--write-docs]
#   --write-docs   replace the table between the PLANTED-BUGS markers of docs/FUZZING.md
# Exits non-zero when a bug escapes either suite, or when the clean build fails.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
write_docs=0
[ "${1:-}" = "--write-docs" ] && write_docs=1

# Keep in step with ssm_core::planted::Bug::ALL (the fuzz report is checked against it).
bugs=(ssd-chunk-boundary scan-block-boundary wrong-group no-carried-decay dropped-d
      softplus-threshold initial-state-ignored last-partial-chunk-skipped padding-row-written
      ssd-bwd-dt-bias-dropped ssd-bwd-decay-sign ssd-bwd-dropped-d
      ssd-bwd-last-partial-chunk-skipped ssd-bwd-causal-mask
      ssd-bwd-initial-state-grad-dropped ssd-bwd-clamp-grad-leaked
      scan-bwd-delta-bias-dropped scan-bwd-softplus-threshold scan-bwd-wrong-group
      scan-bwd-initial-state-grad-dropped scan-bwd-one-step-late)

log() { echo "== planted-bugs: $*" >&2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

log "building the tests with --features planted-bugs"
# build <package> <test>...: print "<test> <executable>" for each test binary.
build() {
    local package="$1"; shift
    local tests=()
    for t in "$@"; do tests+=(--test "$t"); done
    cargo test -q -p "$package" --features planted-bugs "${tests[@]}" \
        --no-run --message-format=json 2>/dev/null | cargo_executables
}
build ssm-verify equivalence planted_bugs >"$work/bins"
build mamba2-ssd backward_properties >"$work/ssd_bwd_bins"
build mamba1-scan backward_properties >"$work/scan_bwd_bins"
equivalence="$(awk '$1 == "equivalence" {print $2}' "$work/bins")"
planted="$(awk '$1 == "planted_bugs" {print $2}' "$work/bins")"
ssd_bwd="$(awk '$1 == "backward_properties" {print $2}' "$work/ssd_bwd_bins")"
scan_bwd="$(awk '$1 == "backward_properties" {print $2}' "$work/scan_bwd_bins")"
for bin in "$equivalence" "$planted" "$ssd_bwd" "$scan_bwd"; do
    [ -x "$bin" ] || { log "test binaries not found"; exit 1; }
done
# The property-test binary that must catch a bug.
suite_of() {
    case "$1" in
        ssd-bwd-*) echo "$ssd_bwd" ;;
        scan-bwd-*) echo "$scan_bwd" ;;
        *) echo "$equivalence" ;;
    esac
}

# Property tests must not write failures into the committed regression file,
# and should report the first failure without shrinking for long.
export PROPTEST_DISABLE_FAILURE_PERSISTENCE=1 PROPTEST_MAX_SHRINK_TIME=1

# Run the property tests of binary $1; print "<status> <seconds to first FAILED or
# end> <first failing test>".
run_properties() {
    local start now line first="" first_t="" status
    start=$(date +%s.%N)
    set +e
    "$1" --test-threads=2 2>&1 | while IFS= read -r line; do
        printf '%s %s\n' "$(date +%s.%N)" "$line"
    done >"$work/props.log"
    status=${PIPESTATUS[0]}
    set -e
    now=$(date +%s.%N)
    first="$(grep -m1 -E '^[0-9.]+ test .* \.\.\. FAILED$' "$work/props.log" || true)"
    if [ -n "$first" ]; then
        first_t="$(awk '{print $1}' <<<"$first")"
        echo "$status $(python3 -c "print(f'{$first_t - $start:.2f}')") $(awk '{print $3}' <<<"$first")"
    else
        echo "$status $(python3 -c "print(f'{$now - $start:.2f}')") -"
    fi
}

log "clean build: the property tests must pass"
for suite in "$equivalence" "$ssd_bwd" "$scan_bwd"; do
    read -r status secs _ < <(SSM_PLANTED_BUG= run_properties "$suite")
    if [ "$status" -ne 0 ]; then
        log "$suite fails WITHOUT a planted bug:"; cat "$work/props.log" >&2; exit 1
    fi
done

escaped=0
declare -A prop_row
for bug in "${bugs[@]}"; do
    read -r status secs prop < <(SSM_PLANTED_BUG="$bug" run_properties "$(suite_of "$bug")")
    if [ "$status" -ne 0 ] && [ "$prop" != "-" ]; then
        prop_row[$bug]="yes | $prop | $secs"
    else
        prop_row[$bug]="NO | - | $secs"
        escaped=$((escaped + 1))
    fi
    log "$bug: property tests ${prop_row[$bug]}"
done

log "fuzz logic (random cases over every target)"
set +e
SSM_PLANTED_REPORT="$work/fuzz.md" "$planted" --nocapture >"$work/fuzz.log" 2>&1
fuzz_status=$?
set -e
[ -f "$work/fuzz.md" ] || { cat "$work/fuzz.log" >&2; exit 1; }
[ "$(wc -l <"$work/fuzz.md")" -eq "${#bugs[@]}" ] || { log "bug list out of step with Bug::ALL"; exit 1; }

{
    echo "| planted bug | property tests caught | first failing property | s to first failure | fuzz caught | cases to first failure | s to first failure | target | finding |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    while IFS= read -r row; do
        bug="$(awk -F' [|] ' '{gsub(/^[|] /, "", $1); print $1}' <<<"$row")"
        fuzz="${row#| $bug | }"
        echo "| $bug | ${prop_row[$bug]} | $fuzz"
    done <"$work/fuzz.md"
} >"$work/table.md"
cat "$work/table.md"

caught_props=$(( ${#bugs[@]} - escaped ))
caught_fuzz=$(grep -c '| yes |' "$work/fuzz.md" || true)
summary="Property tests caught $caught_props of ${#bugs[@]}; fuzz logic caught $caught_fuzz of ${#bugs[@]} (seed 0x9a17, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))."
echo "$summary"

if [ "$write_docs" -eq 1 ]; then
    python3 - "$work/table.md" "$summary" <<'PY'
import sys
table = open(sys.argv[1]).read().rstrip("\n")
summary = sys.argv[2]
path = "docs/FUZZING.md"
text = open(path).read()
begin, end = "<!-- PLANTED-BUGS:BEGIN -->", "<!-- PLANTED-BUGS:END -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(path, "w").write(f"{head}{begin}\n{table}\n\n{summary}\n{end}{tail}")
PY
    log "table written to docs/FUZZING.md"
fi
[ "$fuzz_status" -eq 0 ] || { log "the fuzz logic missed a bug"; exit 1; }
[ "$escaped" -eq 0 ] || { log "the property tests missed $escaped bug(s)"; exit 1; }
