"""Self-contained HTML pages: evaluation results and localize output (no network needed).

One file, inline CSS, no script; timelines are coloured HTML blocks (one per 1-s segment, the
class name in a tooltip); localize pages play each video with a ``<video>`` element whose
``src`` is the video's path relative to the page. Every text from data (video names, class
names) is escaped.
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Iterable, Optional
from urllib.parse import quote

import numpy as np

from pipeline.runtime import atomic_write_text

# Class colours (tab20's hues), background grey.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
           "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2",
           "#dbdb8d", "#9edae5", "#393b79", "#637939")
BACKGROUND = "#d9d9d9"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;font-size:13px;margin-bottom:16px}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
table.cm td{min-width:26px;text-align:center} table.cm th{font-weight:normal;font-size:11px}
.tl{display:flex;gap:1px;margin:2px 0} .seg{flex:1;height:18px;border-radius:2px;font-size:9px;color:#fff;
overflow:hidden;white-space:nowrap;text-align:center;line-height:18px}
.seg.bg{color:#555} .row{display:grid;grid-template-columns:200px 48px 1fr;align-items:center;gap:6px;font-size:12px}
.row .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap} .tag{color:#888;font-size:11px}
.legend span{display:inline-block;margin:2px 8px 2px 0;font-size:12px} .legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.video{margin:18px 0 28px} .video video{width:100%;max-width:640px;background:#000;display:block}
.video .tlbox{max-width:640px} .err{color:#b00}
.ticks{display:flex;max-width:640px;font-size:9px;color:#888} .ticks span{flex:1}
pre{white-space:pre-wrap;font-size:11px;background:#f8f8f8;padding:8px}
.seg.wrong{box-shadow:inset 0 0 0 2px #b00} .seg.wrong::after{content:"\\2717";color:#b00;font-weight:bold}
.row.head{font-weight:600;color:#444;margin-bottom:4px} .rule{background:#fff8e1;border:1px solid #f0d890;padding:6px 10px;font-size:13px;max-width:900px}
"""


def colour(c: int, background: int) -> str:
    return BACKGROUND if c == background else PALETTE[c % len(PALETTE)]


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def timeline(classes: Iterable[int], labels: list[str], probs: Optional[Iterable[float]] = None,
             truth: Optional[Iterable[int]] = None) -> str:
    """One row of coloured segments; the tooltip names the class (and its probability). With
    ``truth``, a segment whose class differs is framed in red and marked with a cross."""
    bg = len(labels) - 1
    probs = None if probs is None else [float(x) for x in probs]
    truth = None if truth is None else [int(x) for x in truth]
    cells = []
    for t, c in enumerate(classes):
        c = int(c)
        tip = f"{t}-{t + 1} s: {labels[c]}"
        if probs is not None:
            tip += f" ({probs[t]:.2f})"
        wrong = truth is not None and truth[t] != c
        if wrong:
            tip += f"; wrong, truth: {labels[truth[t]]}"
        short = "" if c == bg or wrong else labels[c][:8]
        cls = "seg" + (" bg" if c == bg else "") + (" wrong" if wrong else "")
        cells.append(f'<div class="{cls}" style="background:{colour(c, bg)}" '
                     f'title="{esc(tip)}">{esc(short)}</div>')
    return '<div class="tl">' + "".join(cells) + "</div>"


def legend(labels: list[str]) -> str:
    bg = len(labels) - 1
    return '<div class="legend">' + "".join(
        f'<span><i style="background:{colour(c, bg)}"></i>{esc(n)}</span>'
        for c, n in enumerate(labels)) + "</div>"


def confusion_table(cm: np.ndarray, labels: list[str]) -> str:
    """Counts, shaded by row-normalised share (rows: truth, columns: prediction)."""
    cm = np.asarray(cm)
    head = "".join(f'<th title="{esc(n)}">{esc(n[:10])}</th>' for n in labels)
    body = []
    for i, n in enumerate(labels):
        total = cm[i].sum()
        cells = []
        for j in range(len(labels)):
            share = cm[i, j] / total if total else 0.0
            fg = "#fff" if share > 0.55 else "#222"
            cells.append(f'<td style="background:rgba(31,119,180,{share:.3f});color:{fg}">'
                         f'{int(cm[i, j]) or ""}</td>')
        body.append(f'<tr><th class="l">{esc(n)}</th>{"".join(cells)}</tr>')
    return (f'<table class="cm"><tr><th class="l">true \\ predicted</th>{head}</tr>'
            f'{"".join(body)}</table>')


def key_values(rows: Iterable[tuple[str, Any]], columns: tuple[str, str] = ("metric", "value")) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.4f}"
        return esc(v)
    return (f'<table><tr><th class="l">{esc(columns[0])}</th><th>{esc(columns[1])}</th></tr>' + "".join(f'<tr><th class="l">{esc(k)}</th><td>{fmt(v)}</td></tr>'
                                for k, v in rows) + "</table>")


def page(title: str, subtitle: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f'<h1>{esc(title)}</h1><div class="sub">{esc(subtitle)}</div>{body}</body></html>\n')


# ------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------
def write_evaluation_page(path: str | Path, res: dict[str, Any], pred: np.ndarray, true: np.ndarray,
                          videos: list[str]) -> Path:
    """Results, per-class accuracy, confusion matrix and every video's truth/prediction rows."""
    labels = list(res["labels"])
    rows = [("accuracy", res["accuracy"])]
    rows += [(f"event {k}", v) for k, v in res.get("event", {}).items()]
    rows += [(f"cross-modal {k}", v) for k, v in res.get("cross_modal", {}).items()]
    rows += [(k.replace("_", " "), res[k]) for k in ("videos", "excluded", "segments", "best_epoch",
                                                     "val_accuracy", "num_parameters", "train_seconds")
             if k in res]
    body = []
    if res.get("prediction_rule"):
        body.append(f'<p class="rule"><b>Prediction rule</b> (not a per-segment argmax): '
                    f'{esc(res["prediction_rule"])}</p>')
    body += ["<h2>Results</h2>", key_values(rows)]
    if res.get("per_class"):
        body += ["<h2>Per-class accuracy</h2>",
                 key_values(res["per_class"].items(), ("class", "segment accuracy"))]
    body += ["<h2>Confusion matrix</h2><p class=\"sub\">segments; rows: truth, columns: prediction</p>",
             confusion_table(np.asarray(res["confusion"]), labels)]
    body += [f"<h2>Timelines ({len(videos)} videos)</h2>", legend(labels),
             '<p class="sub">Each video: truth above, prediction below, one block per 1-s segment; '
             'a wrong segment is framed in red and marked \u2717. Hover a block for its class.</p>',
             '<div class="row head"><div>video</div><div>correct</div>'
             '<div>truth / prediction, segments 0-1 s \u2026 9-10 s</div></div>']
    for vid, p, t in zip(videos, pred, true):
        acc = float((np.asarray(p) == np.asarray(t)).mean())
        body.append(f'<div class="row"><div class="name" title="{esc(vid)}">{esc(vid)}</div>'
                    f'<div class="tag">{acc:.0%}</div><div>{timeline(t, labels)}'
                    f'{timeline(p, labels, truth=t)}</div></div>')
    title = f"{res['head']} ({res['setting']}) on {res['split']}"
    sub = f"accuracy {res['accuracy']:.4f}; {res.get('videos', len(videos))} videos"
    path = Path(path)
    atomic_write_text(path, page(title, sub, "\n".join(body)))
    return path


# ------------------------------------------------------------------------------------------
# Localize
# ------------------------------------------------------------------------------------------
def write_localize_page(path: str | Path, results: list[dict[str, Any]], categories: list[str],
                        model: str) -> Path:
    """Each video playable (``src`` relative to the page) with its predicted timeline below."""
    labels = list(categories) + ["background"]
    body = [legend(labels)]
    for r in results:
        src = quote(Path(r["src"]).as_posix())
        parts = [f'<div class="video"><h2>{esc(r["video"])}</h2>']
        if "error" in r:
            parts.append(f'<p class="err">not processed: {esc(r["error"])}</p></div>')
            body.append("".join(parts))
            continue
        segs = r["segments"]
        events = ", ".join(f"{e['class']} {e['start']:g}–{e['end']:g} s" for e in r["events"]) or "no event"
        parts.append(f'<video controls preload="metadata" src="{esc(src)}"></video>')
        parts.append('<div class="tlbox">' + timeline([s["class_index"] for s in segs], labels,
                                                      [s["probability"] for s in segs]) + "</div>")
        parts.append('<div class="ticks">' + "".join(f"<span>{s['index']}</span>" for s in segs) + "</div>")
        audio = "" if r["audio"] else "; no audio track (silence used)"
        parts.append(f'<p class="sub">{r["duration"]:.1f} s, {r["num_segments"]} segments, windows '
                     f'at {esc(r["windows"])} s{esc(audio)}. Events: {esc(events)}</p></div>')
        body.append("".join(parts))
    path = Path(path)
    atomic_write_text(path, page("Localized events", f"model {model}; {len(results)} videos",
                                 "\n".join(body)))
    return path


# ------------------------------------------------------------------------------------------
# Results table
# ------------------------------------------------------------------------------------------
SERIES = (("accuracy", "ours, val", "#1f77b4"), ("accuracy_test_selected", "ours, test", "#ff7f0e"),
          ("paper_accuracy", "paper", "#7f7f7f"))  # (row key, legend, colour) of each bar


def bar_chart(rows: list[dict[str, Any]]) -> str:
    """Inline SVG: one group of horizontal bars a head (ours val-selected, ours test-selected,
    the paper), 0-100 %, ours with their 95% interval as error bars."""
    bar, gap, label_w, plot_w = 9, 8, 110, 520
    group = len(SERIES) * bar + gap
    height = 24 + group * len(rows)
    x = lambda v: label_w + plot_w * max(0.0, min(float(v), 100.0)) / 100  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 70}" '
             f'height="{height}" role="img" font-size="11" font-family="sans-serif">']
    for tick in range(0, 101, 20):
        parts.append(f'<line x1="{x(tick):.1f}" y1="14" x2="{x(tick):.1f}" y2="{height}" '
                     f'stroke="#e4e4e4"/><text x="{x(tick):.1f}" y="10" text-anchor="middle" '
                     f'fill="#888">{tick}</text>')
    for i, r in enumerate(rows):
        y0 = 18 + i * group
        parts.append(f'<text x="{label_w - 6}" y="{y0 + len(SERIES) * bar / 2 + 4:.1f}" '
                     f'text-anchor="end">{esc(r["head"])}</text>')
        for j, (key, name, fill) in enumerate(SERIES):
            v, y = r.get(key), y0 + j * bar
            if v is None:
                continue
            tip = f"{r['head']} {r['setting']} {name}: {v:.1f}"
            parts.append(f'<rect x="{label_w}" y="{y}" width="{x(v) - label_w:.1f}" '
                         f'height="{bar - 1}" fill="{fill}"><title>{esc(tip)}</title></rect>')
            ci, text_x = r.get(f"{key}_ci95"), x(v)
            if ci:
                lo, hi, mid = x(ci[0]), x(ci[1]), y + (bar - 1) / 2
                parts.append(f'<path d="M{lo:.1f} {mid:.1f}H{hi:.1f}M{lo:.1f} {y + 1}V{y + bar - 2}'
                             f'M{hi:.1f} {y + 1}V{y + bar - 2}" stroke="#222" fill="none"/>')
                text_x = max(text_x, hi)
            parts.append(f'<text x="{text_x + 4:.1f}" y="{y + bar - 1}" fill="#444" '
                         f'font-size="9">{v:.1f}</text>')
    return "".join(parts) + "</svg>"


def write_results_page(path: str | Path, rows: list[dict[str, Any]], table_md: str) -> Path:
    """The results table (one per setting, ours as ``mean ± sd [lo, hi]``), a bar chart with
    error bars beside the papers' numbers, and the head-vs-next-best differences."""
    # imported here: report imports this module (write_results_page) at call time too
    from pipeline.evaluation.report import fmt_accuracy, fmt_difference

    legend_html = '<div class="legend">' + "".join(
        f'<span><i style="background:{c}"></i>{esc(n)}</span>' for _, n, c in SERIES) + "</div>"
    body = ['<p class="sub">Test segment accuracy (%; cml: the mean of A2V and V2A). Ours: mean '
            '± sd across seeds [95% bootstrap interval over test videos, the seeds\' predictions '
            'pooled]; val = the best val epoch\'s checkpoint, test = the checkpoint the head\'s '
            'released script reports.</p>']
    for setting in dict.fromkeys(r["setting"] for r in rows):
        defined = [r for r in rows if r["setting"] == setting
                   and (r.get("accuracy") is not None or r.get("paper_accuracy") is not None)]
        if not defined:
            continue
        head_cells = "".join(f"<th>{esc(n)}</th>" for n in (
            "ours, val", "ours, test", "paper", "seeds", "params", "train s", "vs next (val)",
            "vs next (test)"))
        lines = []
        for r in defined:
            vs = r.get("vs_next") or {}
            cells = [fmt_accuracy(r, "accuracy"), fmt_accuracy(r, "accuracy_test_selected"),
                     "–" if r.get("paper_accuracy") is None else f"{r['paper_accuracy']:.1f}",
                     ", ".join(str(s) for s in r.get("seeds") or []) or "–",
                     "–" if r.get("params") is None else f"{r['params']:,}",
                     "–" if r.get("train_seconds") is None else f"{r['train_seconds']:.0f}",
                     fmt_difference(vs.get("val")), fmt_difference(vs.get("test"))]
            lines.append(f'<tr><td class="l">{esc(r["head"])}</td>'
                         + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>")
        body += [f"<h2>{esc(setting)}</h2>",
                 f'<table><tr><th class="l">head</th>{head_cells}</tr>{"".join(lines)}</table>',
                 legend_html, f'<div class="chart">{bar_chart(defined)}</div>']
    undefined = [f"{r['head']} ({r['setting']})" for r in rows
                 if r.get("accuracy") is None and r.get("paper_accuracy") is None]
    if undefined:
        body.append(f'<p class="sub">No result: {esc(", ".join(undefined))}.</p>')
    body += ["<h2>results.md (with the cml table and the sources)</h2>", f"<pre>{esc(table_md)}</pre>"]
    path = Path(path)
    atomic_write_text(path, page("AVE localization results",
                                 f"{len(rows)} heads × settings; per head and setting, one run a seed",
                                 "\n".join(body)))
    return path
