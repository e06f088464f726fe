"""Side-by-side table and plot of parity runs (run_authors.py, run_ours.py outputs).

Files are named ``<head>-<setting>-<side>-<seed>.json`` (side: ``theirs``, ``ours``, or any other
label, e.g. ``ours_paper``). For each head and setting the table gives, at every epoch where the
authors' script checks (and where at least one run has a value), the val and test accuracy as
mean ± sd over seeds; then each side's final numbers, and at how many checks the two seed means
differ by at most twice the standard error of their difference. The plot draws the same curves,
one panel a head and setting, the seeds' spread shaded.

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


# Heads whose scripts test one saved model per run (chosen on val), not the model at each check
TESTS_ONE_MODEL = ("avel",)


def tests_one_model(key) -> bool:
    return key[0] in TESTS_ONE_MODEL


def selected_epoch(key, checks: dict) -> int | None:
    """The epoch of the one model AVE-ECCV18 tests, among its val checks (every 5 epochs):
    fully the best (``>``: the first of equal ones), weak the last (its ``best_val_acc`` is
    never updated)."""
    vals = sorted((e, a) for (split, e), a in checks.items() if split == "val" and e % 5 == 0)
    if not vals:
        return None
    return vals[-1][0] if key[1] == "weak" else max(vals, key=lambda ea: (ea[1], -ea[0]))[0]


def final(key, runs: dict) -> list[str]:
    """One row per side: val at the last val check both sides have; test of the model the
    script reports (:func:`selected_epoch`; for scripts that test during training, the last
    test check both sides have)."""
    def common(split):
        eps = None
        for s in runs:
            e = {e for c in runs[s].values() for (sp, e) in c if sp == split}
            eps = e if eps is None else eps & e
        return max(eps) if eps else None
    last_val, last_test = common("val"), common("test")
    rows = []
    for s in side_order(runs):
        val = [c[("val", last_val)] for c in runs[s].values() if ("val", last_val) in c]
        if tests_one_model(key):
            test = [c[("test", e)] for c in runs[s].values()
                    if (e := selected_epoch(key, c)) is not None and ("test", e) in c]
            at = "selected"
        else:
            test = [c[("test", last_test)] for c in runs[s].values() if ("test", last_test) in c]
            at = last_test
        rows.append(f"| {key[0]} | {key[1]} | {s} | {max(len(val), len(test))} | {_or_dash(last_val)} | "
                    f"{stat(val)} | {_or_dash(at)} | {stat(test)} |")
    return rows


def _or_dash(value) -> str:
    return "–" if value is None else str(value)


def verdict(key, runs: dict) -> str:
    """At every check both sides have (AVEL: its val checks; its script tests one model only),
    the difference of the seed means, ours minus theirs, against twice its standard error
    (``2 * sqrt(sd_theirs² / n_theirs + sd_ours² / n_ours)``): within it, the two sides cannot be
    told apart with these seeds. Returns a table row listing the checks outside."""
    if "theirs" not in runs or "ours" not in runs:
        return ""
    inside, total, out = 0, 0, []
    points = sorted({k for c in runs["theirs"].values() for k in c}
                    & {k for c in runs["ours"].values() for k in c}, key=lambda k: (k[1], k[0]))
    if tests_one_model(key):
        points = [k for k in points if k[0] == "val"]
    for k in points:
        theirs = [c[k] for c in runs["theirs"].values() if k in c]
        ours = [c[k] for c in runs["ours"].values() if k in c]
        if len(theirs) < 2 or len(ours) < 2:
            continue
        total += 1
        diff = statistics.mean(ours) - statistics.mean(theirs)
        se = (statistics.variance(theirs) / len(theirs) + statistics.variance(ours) / len(ours)) ** 0.5
        if abs(diff) <= 2 * se:
            inside += 1
        else:
            out.append(f"{k[0]} {k[1]}: {diff:+.3f} (2 SE {2 * se:.3f})")
    return f"| {key[0]} | {key[1]} | {inside} of {total} | " + ("; ".join(out) if out else "–") + " |"


def plot(data: dict, path: Path, ceilings: dict | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    import numpy as np
    keys = sorted(data)
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.axis("off")
    colors = {"theirs": "tab:red", "ours": "tab:blue", "ours_paper": "tab:green"}
    for ax, key in zip(axes.flat, keys):
        for side in side_order(data[key]):
            for split, style in (("val", "-"), ("test", "--")):
                epochs = sorted({e for c in data[key][side].values() for (sp, e) in c if sp == split})
                if not epochs:
                    continue
                vals = [[c[(split, e)] for c in data[key][side].values() if (split, e) in c]
                        for e in epochs]
                if tests_one_model(key) and side == "theirs" and split == "test":
                    # the one model each run tests, at the epoch its val check chose: points
                    ax.scatter([e for e, v in zip(epochs, vals) for _ in v], [a for v in vals for a in v],
                               marker="x", color=colors.get(side), label=f"{side} test (tested model)")
                    continue
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    parts.append("| head | setting | side | seeds | val epoch | val | test epoch | test |\n"
                 "|---|---|---|---|---|---|---|---|\n"
                 + "\n".join(r for k in sorted(data) for r in final(k, data[k])))
    parts.append("Checks where the seed means differ by at most twice the standard error of "
                 "their difference (ours minus theirs otherwise):\n\n"
                 "| head | setting | within | outside |\n|---|---|---|---|\n"
                 + "\n".join(v for k in sorted(data) if (v := verdict(k, data[k]))))
    text = "\n\n".join(parts) + "\n"
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.png:
        stats = json.loads(args.stats.read_text()) if args.stats else {}
        plot(data, args.png, {k.replace(" (test)", ""): v for k, v in stats.items() if "ceiling" in k})


if __name__ == "__main__":
    main()
