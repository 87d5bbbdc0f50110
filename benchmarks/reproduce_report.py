"""Tables and plots of ``reproduce.py``'s results: markdown between the markers of a page, PNGs.

The markdown goes between ``<!-- reproduce:begin -->`` and ``<!-- reproduce:end -->`` of the page
(appended if the page has no markers), so hand-written text around it survives regeneration.
Accuracies are in percent; "points" are percentage points of test accuracy (means over seeds).
"""

from __future__ import annotations

import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
ORDER = ("frozen", "fp-bptt", "ottt", "ndot", "latent-ste-bptt", "bso", "tbso")
MiB = 2**20


def _grid(data: dict[str, Any]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Table 2 rows by (method, T): the grid's configurations (BSO/T-BSO at the selected gamma)."""
    settings, selected = data["settings"], data.get("selected_gamma", {})
    cells = defaultdict(list)
    for r in data["rows"]:
        if r["kind"] != "train" or r["T"] not in settings["steps"] or r["seed"] not in settings["seeds"]:
            continue
        if r.get("bso_reset") is not None or r.get("beta1_complement", 1e-3) != 1e-3:
            continue  # remedy experiments are reported separately
        if r["method"] in ("bso", "tbso") and r.get("gamma") != selected.get(r["method"]):
            continue
        if r["epochs"] != settings["epochs"] or r["n_train"] != settings["n_train"]:
            continue
        cells[(r["method"], r["T"])].append(r)
    for rows in cells.values():
        rows.sort(key=lambda r: r["seed"])
    return cells


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} kB"


def table2(data: dict[str, Any]) -> list[str]:
    cells = _grid(data)
    lines = [
        "| method | T | test acc % (mean) | test acc % per seed | val acc % (mean) | model size (1-bit / float32) "
        "| train time per epoch, wall s (CPU s) | peak training memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for T in data["settings"]["steps"]:
        for method in ORDER:
            rows = cells.get((method, T))
            if not rows:
                lines.append(f"| {method} | {T} | (not run) | | | | | |")
                continue
            seeds = " / ".join(_pct(r["test_acc"]) for r in rows)
            size = f"{_kb(rows[0]['model_bytes'])} / {_kb(rows[0]['model_bytes_float32'])}"
            wall = statistics.median(r["train_time_per_epoch_s"] for r in rows)
            cpu = statistics.median(r["cpu_time_per_epoch_s"] for r in rows)
            mem = statistics.median(r["peak_train_mem_bytes"] for r in rows) / MiB
            lines.append(
                f"| {method} | {T} | {_pct(_mean(rows, 'test_acc'))} | {seeds} | {_pct(_mean(rows, 'val_acc'))} "
                f"| {size} | {wall:.1f} ({cpu:.1f}) | {mem:.1f} |"
            )
    return lines


def claims(data: dict[str, Any]) -> list[str]:
    """The paper's four claims, each checked against the measured means."""
    cells = _grid(data)
    acc = {k: _mean(v, "test_acc") for k, v in cells.items()}
    steps = data["settings"]["steps"]
    lines = ["| claim (paper) | measured | met? |", "|---|---|---|"]

    def diff(a: str, b: str, T: int) -> float | None:
        return None if (a, T) not in acc or (b, T) not in acc else 100 * (acc[(a, T)] - acc[(b, T)])

    for method in ("bso", "tbso"):
        ds = {T: diff(method, "frozen", T) for T in steps}
        got = ", ".join(f"T={T}: {d:+.2f}" for T, d in ds.items() if d is not None)
        ok = all(d is not None and d >= 5 for d in ds.values())
        lines.append(
            f"| {method} >= frozen + 5 points at every T | {f'{got} points' if got else 'not run'} | {_yes(ok, ds)} |"
        )
    ds = {T: diff("tbso", "bso", T) for T in steps}
    got = ", ".join(f"T={T}: {d:+.2f}" for T, d in ds.items() if d is not None)
    lines.append(
        f"| tbso >= bso at every T | {f'{got} points' if got else 'not run'} | {_yes(all(d is not None and d >= 0 for d in ds.values()), ds)} |"
    )
    d = diff("tbso", "fp-bptt", 4) if 4 in steps else None
    lines.append(
        f"| tbso within 1.5 points of fp-bptt at T=4 (paper: +1.6) | "
        f"{'not run' if d is None else f'{d:+.2f} points'} | {_yes(d is not None and d >= -1.5, {4: d})} |"
    )
    mem = memory_curves(data)
    if mem:
        parts, flat = [], True
        for method, curve in mem.items():
            if len(curve) >= 2:
                (t0, m0), (t1, m1) = curve[0], curve[-1]
                parts.append(f"{method} x{m1 / m0:.2f} (T={t0}->{t1})")
                if method in ("bso", "tbso"):
                    flat &= m1 / m0 < 1.5
        bptt = [c for m, c in mem.items() if m == "fp-bptt" and len(c) >= 2]
        grows = bool(bptt) and bptt[0][-1][1] / bptt[0][0][1] > 2
        lines.append(
            f"| BSO / T-BSO memory flat in T while BPTT grows | peak memory {', '.join(parts)} | "
            f"{_yes(flat and grows, {0: 1})} |"
        )
    return lines


def _yes(ok: bool, values: dict) -> str:
    if any(v is None for v in values.values()):
        return "incomplete"
    return "yes" if ok else "**no**"


def sweep_table(data: dict[str, Any], method: str) -> list[str]:
    rows = sorted(
        (r for r in data["rows"] if r.get("phase") == "sweep" and r["method"] == method),
        key=lambda r: r["gamma"],
    )
    if not rows:
        return []
    chosen = data.get("selected_gamma", {}).get(method)
    lines = [
        f"| {method} gamma | val acc % | test acc % | flip events per weight | never flipped | "
        "changed sign (end vs start) | weights flipped >= 10 times |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (selected)" if r["gamma"] == chosen else ""
        lines.append(
            f"| {r['gamma']:g}{mark} | {_pct(r['val_acc'])} | {_pct(r['test_acc'])} | {r['flip_events_per_weight']:.3f} | "
            f"{_pct(r['never_flipped_fraction'])} % | {_pct(r['changed_sign_fraction'])} % | {_pct(r['flipped_10_plus_fraction'])} % |"
        )
    return lines


def flip_table(data: dict[str, Any]) -> list[str]:
    cells = _grid(data)
    lines = [
        "| method | T | flip events per weight | never flipped | changed sign (end vs start), per layer |",
        "|---|---|---|---|---|",
    ]
    for (method, T), rows in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if method not in ("bso", "tbso"):
            continue
        layers = " / ".join(
            _pct(statistics.fmean(r["changed_sign_fraction_per_layer"][i] for r in rows)) for i in range(3)
        )
        lines.append(
            f"| {method} | {T} | {_mean(rows, 'flip_events_per_weight'):.3f} | {_pct(_mean(rows, 'never_flipped_fraction'))} % "
            f"| {layers} % |"
        )
    return lines


def memory_curves(data: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    curves = defaultdict(list)
    for r in data["rows"]:
        if r["kind"] == "memory":
            curves[r["method"]].append((r["T"], r["peak_train_mem_bytes"] / MiB))
    return {m: sorted(c) for m, c in curves.items()}


def memory_table(data: dict[str, Any]) -> list[str]:
    curves = memory_curves(data)
    if not curves:
        return []
    steps = sorted({T for c in curves.values() for T, _ in c})
    lines = ["| method | " + " | ".join(f"T={T}" for T in steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for method, curve in curves.items():
        by_t = dict(curve)
        lines.append(
            f"| {method} | " + " | ".join(f"{by_t[T]:.1f}" if T in by_t else "" for T in steps) + " |"
        )
    return lines


def extra_table(data: dict[str, Any]) -> list[str]:
    """Remedy experiments (phase 'extra'), if any."""
    rows = [r for r in data["rows"] if r.get("phase") == "extra"]
    if not rows:
        return []
    lines = [
        "| configuration | T | seed | val acc % | test acc % | flip events per weight | changed sign |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["key"]):
        flips = f"{r['flip_events_per_weight']:.3f}" if "flip_events_per_weight" in r else ""
        changed = f"{_pct(r['changed_sign_fraction'])} %" if "changed_sign_fraction" in r else ""
        lines.append(
            f"| `{r['key']}` | {r['T']} | {r['seed']} | {_pct(r['val_acc'])} | {_pct(r['test_acc'])} | {flips} | {changed} |"
        )
    return lines


# ---------------------------------------------------------------------------- plots
def plots(data: dict[str, Any], img_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    curves = memory_curves(data)
    if curves:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, curve in curves.items():
            ax.plot([t for t, _ in curve], [m for _, m in curve], "o-", label=method)
        steps = sorted({t for c in curves.values() for t, _ in c})
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_ylim(bottom=0)
        ax.set(
            xlabel="time steps T",
            ylabel="peak training memory (MiB)",
            title=f"Figure 4 analogue (batch {data['settings']['memory_batch']}, CPU)",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        written["memory"] = _save(fig, img_dir / "reproduce_memory_vs_T.png")
    cells = _grid(data)
    if any(m in ("bso", "tbso") for m, _ in cells):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, style in (("tbso", "o-"), ("bso", "s-"), ("frozen", "x:"), ("fp-bptt", "d--")):
            pts = sorted((T, rows) for (m, T), rows in cells.items() if m == method)
            if not pts:
                continue
            ax.plot(
                [T for T, _ in pts], [100 * _mean(rows, "test_acc") for _, rows in pts], style, label=method
            )
            for T, rows in pts:
                ax.scatter([T] * len(rows), [100 * r["test_acc"] for r in rows], s=8, color="gray", zorder=3)
        ax.set(xlabel="time steps T", ylabel="test accuracy %", title="Figure 5 analogue: T-BSO vs BSO")
        ax.set_xticks(data["settings"]["steps"])
        ax.grid(alpha=0.3)
        ax.legend()
        written["tbso_vs_bso"] = _save(fig, img_dir / "reproduce_tbso_vs_bso.png")
    sweep = [r for r in data["rows"] if r.get("phase") == "sweep"]
    if sweep:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method, style in (("tbso", "o-"), ("bso", "s-")):
            rows = sorted((r for r in sweep if r["method"] == method), key=lambda r: r["gamma"])
            if rows:
                ax.plot(
                    [r["gamma"] for r in rows],
                    [100 * r["val_acc"] for r in rows],
                    style,
                    label=f"{method} (val)",
                )
        frozen = [
            r
            for r in data["rows"]
            if r.get("phase") == "grid" and r["method"] == "frozen" and r["T"] == data["settings"]["sweep_T"]
        ]
        if frozen:
            ax.axhline(100 * _mean(frozen, "val_acc"), color="gray", ls=":", label="frozen (val)")
        ax.set_xscale("log")
        ax.set(
            xlabel="gamma",
            ylabel="validation accuracy %",
            title=f"Table 3 analogue: gamma (T={data['settings']['sweep_T']})",
        )
        ax.grid(alpha=0.3)
        ax.legend()
        written["gamma"] = _save(fig, img_dir / "reproduce_gamma.png")
    plt.close("all")
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------- page
def markdown(data: dict[str, Any], images: dict[str, Path], doc: Path, results_path: Path) -> str:
    s = data["settings"]
    inv = data["invocations"]
    wall = sum(i.get("wall_s", 0) for i in inv)
    rel = {k: os.path.relpath(v, doc.parent) for k, v in images.items()}
    try:
        results_name = results_path.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        results_name = results_path
    out = [
        BEGIN,
        "",
        f"*Generated by `benchmarks/reproduce_report.py` from `{results_name}` "
        f"({len(data['rows'])} rows, {len(inv)} invocation(s), {wall / 60:.0f} min of wall time in all).*",
        "",
        f"Settings: {s['n_train']:,} training images, {s['n_val']:,} validation images (held out of the training set), "
        f"{s['n_test']:,} test images; {s['epochs']} epoch(s), batch {s['batch']}; T = {s['steps']}; seeds {s['seeds']}. "
        f"gamma chosen on validation accuracy at T={s['sweep_T']}, seed 0, trained on {s['sweep_n_train']:,} images: "
        f"{data.get('selected_gamma') or 'sweep not finished'}.",
        "",
    ]
    if inv:
        m = inv[-1]["machine"]
        out += [
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, torch {m['torch']}, "
            "one thread per job. Invocations (each resumes the file; the rows say which git commit ran them):",
            "",
            *(
                f"- `{i['command']}` at git `{i['git'][:12]}`, started {i['started']}, "
                f"{i.get('wall_s', 0) / 60:.1f} min, {i['jobs']} job(s) in parallel"
                + (f" ({i['note']})" if "note" in i else "")
                for i in inv
            ),
            "",
        ]
    out += ["### Claims", "", *claims(data), "", "### Table 2 analogue", "", *table2(data), ""]
    if "tbso_vs_bso" in rel:
        out += [
            "### Figure 5 analogue: T-BSO vs BSO across T",
            "",
            f"![T-BSO vs BSO]({rel['tbso_vs_bso']})",
            "",
        ]
    for method in ("tbso", "bso"):
        t = sweep_table(data, method)
        if t:
            title = (
                f"{method} against gamma (T={s['sweep_T']}, seed 0, {s['sweep_n_train']:,} training images)"
            )
            out += [f"### Table 3 analogue: {title}", "", *t, ""]
    if "gamma" in rel:
        out += [f"![gamma sensitivity]({rel['gamma']})", ""]
    if memory_table(data):
        out += [
            f"### Figure 4 analogue: peak training memory (MiB) against T, batch {s['memory_batch']}",
            "",
            *memory_table(data),
            "",
        ]
        out += [f"![memory vs T]({rel['memory']})", ""]
    out += ["### Flip statistics of the Table 2 rows", "", *flip_table(data), ""]
    if extra_table(data):
        out += ["### Remedy experiments", "", *extra_table(data), ""]
    out.append(END)
    return "\n".join(out) + "\n"


def write(data: dict[str, Any], doc: Path, img_dir: Path, results_path: Path) -> None:
    images = plots(data, img_dir)
    block = markdown(data, images, doc, results_path)
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1 :]
    else:
        text = (text + "\n" if text else "") + block
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"wrote {doc} and {len(images)} plot(s) in {img_dir}")
