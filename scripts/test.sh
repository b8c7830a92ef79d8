#!/usr/bin/env bash
# Installs mindspore_accum with its test dependencies into ./.venv (created if missing) and runs
# the whole test suite. Needs only Python 3.11, g++ and cmake (nvcc optional: the CUDA kernels
# are then compiled in and checked too). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing mindspore_accum[test] (builds the C++/CUDA extension, warnings as errors)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# MSACCUM_WERROR=ON: CI and development treat compiler warnings as errors; a user's plain
# `pip install .` does not (CMakeLists.txt, option MSACCUM_WERROR, default OFF).
"$VENV/bin/python" -m pip install --quiet --config-settings=cmake.define.MSACCUM_WERROR=ON ".[test]"
# PyTorch (CPU; not a dependency of the package) for the DLPack tests and the GPU check's CPU path.
# With MSACCUM_REQUIRE_TORCH=1 those tests fail rather than skip when it is missing.
"$VENV/bin/python" -m pip install --quiet torch==2.13.0
export MSACCUM_REQUIRE_TORCH=1
if command -v nvcc >/dev/null 2>&1; then
  # tests/build/test_cuda_build.py inspects the nvcc output with cuobjdump, which a bare nvcc lacks.
  command -v cuobjdump >/dev/null 2>&1 || "$VENV/bin/python" -m pip install --quiet "nvidia-cuda-cuobjdump>=13,<14"
fi
(cd / && "$VENV/bin/python" -c "import mindspore_accum._C as C; print('build_info:', C.build_info())")
echo "== running tests"
# The pytest entry point (not `python -m pytest`) keeps the source folder off sys.path, so the
# tests import the installed package with its compiled extension.
exec "$VENV/bin/pytest" -q "$@"
