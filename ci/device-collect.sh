#!/usr/bin/env bash
# Copy what a device run returned (the `files_at` folder of the run tool's
# reply) into benches/results/<date>-<commit>/, unpacking results.tar.gz, so the
# numbers are committed next to the commit and kernel hash they came from.
#
# usage: ci/device-collect.sh <returned-files-dir> [label]
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
from="${1:?usage: ci/device-collect.sh <returned-files-dir> [label]}"
label="${2:-}"
if [ ! -f "$from/manifest.json" ]; then
    echo "device-collect: $from has no manifest.json (not a ci/device-run.sh output?)" >&2
    exit 2
fi
commit="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["commit"][:12])' "$from/manifest.json")"
dest="$repo_root/benches/results/$(date -u +%Y-%m-%d)-$commit${label:+-$label}"
if [ -e "$dest" ]; then
    n=2
    while [ -e "$dest-$n" ]; do n=$((n + 1)); done
    dest="$dest-$n"
fi
mkdir -p "$dest"
for file in "$from"/*; do
    [ -f "$file" ] || continue
    case "$file" in
        *.tar.gz) mkdir -p "$dest/results" && tar -xzf "$file" -C "$dest/results" ;;
        *) cp "$file" "$dest/" ;;
    esac
done
chmod -R u+w "$dest"
echo "device-collect: $dest"
cat "$dest/summary.txt" 2>/dev/null || true
