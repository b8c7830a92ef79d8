#!/usr/bin/env bash
# Checks that the package installs anywhere:
#  1. `pip wheel . -w DIR` builds a wheel that installs into a fresh venv whose PATH has no
#     compiler, no CMake and no nvcc (`pip install --no-build-isolation --no-deps WHEEL numpy`),
#     imports, reports itself (`python -m mindspore_accum`, no MindSpore there) and passes
#     tests/kernels/test_kernels.py from the installed wheel;
#  2. the sdist holds exactly the tracked source files (what the build needs; nothing generated:
#     no build/, .so, __pycache__, venvs, checkpoints), plus PKG-INFO;
#  3. `pip install SDIST` builds and installs it in another fresh venv, which then imports.
# Usage: bash scripts/check_wheel.sh [WORK_DIR]   (default: a new temporary folder, removed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$PWD"
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
if [ $# -gt 0 ]; then WORK="$1"; mkdir -p "$WORK"; else WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; fi
WORK="$(realpath "$WORK")"
step() { echo "== check_wheel: $*"; }
t_all=$(date +%s)

# ---- 1. the wheel, installed and tested without a toolchain ----
t0=$(date +%s)
if [ -n "${CHECK_WHEEL_WHEEL:-}" ]; then  # a wheel built before from this tree (saves a build)
  step "using the wheel $CHECK_WHEEL_WHEEL"
  WHEEL="$(realpath "$CHECK_WHEEL_WHEEL")"
else
  step "building the wheel (pip wheel . -w $WORK/dist)"
  "$PYTHON" -m pip wheel --quiet --no-deps . -w "$WORK/dist"
  WHEEL="$(ls "$WORK"/dist/mindspore_accum-*.whl)"
fi
echo "   $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB) in $(( $(date +%s) - t0 )) s"
"$PYTHON" -c "import sys, zipfile; print('\n'.join(sorted(zipfile.ZipFile(sys.argv[1]).namelist())))" "$WHEEL" \
  >"$WORK/wheel.files"
echo "   wheel contents: $(grep -E '^mindspore_accum/' "$WORK/wheel.files" | tr '\n' ' ')"
for needed in mindspore_accum/__init__.py mindspore_accum/__main__.py mindspore_accum/_compat.py \
              mindspore_accum/libmsaccum_aot.so mindspore_accum/_C.pyi; do
  grep -qx "$needed" "$WORK/wheel.files" || { echo "check_wheel: $needed missing from the wheel" >&2; exit 1; }
done
grep -qE '^mindspore_accum/_C\..*\.so$' "$WORK/wheel.files" || { echo "check_wheel: no _C extension in the wheel" >&2; exit 1; }

step "installing it into a fresh venv with no compiler, CMake or nvcc on PATH"
VENV="$WORK/venv-wheel"
"$PYTHON" -m venv "$VENV"
# A PATH of a few basic tools only (no /usr/bin: it holds g++, cc and often cmake).
BARE="$WORK/bare-bin"
mkdir -p "$BARE"
for tool in sh bash env cat ls rm mkdir uname dirname basename grep sed; do
  ln -sf "$(command -v "$tool")" "$BARE/$tool"
done
BARE_PATH="$VENV/bin:$BARE"
for tool in g++ gcc c++ cc clang cmake nvcc ninja make; do
  if PATH="$BARE_PATH" command -v "$tool" >/dev/null 2>&1; then
    echo "check_wheel: $tool is still on the bare PATH" >&2; exit 1
  fi
done
# The environment stays (pip's settings), less PATH and any variable naming a compiler or CMake.
run_bare() { env -u CC -u CXX -u CUDACXX -u CUDA_HOME -u CMAKE -u CMAKE_ARGS -u CMAKE_GENERATOR PATH="$BARE_PATH" "$@"; }
# numpy<2 as MindSpore's extras pin it; the kernel tests also need pytest and ml_dtypes (binary wheels).
run_bare "$VENV/bin/python" -m pip install --quiet --only-binary=:all: "numpy<2" pytest "ml_dtypes>=0.3,<0.6" hypothesis
run_bare "$VENV/bin/python" -m pip install --quiet --no-build-isolation --no-deps "$WHEEL" "numpy<2"
(cd "$WORK" && run_bare "$VENV/bin/python" -c \
  "import mindspore_accum as m, mindspore_accum._C as C; print('   imported', m.__version__, 'from', m.__file__); print('  ', C.build_info())")
step "python -m mindspore_accum (no MindSpore in this venv)"
(cd "$WORK" && run_bare "$VENV/bin/python" -m mindspore_accum >"$WORK/self_report.txt")
sed 's/^/   /' "$WORK/self_report.txt"
grep -qx "MindSpore: not installed" "$WORK/self_report.txt" || { echo "check_wheel: the self-report is wrong" >&2; exit 1; }
step "tests/kernels/test_kernels.py from the installed wheel"
mkdir -p "$WORK/tests/kernels"
# pyproject.toml for its pytest settings (markers, pythonpath "." = $WORK, where no source is)
cp "$SRC/pyproject.toml" "$WORK/"
cp "$SRC/tests/__init__.py" "$SRC/tests/conftest.py" "$WORK/tests/"
cp "$SRC/tests/kernels/__init__.py" "$SRC/tests/kernels/test_kernels.py" "$WORK/tests/kernels/"
if ! (cd "$WORK" && run_bare "$VENV/bin/pytest" -q -p no:cacheprovider tests/kernels/test_kernels.py >"$WORK/test_kernels.log" 2>&1); then
  cat "$WORK/test_kernels.log"; echo "check_wheel: tests/kernels/test_kernels.py failed from the wheel" >&2; exit 1
fi
tail -1 "$WORK/test_kernels.log" | sed 's/^/   /'

# ---- 2. the sdist: the tracked sources, nothing generated ----
step "building the sdist (python -m build --sdist)"
TOOLS="$WORK/venv-tools"
"$PYTHON" -m venv "$TOOLS"
"$TOOLS/bin/python" -m pip install --quiet build
"$TOOLS/bin/python" -m build --sdist --outdir "$WORK/sdist" . >"$WORK/sdist.log" 2>&1 || { cat "$WORK/sdist.log"; exit 1; }
SDIST="$(ls "$WORK"/sdist/mindspore_accum-*.tar.gz)"
top="$(basename "$SDIST" .tar.gz)"
tar tzf "$SDIST" | grep -v '/$' | sed "s|^$top/||" | sort >"$WORK/sdist.files"
echo "   $(basename "$SDIST"): $(wc -l <"$WORK/sdist.files") files, $(du -k "$SDIST" | cut -f1) KiB"
if git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1; then
  { git -C "$SRC" ls-files | grep -v -E '^\.(ci|gitignore)' ; echo PKG-INFO; } | sort >"$WORK/expected.files"
  if ! diff -u "$WORK/expected.files" "$WORK/sdist.files" >"$WORK/sdist.diff"; then
    echo "check_wheel: the sdist differs from the tracked files (+ in the sdist only, - missing from it):" >&2
    grep -E '^[+-][^+-]' "$WORK/sdist.diff" >&2
    exit 1
  fi
  echo "   the sdist holds exactly the tracked files (less .ci/ and .gitignore) and PKG-INFO"
else
  echo "   (not a git checkout: the file list is checked against patterns only)"
fi
# Build folders at the top only (tests/build/ and benchmarks/dist/ are sources); checkpoints except
# the tracked test fixture (tests/fixtures/: a checkpoint written by 0.2.1).
if grep -E '^(build|\.matrix|\.venv|_skbuild|dist)/|(^|/)__pycache__/|\.(so|pyc|o|whl)$' "$WORK/sdist.files" \
    || grep -E '\.ckpt$' "$WORK/sdist.files" | grep -v '^tests/fixtures/'; then
  echo "check_wheel: generated files in the sdist (above)" >&2; exit 1
fi
for needed in pyproject.toml CMakeLists.txt README.md csrc/accum_math.h csrc/kernel_api.h csrc/cpu/span_kernels_isa.cpp \
              csrc/frontends/python_bindings.cpp csrc/frontends/mindspore_aot.cpp csrc/frontends/aot_ops.h \
              csrc/cuda/cuda_kernels.cu csrc/cuda/multi_tensor_apply.cuh src/mindspore_accum/_compat.py; do
  grep -qx "$needed" "$WORK/sdist.files" || { echo "check_wheel: $needed missing from the sdist" >&2; exit 1; }
done

# ---- 3. pip install SDIST ----
step "pip install SDIST into a fresh venv (builds from the sdist)"
t0=$(date +%s)
VENV2="$WORK/venv-sdist"
"$PYTHON" -m venv "$VENV2"
"$VENV2/bin/python" -m pip install --quiet "$SDIST" "numpy<2"
(cd "$WORK" && "$VENV2/bin/python" -c \
  "import mindspore_accum._C as C, numpy as np; a=[np.zeros(5,np.float32)]; C.accumulate(a,[np.ones(5,np.float32)],2.0); assert a[0].tolist()==[2.0]*5; print('   built from the sdist in', $(( $(date +%s) - t0 )), 's:', C.build_info())")
step "all checks passed in $(( $(date +%s) - t_all )) s"
