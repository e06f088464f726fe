"""Results table over heads x settings, with the papers' reported numbers beside ours.

Each report-matrix cell writes one row (``cell_row``); ``write_table`` gathers them into
``results.json`` (a list of rows) and ``results.md``. Row keys (``ROW_KEYS``):
``head, setting, visual, audio, accuracy, params, train_seconds, paper_accuracy`` plus
``accuracy_test_selected`` and ``selection`` (the released script's rule), ``paper_params``,
``paper_source`` and ``note`` (e.g. 'not defined by the paper'); ``cml`` rows (M2N's
cross-modality localization on the cml split, accuracy = mean of A2V and V2A) add
``cross_modal``, ``cross_modal_test_selected``, ``paper_cross_modal`` (``{"a2v", "v2a"}``),
``videos``, ``cml_excluded`` (``{"full_length", "no_event"}``, test videos left out) and
``cml_excluded_by_split`` (the same per split: train and val from the training run).

A head x setting runs once per seed of ``report.seeds`` (``seed_runs_row`` pools them): ``seeds``
lists the seeds the runs used; ``accuracy`` and ``accuracy_test_selected`` are the means over
seeds, ``*_sd`` their standard deviation across seeds (``null`` with one seed), ``*_by_seed``
each run's value and ``*_ci95`` ``[lo, hi]``: the 95% bootstrap interval over test videos with
the seeds' per-video scores pooled (:mod:`pipeline.evaluation.intervals`). ``vs_next``
(``compare_heads``) holds, per protocol (``val``, ``test``), the next best head of the same
setting, the paired difference to it and its 95% interval, on the same test videos.

``accuracy`` is ours with the val-selected checkpoint (``best_val.pt``),
``accuracy_test_selected`` ours with the checkpoint the head's released script would report
(``best_test.pt``: its schedule of checks on the test split, :mod:`pipeline.training.selection`),
the protocol behind the papers' numbers. Accuracies are percentages (as the papers' tables);
``null`` where not available.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from pipeline import layout, settings
from pipeline.evaluation.intervals import bootstrap_ci, paired_bootstrap
from pipeline.heads import get_head_class, reported
from pipeline.runtime import atomic_write_json, atomic_write_text

ROW_KEYS = ("head", "setting", "visual", "audio", "accuracy", "params", "train_seconds",
            "paper_accuracy")

NOT_DEFINED = "not defined by the paper"
EMPTY_TABLE = """# AVE localization results

No cell: `report.heads` (or `report.settings`) is empty in params.yaml, as in the default run.
Give it heads to fill this table, e.g. `dvc exp run -S 'report.heads=[psp,cmbs]'`.
"""


def paper_accuracy(head: str, setting: str) -> tuple[Optional[float], Optional[str]]:
    """The paper's reported test accuracy (%) and where it is printed (``Head.REPORTED``)."""
    rep = reported(head, setting)
    return (rep.accuracy, rep.source) if rep else (None, None)


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else round(100 * x, 2)


def cell_row(head: str, setting: str, visual: str, audio: str,
             result: Optional[dict[str, Any]], note: str = "",
             result_test_selected: Optional[dict[str, Any]] = None,
             selection: str = "") -> dict[str, Any]:
    """One table row from ``evaluate`` outputs of the val-selected (``result``) and the
    test-selected (``result_test_selected``) checkpoints (``None`` = not run, with ``note``)."""
    acc, src = paper_accuracy(head, setting)
    kind = settings.get(setting)
    pm = get_head_class(head).REPORTED_PARAMS_M if kind.paper_params else None
    ts = result_test_selected
    row = {"head": head, "setting": setting, "visual": visual, "audio": audio,
           "accuracy": _pct(result["accuracy"]) if result else None,
           "accuracy_test_selected": _pct(ts["accuracy"]) if ts else None,
           "selection": selection,
           "params": int(result["num_parameters"]) if result else None,
           "train_seconds": round(float(result["train_seconds"]), 2) if result else None,
           "paper_accuracy": acc, "paper_params": int(pm * 1e6) if pm else None,
           "paper_source": src, "note": note}
    row.update(kind.table_row(result, ts, reported(head, setting)))
    return row


# Accuracy keys of a row and the evaluation (checkpoint selection protocol) behind each.
ACCURACY_KEYS = {"accuracy": "val", "accuracy_test_selected": "test"}


def _mean_sd(values: list[float]) -> tuple[float, Optional[float]]:
    v = np.asarray(values, dtype=np.float64)
    return round(float(v.mean()), 2), (round(float(v.std(ddof=1)), 2) if len(v) > 1 else None)


def _videos(scores: dict[str, Any]) -> list:
    """A per-video file's video keys: annotation rows (a video id can have two lines)."""
    return list(scores["rows"] if "rows" in scores else scores["videos"])


def _aligned(scores: list[dict[str, Any]], what: str) -> tuple[list, np.ndarray]:
    """(video keys, (runs, videos) scores) of per-video files that must list the same videos."""
    videos = _videos(scores[0])
    for s in scores[1:]:
        if _videos(s) != videos:
            raise ValueError(f"{what}: the runs were evaluated on different videos")
    return videos, np.asarray([s["score"] for s in scores], dtype=np.float64)


def seed_runs_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the runs of one head x setting, one per seed: each run is
    ``{"row": cell_row(...) + {"seed": int}, "scores": {protocol: per_video.json}}`` (no scores
    for a setting the paper does not define). See the module doc for the keys added."""
    if not runs:
        raise ValueError("no runs to pool")
    first = runs[0]["row"]
    what = f"{first['head']}/{first['setting']}"
    row = {**first, "seeds": [r["row"].get("seed") for r in runs]}
    row.pop("seed", None)
    for key, protocol in ACCURACY_KEYS.items():
        values = [r["row"].get(key) for r in runs]
        row.update({f"{key}_sd": None, f"{key}_ci95": None, f"{key}_by_seed": values})
        if any(v is None for v in values):
            row[key] = None
            continue
        row[key], row[f"{key}_sd"] = _mean_sd(values)
        scores = [r.get("scores", {}).get(protocol) for r in runs]
        if all(scores):
            lo, hi = bootstrap_ci(_aligned(scores, what)[1])
            row[f"{key}_ci95"] = [round(100 * lo, 2), round(100 * hi, 2)]
    if all(r["row"].get("train_seconds") is not None for r in runs):
        row["train_seconds"] = round(float(np.mean([r["row"]["train_seconds"] for r in runs])), 2)
    for key in ("cross_modal", "cross_modal_test_selected"):
        parts = [r["row"].get(key) for r in runs]
        if parts and all(parts):
            row[key] = {d: round(float(np.mean([p[d] for p in parts])), 2) for d in parts[0]}
    return row


def compare_heads(rows: list[dict[str, Any]], runs: dict[tuple[str, str], list[dict[str, Any]]]
                  ) -> None:
    """Set ``row["vs_next"][protocol]`` of each head that has a next best head in its setting
    (heads ranked by mean accuracy of that protocol): ``{"head", "difference", "ci95"}`` in
    percentage points, from a paired bootstrap over the test videos both were evaluated on."""
    for row in rows:
        row["vs_next"] = {}
    for setting in dict.fromkeys(r["setting"] for r in rows):
        for key, protocol in ACCURACY_KEYS.items():
            ranked = sorted((r for r in rows if r["setting"] == setting and r.get(key) is not None
                             and all(x.get("scores", {}).get(protocol)
                                     for x in runs.get((r["head"], setting), [{}]))),
                            key=lambda r: -r[key])
            for a, b in zip(ranked, ranked[1:]):
                va, sa = _aligned([x["scores"][protocol] for x in runs[(a["head"], setting)]],
                                  f"{a['head']}/{setting}")
                vb, sb = _aligned([x["scores"][protocol] for x in runs[(b["head"], setting)]],
                                  f"{b['head']}/{setting}")
                common = [v for v in va if v in set(vb)]
                if not common:
                    continue
                ia, ib = {v: i for i, v in enumerate(va)}, {v: i for i, v in enumerate(vb)}
                diff, (lo, hi) = paired_bootstrap(sa[:, [ia[v] for v in common]],
                                                  sb[:, [ib[v] for v in common]])
                a["vs_next"][protocol] = {"head": b["head"], "difference": round(100 * diff, 2),
                                          "ci95": [round(100 * lo, 2), round(100 * hi, 2)],
                                          "videos": len(common)}


def _fmt(v, spec: str = "") -> str:
    return "–" if v is None else format(v, spec)


def fmt_accuracy(row: dict[str, Any], key: str) -> str:
    """``mean ± sd [lo, hi]`` (sd with several seeds, the interval where computed)."""
    if row.get(key) is None:
        return "–"
    text = f"{row[key]:.1f}"
    if row.get(f"{key}_sd") is not None:
        text += f" ± {row[f'{key}_sd']:.1f}"
    if row.get(f"{key}_ci95"):
        lo, hi = row[f"{key}_ci95"]
        text += f" [{lo:.1f}, {hi:.1f}]"
    return text


def _seeds(row: dict[str, Any]) -> str:
    return ", ".join(str(s) for s in row.get("seeds") or []) or "–"


def markdown(rows: list[dict[str, Any]]) -> str:
    """Papers' layout: one line a head, fully and weak side by side; then M2N Table 1's layout
    (A2V, V2A, average) for the heads with a cml row."""
    segment = [n for n in settings.names() if settings.get(n).table == "segment"]
    heads = list(dict.fromkeys(r["head"] for r in rows if r["setting"] in segment))
    by = {(r["head"], r["setting"]): r for r in rows}
    feats = sorted({f"{r['visual']} + {r['audio']}" for r in rows})
    both = " / ".join(segment)
    out = ["# AVE localization results (test segment accuracy, %)", "",
           f"Features: {', '.join(feats)}. Paper numbers: VGG-19 + VGG-like (VGGish) rows of the "
           "papers' tables. Ours, val: the checkpoint of the best val epoch (our protocol). "
           "Ours, test: the checkpoint the head's released training script reports (its "
           "schedule of checks on the test split; AVEL's selects on val every 5 epochs), the "
           "protocol behind the papers' numbers. Params: trainable parameters of our head "
           f"({both} where they differ; the paper's where reported). "
           "Time: our training wall time (mean over seeds). Ours: mean ± sd across seeds "
           "[95% bootstrap interval over test videos, the seeds' predictions pooled].", "",
           "| head | " + "".join(f"{s} (ours, val) | {s} (ours, test) | {s} (paper) | "
                                  for s in segment)
           + f"params (ours) | params (paper) | train s ({both}) | notes | seeds ({both}) |",
           "|---|" + "---:|" * (3 * len(segment) + 3) + "---|---|"]
    for h in heads:
        cells = [by.get((h, s), {}) for s in segment]
        ps = [r.get("params") for r in cells if r.get("params") is not None]
        params = " / ".join(f"{x:,}" for x in dict.fromkeys(ps)) if ps else None
        paper_params = next((r["paper_params"] for r in cells if r.get("paper_params")), None)
        notes = "; ".join(f"{s}: {r['note']}" for s, r in zip(segment, cells)
                          if r and r.get("note"))
        out.append(f"| {h} | " + "".join(
            f"{fmt_accuracy(r, 'accuracy')} | {fmt_accuracy(r, 'accuracy_test_selected')} "
            f"| {_fmt(r.get('paper_accuracy'), '.1f')} | " for r in cells)
            + f"{_fmt(params)} | {_fmt(paper_params, ',')} "
            f"| {' / '.join(_fmt(r.get('train_seconds'), '.0f') for r in cells)} "
            f"| {notes} | {' / '.join(_seeds(r) for r in cells)} |")
    out += _comparison_markdown(rows)
    out += _cross_modal_markdown([r for r in rows if settings.get(r["setting"]).table == "cross_modal"])
    sources = sorted({r["paper_source"] for r in rows if r.get("paper_source")})
    out += ["", "Sources: " + "; ".join(sources) + "; params: VSCG Table II.", ""]
    return "\n".join(out)


def fmt_difference(vs: Optional[dict[str, Any]]) -> str:
    """``next: +d [lo, hi]`` of a ``vs_next`` entry, '(real)' when the interval excludes 0."""
    if not vs:
        return "–"
    lo, hi = vs["ci95"]
    real = " (real)" if lo > 0 or hi < 0 else ""
    return f"{vs['head']}: {vs['difference']:+.1f} [{lo:+.1f}, {hi:+.1f}]{real}"


def _comparison_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Each head against the next best head of its setting (``vs_next``)."""
    compared = [r for r in rows if r.get("vs_next")]
    if not compared:
        return []
    out = ["", "## Each head against the next best in its setting (test accuracy, points)", "",
           "Paired bootstrap over the same test videos (seeds pooled per head): the mean "
           "difference to the head ranked just below, and its 95% interval; '(real)' where the "
           "interval excludes 0. Ranked separately for the val-selected and the test-selected "
           "checkpoints.", "",
           "| setting | head | vs next (ours, val) | vs next (ours, test) |", "|---|---|---|---|"]
    for r in compared:
        out.append(f"| {r['setting']} | {r['head']} | {fmt_difference(r['vs_next'].get('val'))} "
                   f"| {fmt_difference(r['vs_next'].get('test'))} |")
    return out


def _cross_modal_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """M2N Table 1's layout: exact-window-match accuracy per direction and their average."""
    if not rows:
        return []
    defined = [r for r in rows if r.get("note") != NOT_DEFINED]
    out = ["", "## Cross-modality localization (cml split; test accuracy, %, exact window match)",
           "", "A2V: the audio of the event segments is the query, the visual segments are "
           "searched; V2A the converse. Average: their mean (M2N Table 1). Evaluated on the cml "
           "split (the AVE reference code's `*_order_match.h5` partition) without the events "
           "spanning all segments (one possible window: trivially right) or without an event "
           "segment, counted under 'excluded'. Ours, val / test: as in the table above.", ""]
    if defined:
        out += ["| head | test videos | full-length excluded (train / val / test) "
                "| no event (train / val / test) | A2V (ours, val) "
                "| A2V (ours, test) | A2V (paper) | V2A (ours, val) | V2A (ours, test) "
                "| V2A (paper) | average (ours, val) | average (ours, test) | average (paper) "
                "| params (ours) | train s | notes |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in defined:
        xm, pxm = r.get("cross_modal") or {}, r.get("paper_cross_modal") or {}
        xt = r.get("cross_modal_test_selected") or {}
        out.append(f"| {r['head']} | {_fmt(r.get('videos'))} | {_by_split(r, 'full_length')} "
                   f"| {_by_split(r, 'no_event')} "
                   f"| {_fmt(xm.get('a2v'), '.1f')} | {_fmt(xt.get('a2v'), '.1f')} "
                   f"| {_fmt(pxm.get('a2v'), '.1f')} "
                   f"| {_fmt(xm.get('v2a'), '.1f')} | {_fmt(xt.get('v2a'), '.1f')} "
                   f"| {_fmt(pxm.get('v2a'), '.1f')} "
                   f"| {fmt_accuracy(r, 'accuracy')} "
                   f"| {fmt_accuracy(r, 'accuracy_test_selected')} "
                   f"| {_fmt(r.get('paper_accuracy'), '.1f')} "
                   f"| {_fmt(r.get('params'), ',')} | {_fmt(r.get('train_seconds'), '.0f')} "
                   f"| {r.get('note') or ''} |")
    undefined = [r["head"] for r in rows if r.get("note") == NOT_DEFINED]
    if undefined:
        out += ["", f"Not defined by the paper (no cml setting): {', '.join(undefined)}."]
    return out


def _by_split(row: dict[str, Any], reason: str) -> str:
    """'train / val / test' counts of cml rows left out for ``reason`` (– where unknown)."""
    by = row.get("cml_excluded_by_split") or {}
    if "test" not in by and row.get("cml_excluded"):
        by = {**by, "test": row["cml_excluded"]}
    return " / ".join(_fmt((by.get(s) or {}).get(reason)) for s in ("train", "val", "test"))


def write_table(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path, Path]:
    """``results.json`` (the rows), ``results.md`` and ``results.html`` (self-contained: the
    tables and a bar chart with error bars beside the papers' numbers) in ``out_dir``."""
    from pipeline.evaluation.html import write_results_page

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"result row {r.get('head')}/{r.get('setting')} lacks {missing}")
    jp, mp, hp = (out_dir / name for name in layout.RESULTS_FILES)
    md = markdown(rows) if rows else EMPTY_TABLE
    atomic_write_json(jp, rows, indent=1)
    atomic_write_text(mp, md)
    write_results_page(hp, rows, md)
    return jp, mp, hp
