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
