#!/usr/bin/env bash
# The main job: installs mindspore_accum with the example's dependencies into ./.venv (created if
# missing) and trains the ResNet50 / CIFAR-10 example with gradient accumulation (micro-batch 32
# x 4) on a short schedule, then evaluates the checkpoint it wrote. A few minutes on 2 CPU cores.
#
# Data: --data-dir DIR (default: the project's shared CIFAR-10 copy when present, else ./data).
# With no data there, the example runs on generated images and says so; pass --download to fetch
# the official archive instead. Other arguments go to examples/resnet50_cifar10/train.py
# (run as `python -m examples.resnet50_cifar10.train` from the repository root).
# The peak learning rate is a conservative 0.01 for this 8-update demo (the example's default,
# 0.1 x effective batch / 256, is what examples/README.md measures over 2 epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$PWD/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "== installing mindspore_accum[examples]"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet ".[examples]"

data_dir=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --data-dir) data_dir="$2"; shift 2 ;;
    --data-dir=*) data_dir="${1#*=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$data_dir" ]; then
  if [ -d ../shared/data/cifar10-subset/cifar-10-batches-bin ]; then
    data_dir=../shared/data/cifar10-subset
  else
    data_dir=data
  fi
fi
data_args=(--data-dir "$data_dir")
if [ ! -e "$data_dir/cifar-10-batches-bin" ] && ! ls "$data_dir"/*.bin >/dev/null 2>&1 \
   && [[ " ${args[*]:-} " != *" --download "* ]]; then
  echo "== no CIFAR-10 binaries in $data_dir: training on generated data (pass --download to fetch CIFAR-10)"
  data_args=(--synthetic --synthetic-size 1024)
fi
echo "== training (ResNet50, micro-batch 32 x 4 accumulation steps)"
exec "$VENV/bin/python" -m examples.resnet50_cifar10.train "${data_args[@]}" \
  --batch-size 32 --accum-steps 4 --epochs 1 --limit-train 1024 --limit-test 1000 --lr 0.01 \
  --ckpt-dir "${TMPDIR:-/tmp}/mindspore_accum_example_ckpt" "${args[@]+"${args[@]}"}"
