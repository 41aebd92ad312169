#!/usr/bin/env bash
# Installs NVRTC and the CUDA runtime headers of CUDA 13.0 from PyPI into
# `.venv-cuda/` at the repository root (git-ignored). No GPU and no driver are
# needed: CI uses this to compile every kernel variant with NVRTC and check its
# resource budget (crates/verify/tests/kernel_budgets.rs).
#
# ssm-gpu finds `.venv-cuda` by itself (it looks in the current directory and
# its ancestors, next to the executable, and in the workspace it was built
# from), so the exports printed at the end are only needed by other tools.
#
# Pinned to 13.0.88 on purpose: the cudarc bindings are built for cuda-13000,
# and 13.1+ wheels must never be installed here.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv-cuda"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvrtc==13.0.88" "nvidia-cuda-runtime==13.0.88"

cu13="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
for needed in "$cu13/lib/libnvrtc.so.13" "$cu13/include/cuda_bf16.h"; do
    if [ ! -e "$needed" ]; then
        echo "install-cuda.sh: expected $needed after install, not found" >&2
        exit 1
    fi
done

echo "NVRTC 13.0 installed in $venv"
echo "# optional (ssm-gpu finds .venv-cuda on its own):"
echo "export LD_LIBRARY_PATH=\"$cu13/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}\""
echo "export SSM_CUDA_INCLUDE=\"$cu13/include\""
