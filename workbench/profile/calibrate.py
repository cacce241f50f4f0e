"""Fit a target profile's cost coefficients to latencies measured on the real board.

    result = calibrate("raspberry-pi-4", [load_report("pi4_float.json"), load_report("pi4_int8.json")])
    result.target          # a new Target with fitted coefficients
    result.rows            # per measurement: measured, estimated before and after, errors

The estimate of :mod:`workbench.emulate.cost` is, for one model and a fixed thread count,
a sum of terms that are each proportional to one coefficient group::

    latency = s_overhead * O  +  s_int8 * W_int8  +  s_int16 * W_int16  +  s_float32 * W_float32  +  s_elements * E

``O`` is the per-op overhead part of the current estimate, ``W_dtype`` the MAC and byte
work of the ops computing in that dtype and ``E`` the element work of the ops the profile
gives ``element_cycles`` (threads and the XNNPACK delegation already applied, exactly as
``workbench emulate`` does). Calibration scales the groups:

1. one common scale for all coefficients (what a different clock or memory system does), by
   least squares on relative error; with one measurement this makes its estimate exact;
2. with more measurements than groups that vary between them, a scale per group by
   non-negative least squares on relative error, kept only if it lowers the error further.

Op class factors, the thread parallel efficiency and the undelegated factor keep their values.
``workbench profile`` reports are measurements of LiteRT on a Linux board, so only LiteRT
targets can be calibrated this way.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from workbench.emulate.cost import dtype_row, op_terms
from workbench.emulate.targets import DtypeCost, Source, Target, load_target, target_from_dict
from workbench.core.errors import ConfigError, InputFileError
from workbench.core.files import sha256_file

GROUPS = ("overhead", "int8", "int16", "float32", "elements")


@dataclass(frozen=True)
class Measurement:
    """One measured profile, matched to its model file and the estimate's split into groups."""

    report: str  # where the profile came from (file name or a label)
    model: Path
    threads: int
    measured_ms: float
    groups_ms: dict  # group -> ms of the current estimate

    @property
    def estimate_ms(self) -> float:
        return float(sum(self.groups_ms.values()))

    def estimate_with(self, scales: dict) -> float:
        return float(sum(scales.get(g, 1.0) * v for g, v in self.groups_ms.items()))


@dataclass(frozen=True)
class CalibrationResult:
    base: Target
    target: Target
    scales: dict  # group -> factor applied to that group's coefficients
    method: str
    rows: tuple[dict, ...]  # per measurement: report, model, threads, measured/before/after ms, errors

    @property
    def error_before(self) -> float:
        """Root mean square of the relative errors (estimate / measured - 1): what the fit minimises."""
        return _rms([r["before_error"] for r in self.rows])

    @property
    def error_after(self) -> float:
        return _rms([r["after_error"] for r in self.rows])

    def to_dict(self) -> dict:
        return {"base_target": self.base.name, "target": self.target.name, "scales": dict(self.scales),
                "method": self.method, "measurements": [dict(r) for r in self.rows],
                "rms_error_before": self.error_before, "rms_error_after": self.error_after,
                "max_abs_error_before": max(abs(r["before_error"]) for r in self.rows),
                "max_abs_error_after": max(abs(r["after_error"]) for r in self.rows),
                "cost": self.target.to_dict()["cost"]}


def _rms(errors: list[float]) -> float:
    return float(np.sqrt(np.mean(np.square(errors)))) if errors else 0.0


def _measurement(report: dict, label: str, target: Target, models: dict[str, Path]) -> Measurement:
    from workbench.emulate.emulator import emulate

    if report.get("kind") != "measurement":
        raise InputFileError(f"'{label}' is a report of kind {report.get('kind')!r}; calibration needs measurements.",
                             hint="Give reports written by: workbench profile MODEL.tflite -o report.json")
    if report.get("interrupted"):
        raise InputFileError(f"'{label}' was interrupted before all runs finished; its latency is not reliable.",
                             hint="Profile the model again and let the runs finish.")
    runtime = (report.get("runtime") or {}).get("name")
    if runtime != target.runtime.name:
        raise ConfigError(f"'{label}' measured the {runtime} runtime, target '{target.name}' runs {target.runtime.name}.",
                          hint="Calibrate a LiteRT board target from .tflite profiles measured with --runtime litert.")
    latency = report.get("latency_ms")
    if not isinstance(latency, (int, float)) or latency <= 0:
        raise InputFileError(f"'{label}' has no measured latency (latency_ms is {latency!r}).")
    model_info = report.get("model") or {}
    sha = model_info.get("sha256")
    path = models.get(sha) if sha else None
    if path is None:
        recorded = model_info.get("path")
        if recorded and Path(recorded).is_file() and (not sha or sha256_file(recorded) == sha):
            path = Path(recorded)
    if path is None:
        raise InputFileError(
            f"'{label}' profiled {model_info.get('name')!r} (sha256 {str(sha)[:12]}...), and that model file was not found"
            f"{' at ' + repr(model_info.get('path')) if model_info.get('path') else ''}.",
            hint="Pass the model file with --model FILE (it is matched to the profile by its sha256).")
    threads = int((report.get("runtime") or {}).get("threads") or (report.get("settings") or {}).get("threads") or 1)
    est = emulate(path, target, threads=threads)
    cm = target.cost
    clock = target.clock_hz
    graph_ops = {}
    if any(cm.element_cycles.values()):
        from workbench.frontends import load

        graph = load(path).meta["graph"]
        graph_ops = {o.index: o for o in graph.ops}
    groups = {g: 0.0 for g in GROUPS}
    for op in est.latency.ops:
        overhead = cm.op_overhead_cycles * (cm.undelegated_factor if op.delegated is False else 1.0)
        g_op = graph_ops.get(op.index)
        elements = op_terms(graph, g_op, target, est.latency.threads, op.delegated)[2] if g_op is not None else 0.0
        groups["overhead"] += overhead / clock * 1e3
        groups["elements"] += elements / clock * 1e3
        groups[dtype_row(op.dtype)] += max(op.cycles - overhead - elements, 0.0) / clock * 1e3
    return Measurement(report=label, model=path, threads=est.latency.threads, measured_ms=float(latency), groups_ms=groups)


def _fit_common(ms: list[Measurement]) -> float:
    e = np.array([m.estimate_ms for m in ms])
    y = np.array([m.measured_ms for m in ms])
    r = e / y
    return float(r.sum() / (r * r).sum())


def _nnls(a: np.ndarray, b: np.ndarray, iters: int = 500) -> np.ndarray:
    """Non-negative least squares by projected coordinate descent (small problems only)."""
    x = np.linalg.lstsq(a, b, rcond=None)[0].clip(min=0)
    ata, atb = a.T @ a, a.T @ b
    for _ in range(iters):
        prev = x.copy()
        for j in range(len(x)):
            if ata[j, j] > 0:
                x[j] = max(0.0, x[j] + (atb[j] - ata[j] @ x) / ata[j, j])
        if np.allclose(x, prev, rtol=1e-10, atol=1e-12):
            break
    return x


def _fit_groups(ms: list[Measurement], common: float) -> dict | None:
    active = [g for g in GROUPS if any(m.groups_ms[g] > 0 for m in ms)]
    if len(ms) <= len(active):
        return None
    a = np.array([[m.groups_ms[g] / m.measured_ms for g in active] for m in ms])
    x = _nnls(a, np.ones(len(ms)))
    if not np.all(np.isfinite(x)) or np.any(x <= 0):
        return None  # a group driven to zero is not a credible fit
    scales = {g: common for g in GROUPS}
    scales.update({g: float(v) for g, v in zip(active, x)})
    return scales


def calibrate(target: str | Path | Target, reports: list[dict] | list[tuple[str, dict]], *,
              models: list[str | Path] = (), name: str | None = None) -> CalibrationResult:
    """Fit ``target``'s cost coefficients to measured ``reports`` (``workbench profile`` output).

    ``reports``: dicts, or (label, dict) pairs (the label, e.g. the file name, appears in errors
    and in the new profile's sources). ``models``: model files to match profiles by sha256 when
    the path a profile recorded no longer holds the model. ``name``: the new profile's name.
    """
    base = load_target(target)
    if base.runtime.name != "litert":
        raise ConfigError(f"Target '{base.name}' runs {base.runtime.name}; workbench profile measures LiteRT on Linux "
                          "boards, so only LiteRT targets can be calibrated from its reports.")
    if not reports:
        raise ConfigError("Calibration needs at least one measured profile (--from PROFILE.json).")
    by_sha = {sha256_file(p): Path(p) for p in models}
    labelled = [r if isinstance(r, tuple) else (f"profile {k + 1}", r) for k, r in enumerate(reports)]
    ms = [_measurement(rep, label, base, by_sha) for label, rep in labelled]
    common = _fit_common(ms)
    scales = {g: common for g in GROUPS}
    method = (f"one common scale ({common:.4g}) on all cost coefficients, least squares on relative error"
              if len(ms) > 1 else f"one common scale ({common:.4g}) making the single measurement's estimate exact")
    per_group = _fit_groups(ms, common)
    if per_group is not None:
        err_common = _rms([m.estimate_with(scales) / m.measured_ms - 1 for m in ms])
        err_group = _rms([m.estimate_with(per_group) / m.measured_ms - 1 for m in ms])
        if err_group < err_common:
            scales = per_group
            method = ("a scale per coefficient group (" + ", ".join(f"{g} {v:.4g}" for g, v in per_group.items()) +
                      "), non-negative least squares on relative error")
    new = _scaled_target(base, scales, ms, method, name)
    rows = tuple({"report": m.report, "model": m.model.name, "threads": m.threads, "measured_ms": m.measured_ms,
                  "before_ms": m.estimate_ms, "after_ms": m.estimate_with(scales),
                  "before_error": m.estimate_ms / m.measured_ms - 1, "after_error": m.estimate_with(scales) / m.measured_ms - 1}
                 for m in ms)
    return CalibrationResult(base=base, target=new, scales=scales, method=method, rows=rows)


def _scaled_target(base: Target, scales: dict, ms: list[Measurement], method: str, name: str | None) -> Target:
    cm = base.cost
    dtypes = {k: DtypeCost(cycles_per_mac=_round(v.cycles_per_mac * scales[k]),
                           cycles_per_byte=_round(v.cycles_per_byte * scales[k])) for k, v in cm.dtypes.items()}
    today = datetime.date.today().isoformat()
    models = ", ".join(sorted({f"{m.model.name} ({m.threads} thread(s))" for m in ms}))
    calibration = (f"Calibrated from {base.name} on {today} by workbench targets calibrate to {len(ms)} measured "
                   f"profile(s): {models}; {method}. Previous calibration: {cm.calibration or 'none recorded'}")
    cost = replace(cm, dtypes=dtypes, op_overhead_cycles=_round(cm.op_overhead_cycles * scales["overhead"]),
                   element_cycles={k: _round(v * scales["elements"]) for k, v in cm.element_cycles.items()},
                   calibration=calibration)
    sources = base.sources + tuple(
        Source(fact=f"Measured with workbench profile: {m.model.name}, {m.threads} thread(s), mean latency "
                    f"{m.measured_ms:.6g} ms", url=f"local profile report {m.report}") for m in ms)
    new = replace(base, name=name or f"{base.name}-calibrated", title=f"{base.title}, calibrated to measurements",
                  cost=cost, sources=sources, path="")
    # Round-trip through the file format's validation, so the file written is one that loads.
    return target_from_dict(target_dict(new), f"calibrated {new.name}")


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def target_dict(t: Target) -> dict:
    """The YAML fields of a target (without the in-memory 'path')."""
    d = t.to_dict()
    d.pop("path", None)
    return d


def write_target(t: Target, out: str | Path) -> Path:
    """Write ``t`` as a target YAML file, atomically."""
    import yaml

    from workbench.core.files import write_text_atomic

    header = (f"# Target profile: {t.title}. Cost coefficients calibrated to measurements (see cost.calibration);\n"
              "# every other number comes from the profile it was calibrated from.\n")
    return write_text_atomic(out, header + yaml.safe_dump(target_dict(t), sort_keys=False, allow_unicode=True, width=110))
