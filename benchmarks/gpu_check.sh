#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py, whose docstring says what each figure is): set-up on a
# bare CUDA machine, then every figure, one `name value unit` line each, on stdout and in
# gpu_check.txt ($OUT/gpu_check.txt when OUT is set). Budget: 8 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--corpus DIR] [--only p6 p1 corpus]
#   bash benchmarks/gpu_check.sh --wheels DIR [PYTHON_VERSION]    # here: wheels for an offline GPU machine
#
# Set-up: a venv over the machine's own Python (PYTHON, default python3) with
# --system-site-packages, so its CUDA torch is the one used, plus what the check imports and that
# Python lacks, at requirements.lock's pins: from the package registry, or with WHEELS=DIR from a
# folder of wheels (`--wheels DIR 3.12` fills one on a machine that reaches the registry).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--wheels" ]; then
  dir=${2:?--wheels DIR [PYTHON_VERSION]}
  "$PY" -m pip download --quiet --dest "$dir" --only-binary=:all: --no-deps \
    --python-version "${3:-3.12}" --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 $("$PY" benchmarks/gpu_check.py --requirements)
  exit 0
fi

VENV=${VENV:-.venv-gpu}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv --system-site-packages "$VENV"
fi
missing=$("$VENV/bin/python" benchmarks/gpu_check.py --missing)
if [ -n "$missing" ]; then
  echo "gpu_check: installing $missing" >&2
  # shellcheck disable=SC2086  # one word per requirement
  "$VENV/bin/python" -m pip install --quiet --no-deps ${WHEELS:+--no-index --find-links "$WHEELS"} $missing
fi
out=${OUT:+$OUT/}gpu_check.txt
rm -f "$out"
"$VENV/bin/python" -c "import torch; print('gpu_check: torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2
exec "$VENV/bin/python" benchmarks/gpu_check.py --out "$out" "$@"
