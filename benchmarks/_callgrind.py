"""Instruction counts of a code region under ``valgrind --tool=callgrind``, for a noisy shared machine.

Run the benchmark under ``valgrind --tool=callgrind --instr-atstart=no``; :func:`region` switches
instrumentation on around the measured code (through callgrind's client requests, compiled into a
two-function C library with the system compiler), so importing torch is not counted.
:func:`total_instructions` reads the count from callgrind's output file.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import subprocess
import tempfile
from pathlib import Path

_SOURCE = """
#include <valgrind/callgrind.h>
void bso_cg_start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void bso_cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; CALLGRIND_DUMP_STATS; }
"""


def _library() -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("instruction counts need a C compiler (cc) and valgrind's headers")
    folder = Path(tempfile.mkdtemp(prefix="bso_cg_"))
    (folder / "cg.c").write_text(_SOURCE)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-o", str(folder / "cg.so"), str(folder / "cg.c")], check=True
    )
    return ctypes.CDLL(str(folder / "cg.so"))


@contextlib.contextmanager
def region():
    """Count instructions inside the ``with`` block (a no-op outside valgrind)."""
    lib = _library()
    lib.bso_cg_start()
    try:
        yield
    finally:
        lib.bso_cg_stop()


def total_instructions(path: str | Path) -> int:
    """The ``Ir`` total of the last dump in a callgrind output file (or its ``.N`` dump files)."""
    candidates = sorted(Path(path).parent.glob(Path(path).name + "*"))
    counts = []
    for candidate in candidates:
        for line in candidate.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                counts.append(int(line.split()[1]))
    if not counts:
        raise RuntimeError(f"no instruction total in {path}")
    return max(counts)
