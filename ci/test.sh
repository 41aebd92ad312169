#!/usr/bin/env bash
# The project's test command (README): installs the pinned CUDA 13.0 NVRTC wheels
# (no GPU needed; every kernel is compiled and its resource budget checked), then
# runs every test of the workspace. GPU tests report themselves as SKIPPED loudly
# on a machine without a GPU. More property-test cases: SSM_PROPTEST_CASES=5000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash .ci/install-cuda.sh >/dev/null
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
