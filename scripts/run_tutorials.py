"""Run the numbered tutorials as CI does, time them, and refresh the figures committed next to them.

    python scripts/run_tutorials.py                    # all of docs/tutorials/NN-*.md
    python scripts/run_tutorials.py 01 04-online-memory.md

Each page runs in a fresh temporary folder with one torch thread and ``BSO_SNN_DATA`` at ``./data``
(exactly as ``tests/test_docs.py`` runs it); the images the page shows are then copied to
``docs/tutorials/<path>``. Wall seconds per page, with the machine and the commit, are merged into
``benchmarks/results/tutorials.json``, and the table between ``<!-- times -->`` and ``<!-- /times -->``
in ``docs/tutorials/index.md`` is rewritten from it (the times the tutorial pages state).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "tutorials.json"
INDEX = REPO / "docs" / "tutorials" / "index.md"


def _docs_runner():
    """tests/test_docs.py, the one place that knows how a page is executed."""
    spec = importlib.util.spec_from_file_location("_test_docs", REPO / "tests" / "test_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def select(pages: list[Path], wanted: list[str]) -> list[Path]:
    if not wanted:
        return pages
    chosen = [p for p in pages if any(p.name == w or p.name.startswith(w) for w in wanted)]
    unknown = [w for w in wanted if not any(p.name == w or p.name.startswith(w) for p in pages)]
    if unknown:
        raise SystemExit(f"no tutorial matches {unknown}; known: {[p.name for p in pages]}")
    return chosen


def run_one(docs, page: Path) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.environ.setdefault("BSO_SNN_DATA", str(REPO / "data"))
    here = Path.cwd()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)
        try:
            start = time.perf_counter()
            docs.run_page(page)
            seconds = time.perf_counter() - start
        finally:
            os.chdir(here)
            plt.close("all")
        for src in docs.image_sources(page):
            made = Path(work) / src
            if not made.is_file():
                raise SystemExit(f"{page.name} shows {src} but did not write it")
            (page.parent / src).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(made, page.parent / src)
    return seconds


def write_times_table(results: dict) -> None:
    """The measured wall times as a Markdown table inside ``INDEX``'s ``<!-- times -->`` markers."""
    pages = sorted(results["pages"].items())
    rows = [
        "| tutorial | " + " | ".join(name.split("-", 1)[0].lstrip("0") for name, _ in pages) + " | all |",
        "|---" * (len(pages) + 2) + "|",
        "| wall time (s) | "
        + " | ".join(f"{sec:.0f}" for _, sec in pages)
        + f" | **{results['total_s']:.0f}** |",
    ]
    text = INDEX.read_text()
    head, rest = text.split("<!-- times -->", 1)
    _, tail = rest.split("<!-- /times -->", 1)
    INDEX.write_text(head + "<!-- times -->\n" + "\n".join(rows) + "\n<!-- /times -->" + tail)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("pages", nargs="*", help="tutorial file names or number prefixes (default: all)")
    args = parser.parse_args()
    docs = _docs_runner()
    pages = select(docs.TUTORIALS, args.pages)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"pages": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    for page in pages:
        seconds = run_one(docs, page)
        print(f"{page.name}: {seconds:.1f} s", flush=True)
        results["pages"][page.name] = round(seconds, 1)
    results["total_s"] = round(sum(results["pages"].values()), 1)
    results["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    results["threads"] = 1
    results["commit"] = commit.stdout.strip()
    results["command"] = "python scripts/run_tutorials.py " + " ".join(args.pages)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    write_times_table(results)
    print(f"total {results['total_s']} s over {len(results['pages'])} pages -> {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
