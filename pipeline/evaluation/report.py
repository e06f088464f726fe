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

``accuracy`` is ours with the val-selected checkpoint (``best_val.pt``),
``accuracy_test_selected`` ours with the checkpoint the head's released script would report
(``best_test.pt``: its schedule of checks on the test split, :mod:`pipeline.training.selection`),
the protocol behind the papers' numbers. Accuracies are percentages (as the papers' tables);
``null`` where not available.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pipeline.heads import get_head_class, reported
from pipeline.runtime import atomic_write_json, atomic_write_text

ROW_KEYS = ("head", "setting", "visual", "audio", "accuracy", "params", "train_seconds",
            "paper_accuracy")

NOT_DEFINED = "not defined by the paper"


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
    pm = get_head_class(head).REPORTED_PARAMS_M if setting == "fully" else None
    ts = result_test_selected
    row = {"head": head, "setting": setting, "visual": visual, "audio": audio,
           "accuracy": _pct(result["accuracy"]) if result else None,
           "accuracy_test_selected": _pct(ts["accuracy"]) if ts else None,
           "selection": selection,
           "params": int(result["num_parameters"]) if result else None,
           "train_seconds": round(float(result["train_seconds"]), 2) if result else None,
           "paper_accuracy": acc, "paper_params": int(pm * 1e6) if pm else None,
           "paper_source": src, "note": note}
    if setting == "cml":
        row["cross_modal"] = ({k: _pct(v) for k, v in result["cross_modal"].items()}
                              if result else None)
        row["cross_modal_test_selected"] = ({k: _pct(v) for k, v in ts["cross_modal"].items()}
                                            if ts else None)
        rep = reported(head, setting)
        row["paper_cross_modal"] = dict(rep.per_direction) if rep and rep.per_direction else None
        row["videos"] = int(result["videos"]) if result else None
        row["cml_excluded"] = dict(result["cml_excluded"]) if result else None
        row["cml_excluded_by_split"] = (dict(result.get("cml_excluded_by_split", {}))
                                        if result else None)
    return row


def _fmt(v, spec: str = "") -> str:
    return "–" if v is None else format(v, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Papers' layout: one line a head, fully and weak side by side; then M2N Table 1's layout
    (A2V, V2A, average) for the heads with a cml row."""
    heads = list(dict.fromkeys(r["head"] for r in rows if r["setting"] != "cml"))
    by = {(r["head"], r["setting"]): r for r in rows}
    feats = sorted({f"{r['visual']} + {r['audio']}" for r in rows})
    out = ["# AVE localization results (test segment accuracy, %)", "",
           f"Features: {', '.join(feats)}. Paper numbers: VGG-19 + VGG-like (VGGish) rows of the "
           "papers' tables. Ours, val: the checkpoint of the best val epoch (our protocol). "
           "Ours, test: the checkpoint the head's released training script reports (its "
           "schedule of checks on the test split; AVEL's selects on val every 5 epochs), the "
           "protocol behind the papers' numbers. Params: trainable parameters of our head "
           "(fully / weak where they differ; the paper's where reported). "
           "Time: our training wall time.", "",
           "| head | fully (ours, val) | fully (ours, test) | fully (paper) | weak (ours, val) "
           "| weak (ours, test) | weak (paper) | params (ours) | params (paper) "
           "| train s (fully / weak) | notes |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for h in heads:
        f, w = by.get((h, "fully"), {}), by.get((h, "weak"), {})
        ps = [r.get("params") for r in (f, w) if r.get("params") is not None]
        params = " / ".join(f"{x:,}" for x in dict.fromkeys(ps)) if ps else None
        notes = "; ".join(f"{s}: {r['note']}" for s, r in (("fully", f), ("weak", w))
                          if r and r.get("note"))
        out.append(f"| {h} | {_fmt(f.get('accuracy'), '.1f')} "
                   f"| {_fmt(f.get('accuracy_test_selected'), '.1f')} "
                   f"| {_fmt(f.get('paper_accuracy'), '.1f')} "
                   f"| {_fmt(w.get('accuracy'), '.1f')} "
                   f"| {_fmt(w.get('accuracy_test_selected'), '.1f')} "
                   f"| {_fmt(w.get('paper_accuracy'), '.1f')} "
                   f"| {_fmt(params)} | {_fmt(f.get('paper_params'), ',')} "
                   f"| {_fmt(f.get('train_seconds'), '.0f')} / {_fmt(w.get('train_seconds'), '.0f')} "
                   f"| {notes} |")
    out += _cml_markdown([r for r in rows if r["setting"] == "cml"])
    sources = sorted({r["paper_source"] for r in rows if r.get("paper_source")})
    out += ["", "Sources: " + "; ".join(sources) + "; params: VSCG Table II.", ""]
    return "\n".join(out)


def _cml_markdown(rows: list[dict[str, Any]]) -> list[str]:
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
                   f"| {_fmt(r.get('accuracy'), '.1f')} "
                   f"| {_fmt(r.get('accuracy_test_selected'), '.1f')} "
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


def write_table(rows: list[dict[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"result row {r.get('head')}/{r.get('setting')} lacks {missing}")
    jp, mp = out_dir / "results.json", out_dir / "results.md"
    atomic_write_json(jp, rows, indent=1)
    atomic_write_text(mp, markdown(rows))
    return jp, mp
