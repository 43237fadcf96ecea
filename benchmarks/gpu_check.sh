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
# paths the caller gave, from the caller's folder (the script then works in the repository root)
[ -n "${WHEELS:-}" ] && WHEELS=$(realpath "$WHEELS")
[ -n "${OUT:-}" ] && OUT=$(realpath "$OUT")
[ "${1:-}" = "--wheels" ] && [ -n "${2:-}" ] && set -- "$1" "$(realpath -m "$2")" "${@:3}"
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
  "$PY" -c "import torch" 2>/dev/null || { echo "gpu_check: $PY cannot import torch (PYTHON names one that can)" >&2; exit 2; }
  # (Debian's python3 without python3-venv has no ensurepip: the venv then uses the system's pip)
  "$PY" -m venv --system-site-packages "$VENV" 2>/dev/null || "$PY" -m venv --system-site-packages --without-pip "$VENV"
fi
missing=$("$VENV/bin/python" benchmarks/gpu_check.py --missing)
if [ -n "$missing" ]; then
  echo "gpu_check: installing $missing" >&2
  # no retries: an offline machine without WHEELS fails at once instead of spending its GPU minutes
  # shellcheck disable=SC2086  # one word per requirement
  "$VENV/bin/python" -m pip install --quiet --no-deps --retries 0 --timeout 10 \
    ${WHEELS:+--no-index --find-links "$WHEELS"} $missing
fi
out=${OUT:+$OUT/}gpu_check.txt
rm -f "$out"
"$VENV/bin/python" -c "import torch; print('gpu_check: torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2
exec "$VENV/bin/python" benchmarks/gpu_check.py --out "$out" "$@"
