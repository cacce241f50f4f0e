"""Which output of a candidate is which output of its reference, and what each output lost.

Outputs are paired by name (:mod:`workbench.runtimes.pairing`).

Range loss: one SQNR or cosine over a whole output is dominated by its largest values. A
detector output that concatenates box coordinates (0-320) and sigmoid scores (0-1) shares one
int8 scale, every score rounds to 0, and the output still shows SQNR 35 dB and cosine 0.9999.
So each slice along the last axis (a channel, a column) is measured on its own: its range in
both models and how many distinct levels the candidate keeps of those an 8-bit grid over the
slice's own reference range would keep. A slice that varies in the reference but is constant
in the candidate (collapsed), or keeps fewer than an eighth of those levels (coarse), is named
in a warning.
"""

from __future__ import annotations

import numpy as np

VARIES = 1e-4  # a slice varies when its reference range exceeds this fraction of the output's largest magnitude
FLAT = 1e-6  # ... and this absolute amount
GRID = 255  # the reference range is measured on an 8-bit grid over the slice's own range
COARSE = 0.125  # a slice keeping fewer than this fraction of its grid levels (3 of 8 bits lost) has lost most of them
MIN_LEVELS = 16  # ... judged only when the reference fills at least this many levels (enough samples)
PER_CHANNEL_LIMIT = 32  # every channel is listed up to this many; beyond, the flagged ones only
MAX_ROWS = 200_000  # values per slice used for the range statistics (evenly strided beyond)


def _distinct(a: np.ndarray) -> np.ndarray:
    """Distinct values per column of a (rows, C) array."""
    s = np.sort(a, axis=0)
    return (np.diff(s, axis=0) != 0).sum(axis=0) + 1


def _sqnr(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    noise = np.sum((ref - cand) ** 2, axis=0)
    signal = np.sum(ref**2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        db = 10 * np.log10(signal / noise)
    db[noise == 0] = np.inf
    db[(noise > 0) & (signal == 0)] = -np.inf
    return db


def range_loss(ref: np.ndarray, cand: np.ndarray) -> dict:
    """Per slice along the last axis: reference and candidate range, 8-bit grid levels of the reference
    range filled by the reference and distinct levels kept by the candidate, SQNR; the collapsed and
    coarse slices (see the module docstring)."""
    ref, cand = np.asarray(ref), np.asarray(cand)
    channels = ref.shape[-1] if ref.ndim > 1 else 1
    r, c = ref.reshape(-1, channels), cand.reshape(-1, channels)
    if len(r) > MAX_ROWS:
        step = -(-len(r) // MAX_ROWS)
        r, c = r[::step], c[::step]
    r, c = r.astype(np.float64), c.astype(np.float64)
    if not r.size:
        return {"axis": -1, "channels": channels, "collapsed": [], "coarse": []}
    lo, hi = r.min(axis=0), r.max(axis=0)
    span = hi - lo
    grid = np.where(span > 0, np.round((r - lo) / np.where(span > 0, span, 1.0) * GRID), 0.0)
    ref_levels, cand_levels = _distinct(grid), _distinct(c)
    size = float(np.max(np.abs(r)))
    varies = (span > FLAT) & (span > VARIES * size)
    collapsed = varies & (cand_levels == 1)
    coarse = varies & ~collapsed & (ref_levels >= MIN_LEVELS) & (cand_levels < COARSE * ref_levels)
    kept = np.minimum(cand_levels, ref_levels) / ref_levels
    sq = _sqnr(r, c)

    def entry(k: int) -> dict:
        return {"index": k, "reference_min": float(lo[k]), "reference_max": float(hi[k]),
                "candidate_min": float(c[:, k].min()), "candidate_max": float(c[:, k].max()),
                "reference_levels": int(ref_levels[k]), "candidate_levels": int(cand_levels[k]), "sqnr_db": float(sq[k])}

    flagged = np.flatnonzero(collapsed | coarse)
    worst = int(np.argmin(np.where(varies, kept, np.inf))) if varies.any() else None
    return {"axis": -1, "channels": channels, "collapsed": np.flatnonzero(collapsed).tolist(),
            "coarse": np.flatnonzero(coarse).tolist(), "worst_channel": worst,
            "worst_levels_kept": float(kept[worst]) if worst is not None else None,
            "per_channel": [entry(k) for k in (range(channels) if channels <= PER_CHANNEL_LIMIT else flagged)]}


def _spans(idx: list[int]) -> str:
    """[4, 5, 6, 9] -> '4-6, 9'."""
    parts, start = [], None
    for k, i in enumerate(idx):
        if start is None:
            start = i
        if k + 1 == len(idx) or idx[k + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}-{i}")
            start = None
    return ", ".join(parts)


def range_warnings(name: str, loss: dict, ref: np.ndarray) -> list[str]:
    """One warning per kind of loss (collapsed, coarse) naming the slices, their ranges and what to do."""
    rows = {e["index"]: e for e in loss.get("per_channel", ())}
    ref = np.asarray(ref)
    whole = f"{float(ref.min()):.4g} to {float(ref.max()):.4g}" if ref.size else "-"
    fix = ("One quantization scale is probably shared by values of very different ranges (this output spans "
           f"{whole}): emit the slices as separate outputs, scale them to similar ranges before concatenating, or "
           "keep the last layer in float.")
    out = []
    for kind, what in (("collapsed", "collapse to a constant in the candidate while they vary in the reference"),
                       ("coarse", f"keep fewer than {COARSE:.1%} of their distinct levels in the candidate")):
        idx = loss.get(kind) or []
        if not idx:
            continue
        ex = rows[idx[0]]
        out.append(f"Output '{name}': slice(s) {_spans(idx)} of {loss['channels']} along the last axis {what} "
                   f"(e.g. slice {ex['index']}: reference {ex['reference_min']:.4g} to {ex['reference_max']:.4g}, "
                   f"{ex['reference_levels']} levels; candidate {ex['candidate_min']:.4g} to {ex['candidate_max']:.4g}, "
                   f"{ex['candidate_levels']} level(s); SQNR {ex['sqnr_db']:.1f} dB). The output's overall SQNR and "
                   "cosine hide this: they are dominated by the slices with larger values. " + fix)
    return out
