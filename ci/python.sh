#!/usr/bin/env bash
# The ssm_kernels Python package (crates/python): build the abi3 wheel with
# maturin and run its pytest suite on the NumPy path (no torch, no GPU needed).
# The tools live in a venv this script creates (.venv-python, git-ignored).
#
# usage: bash ci/python.sh            build + test
#        SSM_WHEEL_DIR=DIR bash ci/python.sh   put the wheel in DIR (default .gpu/python, which a device call carries)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.venv-python
wheels="${SSM_WHEEL_DIR:-.gpu/python}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    maturin==1.16.0 numpy==2.4.6 pytest==9.2.0
rm -rf "$wheels" && mkdir -p "$wheels"
"$venv/bin/maturin" build --release --strip -q -m crates/python/Cargo.toml --out "$wheels"
wheel="$(ls "$wheels"/ssm_kernels-*.whl)"
echo "built $wheel ($(du -h "$wheel" | cut -f1))"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
cd crates/python
# From the package's folder, so that tests import the installed wheel (the
# source folder python/ssm_kernels has no compiled module).
"../../$venv/bin/python" -m pytest -q -p no:cacheprovider tests
