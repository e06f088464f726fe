"""Side-by-side table and plot of parity runs (run_authors.py, run_ours.py outputs).

Files are named ``<head>-<setting>-<side>-<seed>.json`` (side: ``theirs``, ``ours``, or any other
label, e.g. ``ours_paper``). For each head and setting the table gives, at every epoch where the
authors' script checks (and where at least one run has a value), the val and test accuracy as
mean ± sd over seeds, and the last check's numbers; the plot draws the same curves, one panel a
head and setting, the seeds' spread shaded.

    python benchmarks/parity/report.py RUNS_DIR --md parity.md --png docs/parity.png \
        --stats SET/stats.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

SIDES = ("theirs", "ours", "ours_paper")  # column order (others follow)


def load(runs: Path) -> dict:
    """``{(head, setting): {side: {seed: {(split, epoch): accuracy}}}}``."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for path in sorted(runs.glob("*.json")):
        head, setting, side, seed = path.stem.split("-", 3)
        checks = json.loads(path.read_text())["checks"]
        out[(head, setting)][side][seed] = {(c["split"], c["epoch"]): c["accuracy"] for c in checks}
    return out


def stat(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def side_order(sides) -> list[str]:
    return [s for s in SIDES if s in sides] + sorted(s for s in sides if s not in SIDES)


def table(key, runs: dict) -> str:
    sides = side_order(runs)
    theirs = runs.get("theirs", {})
    epochs = sorted({e for seeds in (theirs or runs[sides[0]]).values() for (_, e) in seeds})
    lines = [f"**{key[0].upper()} {key[1]}** (val / test accuracy, mean ± sd over seeds; "
             f"seeds: " + ", ".join(f"{s} {len(runs[s])}" for s in sides) + "; epochs counted from 0)",
             "",
             "| epoch | " + " | ".join(f"{s} val | {s} test" for s in sides) + " |",
             "|---|" + "---|---|" * len(sides)]
    for e in epochs:
        cells = []
        for s in sides:
            for split in ("val", "test"):
                cells.append(stat([c[(split, e)] for c in runs[s].values() if (split, e) in c]))
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def final(key, runs: dict) -> list[str]:
    """One row per side: the last check both sides have."""
    rows = []
    common = None
    for s in runs:
        eps = {e for c in runs[s].values() for (split, e) in c if split == "test"}
        common = eps if common is None else common & eps
    last = max(common) if common else None
    for s in side_order(runs):
        vals = {split: [c[(split, last)] for c in runs[s].values() if (split, last) in c]
                for split in ("val", "test")}
        rows.append(f"| {key[0]} | {key[1]} | {s} | {last} | {len(runs[s])} | {stat(vals['val'])} | "
                    f"{stat(vals['test'])} |")
    return rows


def plot(data: dict, path: Path, ceilings: dict | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    keys = sorted(data)
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    colors = {"theirs": "tab:red", "ours": "tab:blue", "ours_paper": "tab:green"}
    for ax, key in zip(axes[0], keys):
        for side in side_order(data[key]):
            for split, style in (("val", "-"), ("test", "--")):
                epochs = sorted({e for c in data[key][side].values() for (sp, e) in c if sp == split})
                if not epochs:
                    continue
                vals = [[c[(split, e)] for c in data[key][side].values() if (split, e) in c]
                        for e in epochs]
                mean = np.array([np.mean(v) for v in vals])
                sd = np.array([np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals])
                ax.plot(epochs, mean, style, marker="o" if side == "theirs" else None, ms=4,
                        color=colors.get(side), label=f"{side} {split}")
                ax.fill_between(epochs, mean - sd, mean + sd, color=colors.get(side), alpha=0.15)
        for name, value in (ceilings or {}).items():  # the set's single-modality ceilings
            ax.axhline(value, color="grey", lw=0.8, ls=":")
            ax.annotate(name, (ax.get_xlim()[0], value), fontsize=7, color="grey", va="bottom")
        ax.set_title(f"{key[0].upper()} {key[1]}")
        ax.set_xlabel("epoch (0-based)")
        ax.set_ylabel("segment accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--png", type=Path)
    ap.add_argument("--stats", type=Path, help="the set's stats.json: its ceilings on the plot")
    args = ap.parse_args()
    data = load(args.runs)
    parts = [table(k, data[k]) for k in sorted(data)]
    parts.append("| head | setting | side | epoch | seeds | val | test |\n|---|---|---|---|---|---|---|\n"
                 + "\n".join(r for k in sorted(data) for r in final(k, data[k])))
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.png:
        stats = json.loads(args.stats.read_text()) if args.stats else {}
        plot(data, args.png, {k.replace(" (test)", ""): v for k, v in stats.items() if "ceiling" in k})


if __name__ == "__main__":
    main()
