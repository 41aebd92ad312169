# What the ci scripts share; each sources it first, from its own folder:
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Sets `repo_root` (the checkout) and changes to it, so every path below is
# relative to the repository, here and on the device (which gets a copy of the
# working tree). Defines functions only otherwise; sets no shell options (each
# script keeps its own `set -e` or not).

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# under_gpu NAME DIR: exit 2 unless DIR lies under .gpu/ (git-ignored, and the
# folder a device call carries); NAME is the script, for the message.
under_gpu() {
    case "$2" in
        .gpu/*) ;;
        *) echo "$1: the bundle must live under .gpu/ (git-ignored), got $2" >&2; exit 2 ;;
    esac
}

# cuda_libs: put the CUDA toolkit's libraries (the device's /usr/local/cuda) on
# LD_LIBRARY_PATH, for the binaries that load nvrtc and the driver at run time.
cuda_libs() {
    local lib
    for lib in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    return 0
}

# cargo_executables: read cargo's JSON messages on stdin and print
# "<target name> <executable>" for every artifact that is an executable.
cargo_executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["name"], msg["executable"])
'
}

# unpack_xz SRC DST: decompress SRC into DST (xz, or Python's lzma where the device
# has no xz) and make DST executable (the bundles compress binaries to stay
# inside the carry limit).
unpack_xz() {
    if command -v xz >/dev/null; then
        xz -dc "$1" >"$2"
    else
        python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
    fi
    chmod +x "$2"
}
