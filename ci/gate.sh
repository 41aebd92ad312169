#!/usr/bin/env bash
# The benchmark regression gate (docs/BENCHMARKS.md).
#
#   ci/gate.sh BASELINE.json NEW.json [--noise 0.05 --bytes-tolerance 0.02 ...]
#       exit 1 when any kernel in NEW is slower than in BASELINE beyond the noise
#       threshold plus the measured spread, uses more registers or shared memory,
#       spills more, or moves more measured DRAM bytes; 2 when a file is unreadable.
#   ci/gate.sh
#       (no arguments, what CI runs) the gate's self-test: the passing fixture
#       must pass and every planted regression under
#       crates/telemetry/tests/fixtures/gate/ must fail, through the command line.
#
# Uses `ssmk gate` when the CLI has it, else the `ssm-results` binary of ssm-telemetry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

gate() {
    if cargo run -q -p ssmk -- help gate >/dev/null 2>&1; then
        cargo run -q -p ssmk -- gate "$@"
    else
        cargo run -q -p ssm-telemetry --bin ssm-results -- gate "$@"
    fi
}

if [ $# -ge 2 ]; then
    baseline="$1" new="$2"
    shift 2
    gate --baseline "$baseline" --new "$new" "$@"
    exit $?
fi
if [ $# -ne 0 ]; then
    echo "usage: ci/gate.sh [BASELINE.json NEW.json [options]]" >&2
    exit 2
fi

fixtures=crates/telemetry/tests/fixtures/gate
cargo test -q -p ssm-telemetry --test gate_fixtures
status=0
expect() { # expect EXIT FILE
    set +e
    gate --baseline "$fixtures/baseline.json" --new "$fixtures/$2" >/tmp/ssm-gate.$$ 2>&1
    local got=$?
    set -e
    if [ "$got" -eq "$1" ]; then
        echo "gate self-test: $2 -> exit $got (expected)"
    else
        echo "gate self-test: $2 -> exit $got, expected $1:" >&2
        cat /tmp/ssm-gate.$$ >&2
        status=1
    fi
    rm -f /tmp/ssm-gate.$$
}
expect 0 pass.json
for planted in slower more_registers more_smem spills more_bytes missing; do
    expect 1 "$planted.json"
done
exit $status
