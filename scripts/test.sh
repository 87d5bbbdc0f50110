#!/usr/bin/env bash
# The README's test command:  bash scripts/test.sh [extra pytest args for run 1]
#
# From a fresh clone on a machine with only Python >= 3.11 and pip (network: package registries):
#   1. create .venv and install torch (CPU, pinned first), bso-snn[dev,docs], SpikingJelly 2.0.0 and
#      snnTorch 1.0.0, and the classic SpikingJelly 0.0.0.0.14 (+ CuPy, no GPU needed) into .deps/sj14;
#   2. fetch MNIST + Fashion-MNIST into ./data (md5-checked; skipped when present);
#   3. ruff check + ruff format --check; the documentation site: mkdocs build --strict (into ./site);
#   4. pytest run 1: the whole suite (SpikingJelly 2.0.0, snnTorch 1.0.0; it runs every docs page and tutorial);
#      pytest run 2: the SpikingJelly adapter tests again against SpikingJelly 0.0.0.0.14;
#      pytest run 3: the snnTorch adapter tests again against snnTorch 0.9.4.
# Any failure, and a pytest run that collects no tests (exit code 5), fails the script.
# Re-running is fast: installs are skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VPY=.venv/bin/python
STAMP=.venv/.bso-snn-installed
SJ_CLASSIC=.deps/sj14
SNN_094=.deps/snn094
export MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1
# .venv/bin first on PATH: the ninja from the dev extra builds the fused C++ flip kernel (torch looks ninja up on PATH).
export PATH="$PWD/.venv/bin:$PATH"
# The whole SpikingJelly zoo matrix, its 45-144M-parameter VGG/ResNet variants included (about 2 minutes).
export BSO_SNN_FULL_ZOO=1

PHASES=()
phase_start=$SECONDS
script_start=$SECONDS
phase() {  # phase <name>: closes the previous phase's timer, starts the next
    [ -n "${CURRENT:-}" ] && PHASES+=("$(printf '%-28s %5ds' "$CURRENT" $((SECONDS - phase_start)))")
    CURRENT=$1
    phase_start=$SECONDS
    echo "=== $1"
}
summary() {
    local rc=$?
    [ -n "${CURRENT:-}" ] && PHASES+=("$(printf '%-28s %5ds' "$CURRENT" $((SECONDS - phase_start)))")
    echo "=== time per phase"
    printf '  %s\n' "${PHASES[@]}"
    printf '  %-28s %5ds\n' "total" $((SECONDS - script_start))
    if [ "$rc" -eq 0 ]; then echo "=== PASSED"; else echo "=== FAILED (exit $rc) in phase: ${CURRENT:-?}"; fi
}
trap summary EXIT

run_pytest() {  # run_pytest <label> <pytest args...>: fails on any failure, and on "no tests collected"
    local label=$1 rc=0
    shift
    "$VPY" -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then echo "error: $label collected no tests" >&2; fi
    return "$rc"
}

phase "venv"
[ -x "$VPY" ] || "$PY" -m venv .venv

phase "install"
want=$(cat pyproject.toml scripts/test.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && [ -d "$SJ_CLASSIC/spikingjelly" ] && [ -d "$SJ_CLASSIC/cupy" ] && [ -d "$SNN_094/snntorch" ]; then
    echo "up to date (delete $STAMP to force a reinstall)"
else
    # torch first, pinned: the CPU build (a local wheel here). Anything unpinned may pull a multi-GB CUDA build.
    # Elsewhere: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/test.sh
    "$VPY" -m pip install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
    # The docs tools are pinned in pyproject's docs extra and depend on nothing that touches torch.
    "$VPY" -m pip install -q -e '.[dev,docs]'
    # SpikingJelly's core needs only numpy + loguru; its declared deps (torchvision, torchaudio, ...) are not needed.
    "$VPY" -m pip install -q --no-deps spikingjelly==2.0.0 'loguru>=0.7,<1' snntorch==1.0.0
    # The [shd] extra: h5py needs only numpy (already in .venv).
    "$VPY" -m pip install -q --no-deps h5py==3.16.0
    # NIR export (bso_snn.export_nir) and the two libraries' NIR readers: nir needs numpy + h5py,
    # nirtorch needs torch + nir (--no-deps: nothing may replace the pinned torch).
    "$VPY" -m pip install -q --no-deps nir==1.0.8 nirtorch==2.6
    # The classic SpikingJelly release, importable only with PYTHONPATH=.deps/sj14 (pytest run 2).
    # CuPy too: 0.0.0.0.14's backend='cupy' needs it at construction (it imports without a GPU;
    # kernels are never run here). cupy-cuda12x needs numpy (in .venv) and cuda-pathfinder.
    rm -rf "$SJ_CLASSIC"
    "$VPY" -m pip install -q --no-deps --target "$SJ_CLASSIC" spikingjelly==0.0.0.0.14 \
        cupy-cuda12x==14.2.0 'cuda-pathfinder>=1.3.4,<2' fastrlock
    # snnTorch 0.9.4, importable only with PYTHONPATH=.deps/snn094 (pytest run 3).
    rm -rf "$SNN_094"
    "$VPY" -m pip install -q --no-deps --target "$SNN_094" snntorch==0.9.4
    echo "$want" >"$STAMP"
fi
"$VPY" -c "import torch, spikingjelly, snntorch, bso_snn, nir, nirtorch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available())"

phase "data (MNIST, Fashion-MNIST)"
"$VPY" -m bso_snn.data fetch mnist fashion-mnist

phase "lint (ruff)"
"$VPY" -m ruff check .
"$VPY" -m ruff format --check .

phase "docs site (mkdocs --strict)"
NO_MKDOCS_2_WARNING=1 "$VPY" -m mkdocs build --strict --quiet --site-dir site

phase "pytest 1: suite"
BSO_SNN_REQUIRE_DATA=1 BSO_SNN_EXPECT_SPIKINGJELLY=2.0.0 BSO_SNN_EXPECT_SNNTORCH=1.0.0 \
    run_pytest "run 1 (whole suite)" "$@"

# Runs 2 and 3: one adapter's tests again, against an older release importable from a --target folder.
run_against() {  # run_against <phase> <label> <PYTHONPATH> <VAR=version> <test glob prefix>
    phase "$1"
    local files=("$5"*.py)
    if [ ${#files[@]} -eq 0 ]; then
        echo "error: no $5*.py files" >&2
        exit 5
    fi
    (export PYTHONPATH="$3" "$4" && run_pytest "$2" "${files[@]}")
}
shopt -s nullglob
run_against "pytest 2: SJ 0.0.0.0.14" "run 2 (SpikingJelly 0.0.0.0.14)" "$SJ_CLASSIC" \
    BSO_SNN_EXPECT_SPIKINGJELLY=0.0.0.0.14 tests/adapters/test_spikingjelly
run_against "pytest 3: snnTorch 0.9.4" "run 3 (snnTorch 0.9.4)" "$SNN_094" \
    BSO_SNN_EXPECT_SNNTORCH=0.9.4 tests/adapters/test_snntorch
