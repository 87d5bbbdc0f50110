"""Reproduce the BSO paper's claims at CPU scale: Table 2, Figures 4 and 5 and Table 3 analogues.

One VGG-style conv SNN (``reproduce_methods.build_network``, 90.3 % of its weights in the three
binary middle convolutions) on real Fashion-MNIST, for seven methods (``frozen``, ``fp-bptt``,
``ottt``, ``ndot``, ``latent-ste-bptt``, ``bso``, ``tbso``), T = 2, 4, 6, two seeds. Phases:

1. **gamma sweep** (Table 3 analogue): T-BSO and BSO at T=4, seed 0, over a grid of gamma, on
   ``sweep_n_train`` images (12,000); the gamma with the best *validation* accuracy is the one
   every Table 2 BSO / T-BSO row uses.
2. **Table 2 grid**: every method x T x seed on ``n_train`` images (6,000, one epoch), each in a
   fresh subprocess (one thread), which also
   measures the configuration's peak training memory (see ``peak_training_bytes``).
3. **Figure 4**: peak training memory against T = 1..32 for BPTT, BSO and T-BSO.

Results go to ``benchmarks/results/reproduce.json`` (``--out``): one row per finished job,
appended as it finishes, so an interrupted run resumes where it stopped (rows already there
are skipped). The file records each invocation's command, machine, versions and wall time.
``--extra '{"method": ..., "T": ..., "seed": ..., ...}'`` adds remedy runs (``Config`` fields over the
grid's). The report (written at the end of every invocation, or alone with ``--report-only``) writes the tables into ``docs/results.md``
between its markers and the plots into ``docs/img/``.

Full run:   python benchmarks/reproduce.py --jobs 2
Quick run:  python benchmarks/reproduce.py --quick --out /tmp/q.json --doc /tmp/q.md --img-dir /tmp
(``--quick``: 256 training images, T=2 only, one seed, three gammas, memory at T = 1 and 4.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

FULL = {
    "n_train": 6000,
    "sweep_n_train": 12000,
    "n_val": 5000,
    "n_test": 10000,
    "epochs": 1,
    "batch": 128,
    "memory_batch": 128,
    "steps": [2, 4, 6],
    "seeds": [0, 1],
    "sweep_T": 4,
    "tbso_gammas": [5e-7, 0.3, 1.0, 3.0, 10.0],
    "bso_gammas": [5e-7, 2e-6, 1e-5],
    "memory_steps": [1, 2, 4, 8, 16, 32],
    "memory_methods": ["fp-bptt", "bso", "tbso"],
}
QUICK = {
    **FULL,
    "n_train": 256,
    "sweep_n_train": 256,
    "n_val": 128,
    "n_test": 256,
    "epochs": 1,
    "batch": 64,
    "memory_batch": 32,
    "steps": [2],
    "seeds": [0],
    "sweep_T": 2,
    "tbso_gammas": [0.3, 3.0],
    "bso_gammas": [5e-7],
    "memory_steps": [1, 4],
    "memory_methods": ["fp-bptt", "tbso"],
}


# ---------------------------------------------------------------------------- jobs
@dataclasses.dataclass(frozen=True)
class Job:
    """A training run (``phase`` 'sweep' or 'grid') or a memory probe (``phase`` 'memory')."""

    phase: str
    spec: dict[str, Any]  # Config fields (train) or {method, T, batch} (memory); gamma "selected" = wait

    def key(self, selected: dict[str, float]) -> str | None:
        """The row key, or None while the job waits for the gamma sweep."""
        spec = self.resolved(selected)
        if spec is None:
            return None
        if self.phase == "memory":
            return f"memory/{spec['method']}/T{spec['T']}/b{spec['batch']}"
        from reproduce_methods import Config

        return Config(**spec).key()

    def resolved(self, selected: dict[str, float]) -> dict[str, Any] | None:
        if self.spec.get("gamma") != "selected":
            return self.spec
        if self.spec["method"] not in selected:
            return None
        return {**self.spec, "gamma": selected[self.spec["method"]]}


def jobs(settings: dict[str, Any]) -> list[Job]:
    """Every job of the benchmark, in priority order."""
    data = {k: settings[k] for k in ("n_train", "n_val", "n_test", "epochs", "batch")}
    sweep = [
        Job(
            "sweep",
            {
                "method": m,
                "T": settings["sweep_T"],
                "seed": 0,
                "gamma": g,
                **data,
                "n_train": settings["sweep_n_train"],
            },
        )
        for m in ("tbso", "bso")
        for g in settings[f"{m}_gammas"]
    ]
    grid = [
        Job(
            "grid",
            {
                "method": m,
                "T": T,
                "seed": s,
                **data,
                **({"gamma": "selected"} if m in ("bso", "tbso") else {}),
            },
        )
        for s in settings["seeds"]
        for T in settings["steps"]
        for m in ("frozen", "fp-bptt", "ottt", "ndot", "latent-ste-bptt", "bso", "tbso")
    ]
    memory = [
        Job("memory", {"method": m, "T": T, "batch": settings["memory_batch"]})
        for T in settings["memory_steps"]
        for m in settings["memory_methods"]
    ]
    return sweep + grid + memory


def select_gammas(rows: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, float]:
    """Per method, the swept gamma with the best validation accuracy (once all its sweep rows exist;
    ties go to the smaller gamma)."""
    selected = {}
    for method in ("tbso", "bso"):
        swept = [r for r in rows if r.get("phase") == "sweep" and r["method"] == method]
        if len(swept) == len(settings[f"{method}_gammas"]):
            best = max(swept, key=lambda r: (r["val_acc"], -r["gamma"]))
            selected[method] = best["gamma"]
    return selected


# ---------------------------------------------------------------------------- results file
def machine() -> dict[str, Any]:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "torch_threads_per_job": 1,
            "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class Results:
    """The JSON results file: written whole (atomically) after every finished row."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        if path.exists():
            self.data = json.loads(path.read_text())
            if self.data["settings"] != settings:
                raise SystemExit(
                    f"{path} was written with other settings ({self.data['settings']}); pass another "
                    f"--out (or delete the file) to start a run with these settings ({settings})"
                )
        else:
            self.data = {
                "benchmark": "reproduce",
                "settings": settings,
                "selected_gamma": {},
                "invocations": [],
                "rows": [],
            }

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    def keys(self) -> set[str]:
        return {r["key"] for r in self.rows}

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n")
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------- running
def worker(spec: dict[str, Any], phase: str) -> dict[str, Any]:
    """Run one job in this process (called in a fresh subprocess)."""
    import reproduce_methods as rm
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    if phase == "memory":
        cfg = rm.Config(method=spec["method"], T=spec["T"], seed=0, epochs=1, n_train=spec["batch"], n_val=0, n_test=0,
                        batch=spec["batch"], gamma=1.0 if spec["method"] in ("bso", "tbso") else None)  # fmt: skip
        data = rm.load_data(cfg.batch, 0, 0)
        peak = rm.peak_training_bytes(cfg.method, cfg.T, data.train_x, data.train_y, cfg)
        row = {"kind": "memory", **spec, "peak_train_mem_bytes": peak, "memory_batches": cfg.memory_batches}
    else:
        row = rm.run(rm.Config(**spec), log=lambda m: print(m, file=sys.stderr, flush=True))
    row["phase"] = phase
    row["git"] = git_commit()
    row["job_wall_s"] = time.perf_counter() - start
    return row


def _launch(job: Job, spec: dict[str, Any], log_dir: Path, key: str) -> tuple[subprocess.Popen, Path]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / (key.replace("/", "_") + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        json.dumps({"phase": job.phase, "spec": spec}),
    ]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
    return proc, log


def run_all(
    results: Results,
    settings: dict[str, Any],
    n_jobs: int,
    log_dir: Path,
    limit: int | None,
    methods: list[str] | None,
    extras: tuple[Job, ...] | list[Job] = (),
) -> None:
    """Run every job not yet in ``results`` (of ``methods`` only, if given), ``n_jobs``
    subprocesses at a time, in priority order."""
    all_jobs = [j for j in jobs(settings) + list(extras) if methods is None or j.spec["method"] in methods]
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    failed: set[str] = set()
    started = 0
    while True:
        selected = select_gammas(results.rows, settings)
        results.data["selected_gamma"] = selected
        done = results.keys()
        pending = [(j, j.key(selected)) for j in all_jobs]
        ready = [(j, k) for j, k in pending if k is not None and k not in done | failed and k not in running]
        waiting = [j for j, k in pending if k is None]
        while ready and len(running) < n_jobs and (limit is None or started < limit):
            job, key = ready.pop(0)
            proc, log = _launch(job, job.resolved(selected), log_dir, key)
            running[key] = (proc, log)
            started += 1
            print(f"[{time.strftime('%H:%M:%S')}] start {key}", flush=True)
        if not running:
            if failed:
                raise SystemExit(f"{len(failed)} job(s) failed: {sorted(failed)}; rerun to retry them")
            if waiting and not (limit is not None and started >= limit):
                raise SystemExit(f"{len(waiting)} job(s) wait for a gamma sweep that did not finish")
            return
        time.sleep(1.0)
        for key, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            out = proc.stdout.read()
            del running[key]
            lines = [line for line in out.splitlines() if line.startswith("ROW ")]
            if proc.returncode != 0 or not lines:
                print(
                    f"[{time.strftime('%H:%M:%S')}] FAILED {key} (rc {proc.returncode}); see {log}",
                    flush=True,
                )
                failed.add(key)
                continue
            row = json.loads(lines[-1][4:])
            row["key"] = key
            results.add(row)
            acc = f" test {row['test_acc']:.4f} val {row['val_acc']:.4f}" if "test_acc" in row else ""
            print(f"[{time.strftime('%H:%M:%S')}] done  {key}{acc} ({row['job_wall_s']:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced grid end to end (minutes)")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses in parallel (1 thread each)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default benchmarks/results/reproduce[_quick].json)",
    )
    parser.add_argument(
        "--doc",
        type=Path,
        default=ROOT / "docs" / "results.md",
        help="markdown page to write the tables into",
    )
    parser.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img", help="folder for the plots")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "runs" / "reproduce", help="per-job logs")
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the tables and plots from --out"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="run only these methods' jobs this time")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        help="an extra training run (remedy experiment) as JSON Config fields over the grid's defaults, "
        'e.g. \'{"method": "tbso", "T": 4, "seed": 0, "gamma": 1.0, "beta1_complement": 0.01}\'',
    )
    parser.add_argument("--limit", type=int, default=None, help="start at most this many jobs (for testing)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        print("ROW " + json.dumps(worker(job["spec"], job["phase"])), flush=True)
        return
    settings = QUICK if args.quick else FULL
    out = args.out or HERE / "results" / ("reproduce_quick.json" if args.quick else "reproduce.json")
    results = Results(out, settings)
    if not args.report_only:
        invocation = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "cwd": str(Path.cwd()),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": git_commit(),
                      "machine": machine(), "jobs": args.jobs}  # fmt: skip
        start = time.perf_counter()
        results.data["invocations"].append(invocation)
        try:
            data = {k: settings[k] for k in ("n_train", "n_val", "n_test", "epochs", "batch")}
            extras = [Job("extra", {**data, **json.loads(e)}) for e in args.extra]
            run_all(results, settings, args.jobs, args.log_dir, args.limit, args.methods, extras)
        finally:
            invocation["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            invocation["wall_s"] = round(time.perf_counter() - start, 1)
            results.save()
    import reproduce_report

    reproduce_report.write(results.data, args.doc, args.img_dir, out)


if __name__ == "__main__":
    main()
