#!/usr/bin/env bash
# Install everything the tests need into .venv (a fresh machine needs only Python 3.11 + pip),
# then run the whole suite: once against SpikingJelly 2.0.0 + snnTorch 1.0.0, and the
# SpikingJelly adapter tests again against the classic release 0.0.0.0.14.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
# torch pinned first: the CPU build; anything unpinned could pull a multi-GB CUDA build.
$VPY -m pip install -q torch==2.13.0
$VPY -m pip install -q -e '.[dev]'
# SpikingJelly's core needs only numpy + loguru; its declared deps would pull torchvision/CUDA.
$VPY -m pip install -q --no-deps spikingjelly==2.0.0 loguru snntorch==1.0.0
[ -d .deps/sj14/spikingjelly ] || $VPY -m pip install -q --no-deps --target .deps/sj14 spikingjelly==0.0.0.0.14
$VPY -m pytest "$@"
