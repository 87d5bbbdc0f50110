#!/usr/bin/env bash
# The GPU check, in one command, for a CUDA machine that reaches no package index.
#
#   bash scripts/gpu_check.sh --prepare [--wheels DIR]   here (network: PyPI): fill DIR (default gpu-wheels/)
#                                                        with the pure-Python wheels the check installs
#   bash scripts/gpu_check.sh [--wheels DIR] [--python PY]   on the GPU machine (<= 5 min on one GPU)
#   bash scripts/gpu_check.sh --dry-run [--wheels DIR]   the same plumbing on a CPU-only machine: offline
#                                                        install, imports, collection, tiny CPU versions
#                                                        of the checks (no CUDA code runs; says so)
#
# The GPU machine brings its own Python with a CUDA build of torch, CuPy and Triton (and numpy and
# matplotlib, which bso-snn's run folders need). The script never touches that torch: it installs into
# a throw-away --target folder used through PYTHONPATH, offline (--no-index --find-links DIR
# --no-deps --no-build-isolation), bso-snn (the wheel built by --prepare), SpikingJelly 2.0.0,
# snnTorch, loguru, and pytest/tqdm where the machine lacks them (the gpu-marked tests need no hypothesis); SpikingJelly 0.0.0.0.14
# goes into a --target folder used through PYTHONPATH (its CuPy backend is the machine's CuPy).
#
# Checks, each timed; any failure fails the script (exit 1) and the summary says which:
#   1. environment: CUDA visible, CuPy importable
#   2. install (offline)
#   3. every gpu-marked test (SpikingJelly 2.0.0), then the SpikingJelly adapter's gpu-marked tests
#      against 0.0.0.0.14 (CuPy kernels)
#   4. SpikingJelly 0.0.0.0.14 backend='cupy' converted and trained 5 steps, outputs vs backend='torch'
#   5. VGG-11, CIFAR-10 shape, T=4, batch 128: 50 steps, time and peak memory per step, online T-BSO vs BPTT
#   6. bso-snn train --amp (and without) on generated CIFAR-10 files: ±1 weights, float32 state
# Results land in $OUT (default gpu-check-results/): memory.json, cupy.json, amp.json, logs.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
MODE=run
WHEELS=gpu-wheels
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-gpu-check-results}
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --prepare) MODE=prepare ;;
        --dry-run) MODE=dry ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        --python) PY=${2:?--python needs an interpreter}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

# The pure-Python wheels: pinned to what CI tests with. (name==version, one per line)
SJ_CLASSIC=spikingjelly==0.0.0.0.14
PINNED=(spikingjelly==2.0.0 snntorch==1.0.0 loguru==0.7.3)
MAX_WHEELS_MIB=40 # the device machine receives at most 64 MiB, working tree included

prepare() {
    local vpy=${VPY:-.venv/bin/python} extra=() pkg
    [ -x "$vpy" ] || vpy=$PY
    # test tools at the versions this machine's venv runs (pure Python)
    for pkg in pytest iniconfig packaging pluggy pygments tqdm; do
        extra+=("$pkg==$("$vpy" -c "import importlib.metadata as m; print(m.version('$pkg'))")") || return 1
    done
    rm -rf "$WHEELS" && mkdir -p "$WHEELS" || return 1
    echo "=== pip download into $WHEELS"
    # one command per SpikingJelly release (two versions of one package cannot share a resolve)
    "$vpy" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "$SJ_CLASSIC" || return 1
    "$vpy" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" "${PINNED[@]}" "${extra[@]}" || return 1
    echo "=== bso-snn wheel"
    "$vpy" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" . || return 1
    ls -l "$WHEELS"
    local kib
    kib=$(du -sk "$WHEELS" | cut -f1)
    echo "total: $((kib / 1024)) MiB ($kib KiB) in $(find "$WHEELS" -name '*.whl' | wc -l) wheels"
    if [ "$kib" -gt $((MAX_WHEELS_MIB * 1024)) ]; then
        echo "error: $WHEELS is larger than $MAX_WHEELS_MIB MiB" >&2
        return 1
    fi
    case $(find "$WHEELS" -name '*.whl' ! -name '*-none-any.whl' | wc -l) in
        0) ;;
        *) echo "error: platform-specific wheels in $WHEELS (only pure-Python ones belong there)" >&2; return 1 ;;
    esac
    echo "done. Carry $WHEELS with the working tree to the GPU machine and run: bash scripts/gpu_check.sh"
}

if [ "$MODE" = prepare ]; then
    prepare
    exit $?
fi

# ---------------------------------------------------------------- run / dry run
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
RESULTS=()
FAILED=0
T0=$SECONDS
check() { # check <name> <command...>: runs it, logs to $OUT_DIR/<name>.log, records pass/fail and time
    local name=$1 start=$SECONDS rc
    shift
    echo "=== $name"
    "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("$(printf 'PASS  %-34s %4ds' "$name" $((SECONDS - start)))")
    else
        RESULTS+=("$(printf 'FAIL  %-34s %4ds  (exit %d, log %s)' "$name" $((SECONDS - start)) "$rc" "$OUT_DIR/$name.log")")
        FAILED=1
    fi
    return "$rc"
}
summary() {
    echo
    echo "=== gpu_check summary ($([ "$MODE" = dry ] && echo 'DRY RUN on the CPU: no CUDA code ran' || echo 'GPU run'))"
    [ ${#RESULTS[@]} -gt 0 ] && printf "  %s\n" "${RESULTS[@]}" || echo "  (no check ran)"
    printf '  total %ds; results in %s\n' $((SECONDS - T0)) "$OUT_DIR"
    if [ "$FAILED" -eq 0 ]; then echo "=== PASSED"; else echo "=== FAILED"; fi
}
trap summary EXIT

[ -d "$WHEELS" ] || { echo "error: no wheel folder $WHEELS; run bash scripts/gpu_check.sh --prepare where PyPI is reachable, and carry $WHEELS along" >&2; FAILED=1; exit 1; }
WHEELS=$(cd "$WHEELS" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bso-gpu-check.XXXXXX")
SITE=$WORK/site
SJ14=$WORK/sj14
VPY=$PY
export MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1

environment() {
    "$PY" - "$MODE" <<'PYEOF'
import importlib, sys
mode = sys.argv[1]
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA build", torch.version.cuda,
      "| GPU visible", torch.cuda.is_available())
missing = [m for m in ("numpy", "matplotlib") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: this Python lacks {', '.join(missing)} (bso-snn's core needs them; they are not pure-Python wheels)")
if mode == "run":
    if not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA GPU; this check is for a CUDA machine (use --dry-run elsewhere)")
    print("GPU", torch.cuda.get_device_name(0), "| devices", torch.cuda.device_count())
    import cupy
    print("cupy", cupy.__version__, "| cupy sees", cupy.cuda.runtime.getDeviceCount(), "device(s)")
elif importlib.util.find_spec("cupy") is None:
    print("note: no CuPy here (dry run: the CuPy network is only built where CuPy imports)")
PYEOF
}

install() {
    local pip=("$PY" -m pip install -q --no-index --find-links "$WHEELS" --no-deps --no-build-isolation)
    local pkgs=(bso-snn "${PINNED[@]}") pkg
    for pkg in pytest iniconfig packaging pluggy pygments tqdm; do # only those the machine lacks
        "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$pkg') is None)" || pkgs+=("$pkg")
    done
    "${pip[@]}" --target "$SITE" "${pkgs[@]}" || return 1
    "${pip[@]}" --target "$SJ14" "$SJ_CLASSIC" || return 1
    PYTHONPATH=$SITE "$PY" -c "import torch, bso_snn, spikingjelly, snntorch; print('installed: bso-snn', bso_snn.__version__, 'from', bso_snn.__file__, '| torch', torch.__version__, 'from', torch.__file__, '(the machine\'s own)')"
}

gpu_tests() { # every gpu-marked test; tests import bso_snn from the installed wheel (run outside the repo)
    (cd "$WORK" && "$VPY" -m pytest -c "$REPO/pyproject.toml" --rootdir "$REPO" -p no:cacheprovider \
        -m gpu -q -rs "$@" "$REPO/tests")
}
gpu_tests_sj14() {
    (cd "$WORK" && PYTHONPATH="$SJ14:$SITE" BSO_SNN_EXPECT_SPIKINGJELLY=0.0.0.0.14 "$VPY" -m pytest \
        -c "$REPO/pyproject.toml" --rootdir "$REPO" -p no:cacheprovider -m gpu -q -rs "$@" \
        "$REPO"/tests/adapters/test_spikingjelly*.py)
}
cifar_data() {
    "$VPY" -c "import sys; sys.path.insert(0, '$REPO/tests'); from pathlib import Path; from _datagen import make_cifar10; make_cifar10(Path('$WORK/cifar'), per_batch=64)"
}
py_check() { (cd "$WORK" && "$VPY" "$REPO/scripts/gpu_check.py" "$@"); }

check "1-environment" environment || exit 1
check "2-install-offline" install || exit 1
export PYTHONPATH=$SITE
if [ "$MODE" = run ]; then
    check "3a-gpu-tests" gpu_tests
    check "3b-gpu-tests-sj-0.0.0.0.14" gpu_tests_sj14
    check "4-cupy-vs-torch-training" env PYTHONPATH="$SJ14:$SITE" bash -c "cd '$WORK' && '$VPY' '$REPO/scripts/gpu_check.py' cupy --json '$OUT_DIR/cupy.json'"
    check "5-vgg11-memory-online-vs-bptt" py_check memory --steps 50 --T 4 --batch-size 128 --json "$OUT_DIR/memory.json"
    check "6-amp-end-to-end" bash -c "$(declare -f cifar_data); VPY='$VPY' WORK='$WORK' REPO='$REPO'; cifar_data && cd '$WORK' && '$VPY' '$REPO/scripts/gpu_check.py' amp --data-root '$WORK/cifar' --json '$OUT_DIR/amp.json'"
else
    check "3a-gpu-tests-collected" gpu_tests --collect-only
    check "3b-gpu-tests-sj-0.0.0.0.14-collected" gpu_tests_sj14 --collect-only
    if PYTHONPATH="$SJ14:$SITE" "$PY" -c "import cupy" 2>/dev/null; then
        check "4-cupy-network-built" env PYTHONPATH="$SJ14:$SITE" bash -c "cd '$WORK' && '$VPY' '$REPO/scripts/gpu_check.py' cupy --device cpu --construct-only"
    else
        RESULTS+=("$(printf 'SKIP  %-34s        (no CuPy importable here; the GPU run requires it)' 4-cupy-network-built)")
    fi
    check "5-vgg11-memory-tiny-cpu" py_check memory --device cpu --steps 2 --T 2 --batch-size 4 --width 4 --json "$OUT_DIR/memory.json"
    check "6-amp-tiny-cpu" bash -c "$(declare -f cifar_data); VPY='$VPY' WORK='$WORK' REPO='$REPO'; cifar_data && cd '$WORK' && '$VPY' '$REPO/scripts/gpu_check.py' amp --device cpu --width 4 --data-root '$WORK/cifar' --json '$OUT_DIR/amp.json'"
fi
rm -rf "$WORK"
exit "$FAILED"
