"""Fit and check the Raspberry Pi cost coefficients on published latencies (scripts/pi_published.yaml).

Used by ``scripts/bench_emulate.py --pi``. The model is the one in ``workbench/emulate/cost.py``;
this module evaluates it fast (per-op feature arrays, numpy) so that the fits, the leave-one-out
refits and the grid over ``parallel_grain`` take seconds, and checks that its numbers equal
``estimate_latency``'s on every row (``check_against_cost_model``).

The fit: the reference column is the Raspberry Pi 4 on a 64-bit OS (the raspberry-pi-4 profile).
Its coefficients are

    op_overhead_cycles, cycles_per_mac[float32], cycles_per_mac[int8], class_factors.depthwise,
    element_cycles[HARD_SWISH, MUL], parallel_grain

Every other (board, OS) column of the published table is the same model times one scale of its
own (all cycle coefficients times ``s``: a slower core or a 32-bit build does every op proportionally
slower). cycles_per_byte, parallel_efficiency and the undelegated factor are not fitted: they keep
the profile's values (its sources say where they come from). The free coefficients minimise the
sum of squared log-ratios (relative error) over the ``use: fit`` rows only, with every coefficient
>= 0 (scipy.optimize.least_squares, bounded), for each ``parallel_grain`` on a log grid; the grain
with the smallest fit error is kept. ``use: check`` rows never enter a fit.

On these rows the fit picks ``parallel_grain`` 0: 4-thread latencies alone cannot tell a small op that
threads do not speed up from a fixed cost per op, and the per-op overhead (which threads never divide)
already carries it. The grain stays in the model for boards measured at several thread counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ROWS_FILE = ROOT / "scripts" / "pi_published.yaml"
REFERENCE = ("raspberry-pi-4", "arm64")
# Op kinds with a fitted element cost. Chosen by leave-one-out error over the fit rows (never the check
# rows): adding HARD_SWISH then MUL lowered it (median 9.2% -> 6.9% -> 6.5%, worst 25.1% -> 18.7%), adding
# ADD and MEAN as well did not (6.6%, worst 25.7%); their cost stays in the per-op and per-byte terms.
# Also tried and rejected on the same criterion: an extra int8 factor per (board, OS) column (32-bit int8
# kernels differ from 64-bit ones more than float ones do): leave-one-out median 8.6%, worst 65%, because
# the 64-bit int8 coefficients then rest on a single row.
ELEMENT_KINDS = ("HARD_SWISH", "MUL")
PARAMS = ("op_overhead_cycles", "cpm_float32", "cpm_int8", "depthwise") + tuple(f"e_{k}" for k in ELEMENT_KINDS)
# Starting points of the bounded least squares (the fit is not convex: with a model left out, different
# starts can end in different minima). Fixed here, so that a refit does not depend on the shipped
# profile; the best of the starts is kept. The first is the profile before this fit.
STARTS = ({"op_overhead_cycles": 929.0, "cpm_float32": 0.7793, "cpm_int8": 0.2663, "depthwise": 1.0, "e_HARD_SWISH": 1.0, "e_MUL": 1.0},
          {"op_overhead_cycles": 5000.0, "cpm_float32": 0.5, "cpm_int8": 0.2, "depthwise": 4.0, "e_HARD_SWISH": 5.0, "e_MUL": 5.0},
          {"op_overhead_cycles": 100.0, "cpm_float32": 0.6, "cpm_int8": 0.25, "depthwise": 2.0, "e_HARD_SWISH": 0.1, "e_MUL": 10.0})
GRAINS = (0.0,) + tuple(float(g) for g in np.geomspace(1e2, 1e7, 11))
ROW_FIELDS = ("id", "board", "os", "model", "dtype", "ms", "threads", "clock_mhz", "software", "url", "use")


def load_rows(path: Path = ROWS_FILE) -> list[dict]:
    """The published rows, every field present (the file's ``defaults`` merged into each row by YAML)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    rows = data["rows"]
    for r in rows:
        missing = [f for f in ROW_FIELDS if r.get(f) in (None, "")]
        if missing:
            raise ValueError(f"{path.name}: row {r.get('id')!r} lacks {', '.join(missing)}")
        if r["use"] not in ("fit", "check"):
            raise ValueError(f"{path.name}: row {r['id']!r} has use {r['use']!r}; expected fit or check")
    return rows


# --- models (the graphs the published numbers were measured on: same layer shapes, random weights) ---


def _keras():
    import keras

    return keras


def mobilenet_v1():
    return _keras().applications.MobileNet(input_shape=(224, 224, 3), weights=None)


def mobilenet_v2():
    return _keras().applications.MobileNetV2(input_shape=(224, 224, 3), weights=None)


def mobilenet_v3_small():
    return _keras().applications.MobileNetV3Small(input_shape=(224, 224, 3), weights=None, include_preprocessing=False)


def mobilenet_v3_large():
    return _keras().applications.MobileNetV3Large(input_shape=(224, 224, 3), weights=None, include_preprocessing=False)


BUILDERS = {"mobilenet_v1": mobilenet_v1, "mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small,
            "mobilenet_v3_large": mobilenet_v3_large}


def build_models(work: Path, rows: list[dict], convert, log) -> dict:
    """(model, dtype) -> .tflite path, built once into ``work`` with ``convert(keras_model, path, int8)``."""
    out = {}
    for model, dtype in sorted({(r["model"], r["dtype"]) for r in rows}):
        p = work / f"pi_{model}_{dtype}.tflite"
        if not p.exists():
            log(f"building {p.name} ...")
            tmp = p.with_suffix(".part")
            convert(BUILDERS[model](), tmp, dtype == "int8")
            tmp.replace(p)
        out[(model, dtype)] = p
    return out


# --- fast evaluation of the cost model ---


@dataclass(frozen=True)
class Features:
    """Per-op arrays of one graph, the terms of workbench.emulate.cost.op_cycles."""

    n_ops: int
    macs: np.ndarray
    depthwise: np.ndarray  # bool
    fp32: np.ndarray  # bool: the op computes in float32 (else the int8 row)
    bytes: np.ndarray
    elements: dict  # kind -> array of activation elements (0 for other kinds)
    units: np.ndarray
    parallel: np.ndarray  # bool


def features(model) -> Features:
    """The per-op arrays of a .tflite path or a :class:`workbench.frontends.graph.Graph`."""
    from workbench.emulate.cost import (PARALLEL_OPS, activation_bytes, activation_elements, dtype_row, op_class,
                                        parallel_units)
    from workbench.frontends.tflite_reader import read_tflite

    g = read_tflite(model) if isinstance(model, (str, Path)) else model
    ops = g.ops
    return Features(
        n_ops=len(ops),
        macs=np.array([g.macs(o) for o in ops], float),
        depthwise=np.array([op_class(g, o) == "depthwise" for o in ops]),
        fp32=np.array([dtype_row(g.op_dtype(o)) == "float32" for o in ops]),
        bytes=np.array([activation_bytes(g, o) for o in ops], float),
        elements={k: np.array([activation_elements(g, o) if o.kind == k else 0 for o in ops], float) for k in ELEMENT_KINDS},
        units=np.array([parallel_units(g, o) for o in ops], float),
        parallel=np.array([o.kind in PARALLEL_OPS for o in ops]),
    )


def cycles(f: Features, p: dict, grain: float, threads: int, efficiency: float, cpb: dict) -> float:
    """Total cycles of one inference (all ops delegated) for coefficients ``p``."""
    cpm = np.where(f.fp32, p["cpm_float32"], p["cpm_int8"])
    factor = np.where(f.depthwise, p["depthwise"], 1.0)
    work = factor * cpm * f.macs + np.where(f.fp32, cpb["float32"], cpb["int8"]) * f.bytes
    for k in ELEMENT_KINDS:
        work = work + p[f"e_{k}"] * f.elements[k]
    share = f.units / (f.units + grain) if grain > 0 else np.ones_like(f.units)
    sp = np.where(f.parallel, 1.0 + max(0, threads - 1) * efficiency * share, 1.0)
    return float(f.n_ops * p["op_overhead_cycles"] + (work / sp).sum())


def column(r: dict) -> tuple[str, str]:
    return (r["board"], r["os"])


@dataclass(frozen=True)
class Fit:
    params: dict
    grain: float
    scales: dict  # column -> scale (the reference column 1.0)
    fit_ids: tuple

    def predict_ms(self, r: dict, f: Features, efficiency: float, cpb: dict) -> float:
        c = cycles(f, self.params, self.grain, int(r["threads"]), efficiency, cpb)
        return self.scales.get(column(r), math.nan) * c / (float(r["clock_mhz"]) * 1e6) * 1e3


def fit(rows: list[dict], feats: dict, efficiency: float, cpb: dict, starts=STARTS) -> Fit:
    """Least squares on log(predicted / published) over ``rows`` (see the module docstring)."""
    from scipy.optimize import least_squares

    cols = sorted({column(r) for r in rows} - {REFERENCE})
    if not any(column(r) == REFERENCE for r in rows):
        raise ValueError("the fit rows hold no row of the reference column")
    names = list(PARAMS) + [f"s_{b}_{o}" for b, o in cols]
    best = None
    for grain, start in ((g, s) for g in GRAINS for s in starts):
        x0 = np.array([start[n] for n in PARAMS] + [1.0] * len(cols))

        def resid(x):
            p = dict(zip(names, x))
            out = []
            for r in rows:
                s = 1.0 if column(r) == REFERENCE else p[f"s_{r['board']}_{r['os']}"]
                c = cycles(feats[(r["model"], r["dtype"])], p, grain, int(r["threads"]), efficiency, cpb)
                out.append(math.log(max(s * c / (float(r["clock_mhz"]) * 1e3), 1e-9) / float(r["ms"])))
            return np.array(out)

        sol = least_squares(resid, x0, bounds=(np.zeros(len(x0)), np.full(len(x0), np.inf)), x_scale="jac")
        cost = float((sol.fun ** 2).sum())
        if best is None or cost < best[0] - 1e-12:
            best = (cost, grain, sol.x)
    _, grain, x = best
    p = dict(zip(names, (float(v) for v in x)))
    scales = {REFERENCE: 1.0, **{c: p.pop(f"s_{c[0]}_{c[1]}") for c in cols}}
    return Fit(params=p, grain=grain, scales=scales, fit_ids=tuple(r["id"] for r in rows))


def to_cost(base, fitted: Fit, scale: float = 1.0):
    """The CostModel of a profile: ``base`` with the fitted coefficients (times ``scale``) put in."""
    from workbench.emulate.targets import DtypeCost

    p = fitted.params
    b = base.dtypes
    dtypes = {"float32": DtypeCost(cycles_per_mac=_r(p["cpm_float32"] * scale), cycles_per_byte=_r(b["float32"].cycles_per_byte * scale)),
              "int8": DtypeCost(cycles_per_mac=_r(p["cpm_int8"] * scale), cycles_per_byte=_r(b["int8"].cycles_per_byte * scale)),
              # int16x8 keeps its documented relation to int8 (2x the int8 row; see the profiles' calibration text)
              "int16": DtypeCost(cycles_per_mac=_r(2 * p["cpm_int8"] * scale), cycles_per_byte=_r(2 * b["int8"].cycles_per_byte * scale))}
    factors = {**base.class_factors, "depthwise": _r(p["depthwise"])}
    return replace(base, dtypes=dtypes, op_overhead_cycles=_r(p["op_overhead_cycles"] * scale), class_factors=factors,
                   element_cycles={k: _r(p[f"e_{k}"] * scale) for k in ELEMENT_KINDS}, parallel_grain=_r(fitted.grain))


def _r(v: float) -> float:
    """Four significant digits; a coefficient the bounded fit drove to its lower bound (below 1e-6) is 0."""
    return 0.0 if abs(v) < 1e-6 else float(f"{v:.4g}")


# --- the benchmark table ---


def _cpb(target) -> dict:
    return {"float32": target.cost.dtypes["float32"].cycles_per_byte, "int8": target.cost.dtypes["int8"].cycles_per_byte}


def _start(target) -> dict:
    c = target.cost
    return {"op_overhead_cycles": c.op_overhead_cycles, "cpm_float32": c.dtypes["float32"].cycles_per_mac,
            "cpm_int8": c.dtypes["int8"].cycles_per_mac, "depthwise": c.class_factors.get("depthwise", 1.0),
            **{f"e_{k}": c.element_cycles.get(k, 1.0) for k in ELEMENT_KINDS}}


def _stats(errors) -> str:
    a = np.abs(np.array(list(errors))) * 100
    return f"median |error| {np.median(a):.1f}%, worst {a.max():.1f}% ({len(a)} rows)"


def check_against_cost_model(paths: dict, rows: list[dict]) -> float:
    """Largest relative difference between this module's fast evaluation and ``estimate_latency`` with the
    shipped profiles (all ops delegated), over the rows' (board, model, dtype)."""
    from workbench.emulate import load_target
    from workbench.emulate.cost import estimate_latency
    from workbench.frontends.tflite_reader import read_tflite

    worst = 0.0
    for board, model, dtype in sorted({(r["board"], r["model"], r["dtype"]) for r in rows}):
        t = load_target(board)
        c = t.cost
        p = {**_start(t), "depthwise": c.class_factors.get("depthwise", 1.0), **{f"e_{k}": c.element_cycles.get(k, 0.0) for k in ELEMENT_KINDS}}
        fast = cycles(features(paths[(model, dtype)]), p, c.parallel_grain, t.threads, c.parallel_efficiency, _cpb(t)) / t.clock_hz * 1e3
        ref = estimate_latency(read_tflite(paths[(model, dtype)]), t, threads=t.threads).total_ms
        worst = max(worst, abs(fast / ref - 1))
    return worst


def pi_table(paths: dict, rows: list[dict], show_fit: bool, say=print) -> dict:
    """Print the published rows against the fitted model, held out and leave-one-out; return the summary numbers."""
    from workbench.emulate import load_target
    from workbench.emulate.cost import estimate_latency
    from workbench.frontends.tflite_reader import read_tflite

    ref = load_target(REFERENCE[0])
    eff, cpb = ref.cost.parallel_efficiency, _cpb(ref)
    feats = {k: features(p) for k, p in paths.items()}
    fit_rows = [r for r in rows if r["use"] == "fit"]
    check_rows = [r for r in rows if r["use"] == "check"]
    if {r["id"] for r in fit_rows} & {r["id"] for r in check_rows}:
        raise ValueError("a row is both a fit row and a check row")
    full = fit(fit_rows, feats, eff, cpb)
    pred = {r["id"]: full.predict_ms(r, feats[(r["model"], r["dtype"])], eff, cpb) for r in rows}
    loo = {}
    for r in fit_rows:
        part = fit([x for x in fit_rows if x is not r], feats, eff, cpb)
        loo[r["id"]] = part.predict_ms(r, feats[(r["model"], r["dtype"])], eff, cpb)
    lomo = {}  # leave one model out: every row of a model predicted by a fit that saw no row of that model
    for m in sorted({r["model"] for r in rows}):
        rest = [x for x in fit_rows if x["model"] != m]
        part = fit(rest, feats, eff, cpb)
        for r in rows:
            if r["model"] == m:
                lomo[r["id"]] = part.predict_ms(r, feats[(r["model"], r["dtype"])], eff, cpb)
    profile = {}
    for r in rows:
        t = load_target(r["board"])
        if r["board"] == REFERENCE[0] and r["os"] != REFERENCE[1]:
            continue  # the raspberry-pi-4 profile is the 64-bit OS column
        profile[r["id"]] = estimate_latency(read_tflite(paths[(r["model"], r["dtype"])]), t, threads=int(r["threads"])).total_ms

    say("Table 4. Raspberry Pi, XNNPACK 4 threads: published latency vs the cost model (scripts/pi_published.yaml)")
    say("model ms: the model fitted to the 'fit' rows only; 'check' rows never enter a fit, so their error is held out.")
    say("LOO: the fit row predicted by a refit without it. profile ms: `workbench emulate` with the shipped profile.")
    say(f"{'row':<24} {'use':<6} {'source':<24} {'published':>9} {'model ms':>9} {'error':>7} {'LOO ms':>8} {'LOO err':>8} "
        f"{'profile ms':>10} {'error':>7}")
    for r in rows:
        src = f"XNNPACK README {r['software'].split('(')[1].split(')')[0]}" if "(" in r["software"] else r["software"][:24]
        e = pred[r["id"]] / r["ms"] - 1
        lo = f"{loo[r['id']]:>8.1f} {(loo[r['id']] / r['ms'] - 1) * 100:>+7.1f}%" if r["id"] in loo else f"{'':>8} {'':>8}"
        pr = f"{profile[r['id']]:>10.1f} {(profile[r['id']] / r['ms'] - 1) * 100:>+6.1f}%" if r["id"] in profile else f"{'-':>10} {'':>7}"
        say(f"{r['id']:<24} {r['use']:<6} {src:<24} {r['ms']:>9g} {pred[r['id']]:>9.1f} {e * 100:>+6.1f}% {lo} {pr}")
    held = [pred[r["id"]] / r["ms"] - 1 for r in check_rows]
    loo_err = [loo[r["id"]] / r["ms"] - 1 for r in fit_rows]
    lomo_err = [lomo[r["id"]] / r["ms"] - 1 for r in rows]
    fit_err = [pred[r["id"]] / r["ms"] - 1 for r in fit_rows]
    summary = {"check": held, "loo": loo_err, "unseen": held + loo_err, "lomo": lomo_err, "fit": fit_err}
    say(f"held out (check rows):                    {_stats(held)}")
    say(f"leave-one-out (fit rows):                 {_stats(loo_err)}")
    say(f"every row predicted by a fit without it:  {_stats(held + loo_err)}")
    say(f"leave one model out (all rows):           {_stats(lomo_err)}")
    say(f"fitted rows (in-sample, proves nothing):  {_stats(fit_err)}")
    say(f"fast evaluation vs estimate_latency with the shipped profiles: largest difference "
        f"{check_against_cost_model(paths, rows) * 100:.2g}%")
    if show_fit:
        say("")
        say(f"fitted on {len(fit_rows)} rows: parallel_grain {full.grain:g}; column scales " +
            ", ".join(f"{b}/{o} {s:.4f}" for (b, o), s in full.scales.items()))
        for board, scale in (("raspberry-pi-4", 1.0), ("raspberry-pi-3b-plus", full.scales.get(("raspberry-pi-3b-plus", "armhf")))):
            if scale is None:
                continue
            c = to_cost(load_target(board).cost if board == REFERENCE[0] else ref.cost, full, scale)
            say(f"{board}: op_overhead_cycles {c.op_overhead_cycles:g}; cycles_per_mac float32 {c.dtypes['float32'].cycles_per_mac:g}, "
                f"int8 {c.dtypes['int8'].cycles_per_mac:g}, int16 {c.dtypes['int16'].cycles_per_mac:g}; cycles_per_byte int8 "
                f"{c.dtypes['int8'].cycles_per_byte:g}, int16 {c.dtypes['int16'].cycles_per_byte:g}, float32 {c.dtypes['float32'].cycles_per_byte:g}; "
                f"depthwise {c.class_factors['depthwise']:g}; element_cycles {c.element_cycles}; parallel_grain {c.parallel_grain:g}")
    return summary
