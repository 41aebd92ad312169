#!/usr/bin/env bash
# Build here, carry there (docs/DESIGN.md §5, ci/README.md).
#
# Builds the release binaries the device machine runs (it has no Rust
# toolchain): the `ssmk` CLI, the `gpu_info` probe, every GPU test binary (each
# `tests/gpu_*.rs` of a workspace crate), the examples named `gpu_*`/`bench_*`,
# and the criterion bench binaries. Copies them with the kernel sources and a
# manifest into a git-ignored bundle directory (default `.gpu/loop`), to be
# carried by the `run` tool and executed by `ci/device-run.sh`.
#
# A part that fails to build is left out, listed in the manifest
# (`build_failures`) and in the device run's summary, and makes this script exit
# 1 after the bundle is written: the rest can still be run while a crate is
# broken in the shared checkout.
#
# usage: ci/device-prepare.sh [bundle-dir]
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bundle="${1:-.gpu/loop}"
# Where cargo puts the binaries (parallel work and worktrees use their own).
target_dir="${CARGO_TARGET_DIR:-target}"
under_gpu device-prepare "$bundle"

log() { echo "device-prepare: $*" >&2; }

# Package name of the crate at $1 (its Cargo.toml's [package] name).
package_name() {
    sed -n '/^\[package\]/,/^\[/{s/^name *= *"\(.*\)"/\1/p}' "$1/Cargo.toml" | head -n1
}

crate_dirs() {
    for dir in crates/* reference benches; do
        [ -f "$dir/Cargo.toml" ] && echo "$dir"
    done
}

rm -rf "$bundle"
mkdir -p "$bundle/bin" "$bundle/tests" "$bundle/examples" "$bundle/benches"

build_failures=()
failed() {
    log "FAILED to build $1 (left out of the bundle)"
    build_failures+=("$1")
}

# copy_built SUB WHAT CARGO-ARGS...: run cargo with CARGO-ARGS and copy every
# executable it built into $bundle/SUB as <package>__<name>; when the build
# fails, WHAT is left out of the bundle (see `failed`).
copy_built() {
    local sub="$1" what="$2" built
    shift 2
    if built=$(cargo "$@" --message-format=json-render-diagnostics | cargo_executables); then
        while read -r name exe; do
            cp "$exe" "$bundle/$sub/${package}__${name}"
        done <<<"$built"
    else
        failed "$what"
    fi
}

# gpu_info is the probe everything else relies on: it must build.
log "building gpu_info and ssmk (release)"
cargo build --release -p ssm-gpu --example gpu_info
cp "$target_dir"/release/examples/gpu_info "$bundle/bin/"
if cargo build --release -p ssmk --bin ssmk; then
    cp "$target_dir"/release/ssmk "$bundle/bin/"
else
    failed "ssmk"
fi

for dir in $(crate_dirs); do
    package="$(package_name "$dir")"
    # GPU test binaries: tests/gpu_*.rs
    tests=()
    for file in "$dir"/tests/gpu_*.rs; do
        [ -e "$file" ] && tests+=(--test "$(basename "$file" .rs)")
    done
    if [ ${#tests[@]} -gt 0 ]; then
        log "building GPU tests of $package: ${tests[*]}"
        copy_built tests "$package GPU tests" test --release -p "$package" "${tests[@]}" --no-run
    fi
    # Examples meant for the device: examples/gpu_*.rs, examples/bench_*.rs
    for file in "$dir"/examples/gpu_*.rs "$dir"/examples/bench_*.rs; do
        [ -e "$file" ] || continue
        name="$(basename "$file" .rs)"
        [ "$package/$name" = ssm-gpu/gpu_info ] && continue # already in bin/
        log "building example $package/$name"
        if cargo build --release -p "$package" --example "$name"; then
            cp "$target_dir/release/examples/$name" "$bundle/examples/${package}__${name}"
        else
            failed "$package example $name"
        fi
    done
    # Criterion benches: benches/*.rs
    if compgen -G "$dir/benches/*.rs" >/dev/null; then
        log "building benches of $package"
        copy_built benches "$package benches" bench -p "$package" --no-run
    fi
done

# Kernel sources as they were built (the device run can use them with
# SSM_DEVICE_KERNELS=built; by default it hot-reloads the working tree's kernels/).
cp -r kernels "$bundle/kernels"

# Keep the bundle inside the 64 MiB that travels: line tables go first.
size_kib=$(du -sk "$bundle" | cut -f1)
if [ "$size_kib" -gt $((48 * 1024)) ]; then
    log "bundle is ${size_kib} KiB: stripping debug info"
    find "$bundle/bin" "$bundle/tests" "$bundle/examples" "$bundle/benches" -type f -exec strip --strip-debug {} +
    size_kib=$(du -sk "$bundle" | cut -f1)
fi

commit="$(git rev-parse HEAD)"
dirty=false
git diff --quiet HEAD -- || dirty=true
kernels_hash="$("$bundle/bin/gpu_info" --hash)"
python3 - "$bundle" "$commit" "$dirty" "$kernels_hash" "$size_kib" "${build_failures[@]}" <<'PY'
import datetime, json, os, subprocess, sys
bundle, commit, dirty, kernels_hash, size_kib = sys.argv[1:6]
build_failures = sys.argv[6:]
binaries = {}
for sub in ("bin", "tests", "examples", "benches"):
    folder = os.path.join(bundle, sub)
    binaries[sub] = sorted(os.listdir(folder))
manifest = {
    "commit": commit,
    "dirty": dirty == "true",
    "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "kernels_hash": kernels_hash,
    "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
    "bundle_kib": int(size_kib),
    "binaries": binaries,
    "build_failures": build_failures,
}
with open(os.path.join(bundle, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
PY
log "bundle $bundle ready (${size_kib} KiB, commit ${commit:0:12}$( $dirty && echo ' + uncommitted changes'), kernels ${kernels_hash:0:12})"
if [ ${#build_failures[@]} -gt 0 ]; then
    log "LEFT OUT (failed to build): ${build_failures[*]}"
    exit 1
fi
log "next: run tool with command 'bash ci/device-run.sh $bundle' and carry [\"$bundle\"] (ci/README.md)"
