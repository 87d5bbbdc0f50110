"""T-BSO vs the full-precision baseline, side by side, with one command.

    python scripts/compare.py --dataset fashion-mnist --epochs 1 [--T 4] [--out runs/compare-fashion-mnist]

Runs ``bso-snn train`` once per optimizer (``--optimizers tbso fp`` by default) with the same
dataset, model, T, epochs, batch size and seed, each in its own process, and prints a Markdown
table (also written to ``<out>/results.md``). Wall time is the whole process (imports and data
loading included). Extra arguments after ``--`` go to every ``bso-snn train`` call.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizers", nargs="+", default=["tbso", "fp"])
    parser.add_argument("--out", default=None, help="default: runs/compare-<dataset>-<time>")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then more bso-snn train arguments")
    args = parser.parse_args(argv)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    out = Path(args.out or f"runs/compare-{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}")
    rows = []
    for opt in args.optimizers:
        cmd = [sys.executable, "-m", "bso_snn", "train", "--dataset", args.dataset, "--model", args.model]
        cmd += ["--optimizer", opt, "--epochs", str(args.epochs), "--T", str(args.T)]
        cmd += [
            "--batch-size",
            str(args.batch_size),
            "--seed",
            str(args.seed),
            "--out",
            str(out / opt),
            *extra,
        ]
        print("$ " + " ".join(cmd[1:]), flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        wall = time.perf_counter() - start
        if code != 0:
            print(f"{opt}: bso-snn train exited with {code}", file=sys.stderr)
            return code
        m = json.loads((out / opt / "metrics.json").read_text())
        size = m["model_size"]
        rows.append(
            f"| {opt} | {m['config']['update']} | {m['test_acc']:.4f} | {len(m['epochs'])} | {m['config']['T']} | "
            f"{wall:.0f} | {size['bytes_1bit'] / 1024:.0f} | {size['bytes_float32'] / 1024:.0f} | "
            f"{m['peak_rss_mb']['end']:.0f} |"
        )
    table = "\n".join(
        [
            f"{args.dataset}, model {args.model}, batch {args.batch_size}, seed {args.seed}",
            "",
            "| optimizer | update | test acc | epochs | T | wall s | size KiB (1-bit) | size KiB (float32) | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print("\n" + table)
    (out / "results.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
