#!/usr/bin/env bash
# Here (not on the GPU machine): put the peers' sources into the git-ignored
# folder .peers/ that device calls carry (ci/peers/README.md).
#
# usage: bash ci/peers/prepare.sh MAMBA_REPO_OR_SRC
#   MAMBA_REPO_OR_SRC: a git repository of state-spaces/mamba (the tag
#   v2.3.2.post1 is archived from it) or an unpacked mamba-ssm 2.3.2.post1
#   source distribution. fla-core 0.6.0 is downloaded as its wheel.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"
src="${1:?usage: prepare.sh MAMBA_REPO_OR_SRC}"
mkdir -p .peers .git/info
grep -qx '/.peers/' .git/info/exclude 2>/dev/null || echo '/.peers/' >>.git/info/exclude
if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$src" archive v2.3.2.post1 mamba_ssm csrc/selective_scan | tar -x -C .peers
else
    cp -r "$src/mamba_ssm" .peers/
    mkdir -p .peers/csrc && cp -r "$src/csrc/selective_scan" .peers/csrc/
fi
python3 -m pip download --quiet --no-deps --only-binary=:all: fla-core==0.6.0 -d .peers
du -sh .peers
