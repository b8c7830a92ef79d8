#!/usr/bin/env bash
# The GPU check in one command, on a machine with a GPU, PyTorch, nvcc, CMake, pybind11 and
# scikit-build-core (no network needed, no MindSpore):
#   1. builds and installs mindspore_accum from this checkout, CUDA on, for this GPU's
#      architecture, into a venv that sees the system's packages (PyTorch);
#   2. runs `python -m benchmarks.gpu.check` (parity, memcheck, bandwidth) from the repo root.
# Writes gpu_check.json and gpu_check.log into $OUT (the device runner's folder) or /tmp/msaccum-gpu-check/.
# Extra arguments go to the check (e.g. --quick, --no-memcheck, --repeats 5).
# Budget: the build ~2 min (one architecture), the check ~2-4 min on one H200.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-${TMPDIR:-/tmp}/msaccum-gpu-venv}"
OUTDIR="${OUT:-${TMPDIR:-/tmp}/msaccum-gpu-check}"
mkdir -p "$OUTDIR"
t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
# Only this GPU's architecture (sm_90 on an H200): a third of the default build's nvcc time.
if [ -z "${MSACCUM_CUDA_ARCHITECTURES:-}" ] && command -v nvidia-smi >/dev/null 2>&1; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  if [ -n "$cap" ]; then export MSACCUM_CUDA_ARCHITECTURES="${cap}-real"; fi
fi
export MSACCUM_CUDA=ON
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
echo "== building mindspore_accum (CUDA architectures: ${MSACCUM_CUDA_ARCHITECTURES:-default})"
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --no-index . 2>&1 | tail -20
echo "== built in $(( $(date +%s) - t0 )) s"
(cd / && "$VENV/bin/python" -c "import mindspore_accum._C as C; print('build_info:', C.build_info())")
set +e
"$VENV/bin/python" -m benchmarks.gpu.check --json "$OUTDIR/gpu_check.json" "$@" 2>&1 | tee "$OUTDIR/gpu_check.log"
rc=${PIPESTATUS[0]}
set -e
echo "== check.sh finished in $(( $(date +%s) - t0 )) s (exit $rc)"
exit "$rc"
