"""Profile and emulate reports: load one from JSON, and line two up op by op (``compare-report``)."""

from __future__ import annotations

import json
import os

from workbench.core.errors import InputFileError
from workbench.core.files import check_input_file

def load_report(path: str | os.PathLike) -> dict:
    p = check_input_file(path, "report")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(f"Report '{p}' is not JSON: {exc}.",
                             hint="Give a file written by workbench profile -o or workbench emulate -o.") from None
    if not isinstance(doc, dict) or "kind" not in doc:
        raise InputFileError(f"Report '{p}' has no 'kind' field: it is not a workbench profile or emulate report.",
                             hint="Give a file written by workbench profile -o or workbench emulate -o.")
    return doc


TOTALS = ("latency_ms", "ram_bytes", "flash_bytes", "load_ms", "first_inference_ms")


def _ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
        return b / a
    return None


def _target_name(rep: dict) -> str | None:
    t = rep.get("target")
    if isinstance(t, dict):
        return t.get("name") or t.get("description")
    return t


def _model_name(rep: dict) -> str | None:
    m = rep.get("model")
    if isinstance(m, dict):
        m = m.get("name") or m.get("path")
    return os.path.basename(str(m)) if m else None


def _model_sha(rep: dict) -> str | None:
    m = rep.get("model")
    return (m.get("sha256") if isinstance(m, dict) else None) or rep.get("model_sha256")


def _align_ops(a_ops: list[dict], b_ops: list[dict]) -> list[tuple[dict | None, dict | None, str]]:
    """Pair ops of two reports: by name where the names agree, else the k-th op of each
    kind with the k-th op of that kind in the other (fused or renamed ops stay unpaired)."""
    b_by_name = {o.get("name"): o for o in b_ops if o.get("name")}
    pairs: list[tuple[dict | None, dict | None, str]] = []
    used_b: set[int] = set()
    unmatched_a = []
    for o in a_ops:
        m = b_by_name.get(o.get("name")) if o.get("name") else None
        if m is not None and id(m) not in used_b:
            pairs.append((o, m, "name"))
            used_b.add(id(m))
        else:
            unmatched_a.append(o)
    queues: dict[str, list[dict]] = {}
    for o in b_ops:
        if id(o) not in used_b:
            queues.setdefault(str(o.get("kind", "")).upper(), []).append(o)
    for o in unmatched_a:
        q = queues.get(str(o.get("kind", "")).upper())
        if q:
            m = q.pop(0)
            used_b.add(id(m))
            pairs.append((o, m, "kind order"))
        else:
            pairs.append((o, None, ""))
    for o in b_ops:
        if id(o) not in used_b:
            pairs.append((None, o, ""))
    order = {id(o): k for k, o in enumerate(a_ops)}
    pairs.sort(key=lambda p: (order.get(id(p[0]), len(a_ops)), p[1].get("index", 0) if p[1] else 0))
    return pairs


def compare_reports(a: dict, b: dict) -> dict:
    """Two reports side by side (typically an estimate and a measurement): totals with
    ratio b/a, and per op where both reports have a time for it."""
    totals = []
    for key in TOTALS:
        va, vb = a.get(key), b.get(key)
        if va is None and vb is None:
            continue
        totals.append({"metric": key, "a": va, "b": vb, "ratio": _ratio(va, vb)})
    ops = []
    for oa, ob, how in _align_ops(list(a.get("ops") or []), list(b.get("ops") or [])):
        la = oa.get("latency_ms") if oa else None
        lb = ob.get("latency_ms") if ob else None
        if la is None or lb is None:
            continue
        ops.append({"a_index": oa.get("index"), "b_index": ob.get("index"), "name": oa.get("name") or ob.get("name"),
                    "kind": oa.get("kind") or ob.get("kind"), "a_ms": la, "b_ms": lb, "ratio": _ratio(la, lb),
                    "matched_by": how})
    notes = []
    sha_a, sha_b = _model_sha(a), _model_sha(b)
    if sha_a and sha_b:
        if sha_a != sha_b:
            notes.append(f"The reports are about different model files (sha256 differs): {_model_name(a)} and {_model_name(b)}.")
    elif _model_name(a) and _model_name(b) and _model_name(a) != _model_name(b):
        notes.append(f"The reports may be about different models: {_model_name(a)} and {_model_name(b)}.")
    if not ops:
        why = [f"{side} has no per-op times" for side, r in (("A", a), ("B", b))
               if not any(o.get("latency_ms") is not None for o in (r.get("ops") or []))]
        notes.append("No per-op comparison: " + ("; ".join(why) if why else "no op could be paired") + ".")
    return {
        "a": {"kind": a.get("kind"), "target": _target_name(a), "model": _model_name(a)},
        "b": {"kind": b.get("kind"), "target": _target_name(b), "model": _model_name(b)},
        "totals": totals,
        "ops": ops,
        "notes": notes,
    }
