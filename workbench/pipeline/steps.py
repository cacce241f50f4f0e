"""The steps of one pipeline job: optimize -> export -> evaluate -> emulate, as calls into each stage in order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from workbench.core.errors import WorkbenchError
from workbench.core.registry import Registry

# (handle, step options, recipe data, artifact folder) -> (handle or None, artifacts {format: path}, info)
OPTIMIZERS: Registry[Callable] = Registry("optimization step")
EXT = {"tflite": ".tflite", "onnx": ".onnx", "ort": ".ort", "executorch": ".pte"}


def execute(job, adir: Path) -> dict:
    from workbench.evaluate.compare import evaluate_models
    from workbench.export.convert import convert_model, export_tflm
    from workbench.frontends import load
    from workbench.frontends.loader import LoadOptions

    v, data = job.variant, job.data
    lo = LoadOptions(trust_model=job.model.trust_model, factory=job.model.factory, input_shape=job.model.input_shape)
    source = load(job.model.path, lo)
    handle = source
    artifacts: dict[str, Path] = {}
    info: dict = {}
    errors: list[str] = []
    _register_builtin()
    for step in ("prune", "cluster", "qat"):
        opts = getattr(v, step)
        if opts:
            handle, made, step_info = OPTIMIZERS.get(step)(handle, dict(opts), data, adir)
            artifacts.update(made)
            info[step] = step_info
    calib = data.get("calib")
    for fmt in v.formats:
        if fmt in artifacts:
            continue
        try:
            if fmt == "tflm":
                tfl = artifacts.get("tflite")
                src = load(tfl) if tfl else handle
                export_tflm(src, adir / "tflm", scheme=v.scheme, calib=calib, calib_samples=data.get("calib_samples", 200),
                                per_channel=v.per_channel, calibrator=v.calibrator, name=job.model.name.replace("-", "_"))
                artifacts[fmt] = adir / "tflm"
            elif handle is not None:
                out = adir / f"model{EXT[fmt]}"
                convert_model(handle, fmt, out, scheme=v.scheme, calib=calib, calib_samples=data.get("calib_samples", 200),
                              calibrator=v.calibrator, per_channel=v.per_channel, io_dtype=v.io_dtype,
                              **({"keep_float": v.keep_float} if v.keep_float else {}))
                artifacts[fmt] = out
        except WorkbenchError as exc:  # one impossible combination must not sink the whole run: record it
            errors.append(f"{fmt}: {exc.message}")
    if v.deploy and "tflite" in artifacts:  # the targets get the stripped / compressed model
        from workbench.export.tflm_sources import write_deployed

        try:
            plain = artifacts["tflite"]
            deployed = plain.with_name("model.deployed.tflite")
            info["deploy"] = {**v.deploy, "plain_bytes": plain.stat().st_size,
                              **write_deployed(plain, deployed, v.deploy["strip"], v.deploy.get("compress"))}
            artifacts["tflite"] = deployed
        except WorkbenchError as exc:
            errors.append(f"deploy: {exc.message}")
    layer_errors = _layer_errors(handle, artifacts.get("tflite"), v, data, adir) if v.scheme == "int8" else None
    if layer_errors:
        info["layer_errors"] = layer_errors
    rows = []
    for fmt, path in artifacts.items():
        base = {"model": job.model.name, "variant": v.name, "format": fmt, "scheme": v.scheme,
                "artifact": str(Path(path).relative_to(adir)), "bytes": _size(path)}
        compressed = fmt == "tflite" and bool((v.deploy or {}).get("compress"))
        # LiteRT has no DECODE kernel: a compressed model is evaluated on the target (below)
        if fmt != "tflm" and data.get("eval") and not compressed:
            m = evaluate_models(source, path, data["eval"], samples=data.get("eval_samples", 1000),
                                metric=data.get("metric")).metrics
            base.update({k: m.get(k) for k in ("accuracy", "reference_accuracy", "accuracy_drop_pp", "argmax_agreement", "sqnr_db")})
            base.update(task_columns(m))
        if fmt == "tflite" and job.targets:
            targets = [t for t in job.targets if not _npu_skips(t, v.scheme, rows, base)]
            on_target = source if (data.get("eval_on_target") or compressed) and data.get("eval") else None
            for t in targets:
                rows.append({**base, **_emulated(path, t, data if on_target is not None else None, on_target)})
        else:
            rows.append(base)
    return {"rows": rows, "errors": errors, "info": info, "artifacts": {k: str(Path(p).relative_to(adir)) for k, p in artifacts.items()}}


def task_columns(m: dict) -> dict:
    """The task metric's columns of a comparison (its name, value, reference value, loss, and how to read them)."""
    from workbench.evaluate.metrics import METRICS

    metric = METRICS.get(m.get("metric") or "")
    if metric is None:
        return {"metric": None}
    return {"metric": metric.name, "metric_direction": metric.direction, metric.key: m.get(metric.key),
            f"reference_{metric.key}": m.get(f"reference_{metric.key}"), metric.loss_key: m.get(metric.loss_key),
            "loss_units": metric.loss_units}


def _layer_errors(handle, tflite: Path | None, v, data: dict, adir: Path) -> list[dict] | None:
    """Per-layer SQNR of the int8 model against its float twin (the PTQ diagnosis), for the report."""
    if handle is None or tflite is None or not data.get("calib"):
        return None
    from workbench.data import open_data
    from workbench.export.convert import convert_model
    from workbench.frontends import load
    from workbench.evaluate.debug_quant import layer_errors
    from workbench.data.dataset import fit_to_input

    ref = adir.parent / "float-twin.tflite"
    try:
        convert_model(handle, "tflite", ref, scheme="float", write_manifest=False, overwrite=True)
        spec = load(ref).inputs[0]
        ds = open_data(data["calib"], split="train", limit=32, seed=1)
        rows = layer_errors(ref, tflite, fit_to_input(ds.x, spec.shape, spec.layout, ds.name))
    except WorkbenchError:
        return None  # layers that cannot be paired by name (e.g. different converters): no chart
    finally:
        ref.unlink(missing_ok=True)
    return [{"layer": r.name.split(";")[0], "op": r.op, "sqnr_db": r.sqnr_db} for r in sorted(rows, key=lambda r: r.index)]


# Vela compiles fully integer models only; other schemes would leave every op on the host CPU.
NPU_SCHEMES = ("int8", "int16x8")


def _npu_skips(target: str, scheme: str, rows: list, base: dict) -> bool:
    """An NPU board gets only int8 (and int16x8) variants: others are a row saying why, not an emulation."""
    from workbench.emulate import load_target

    if load_target(target).npu is None or scheme in NPU_SCHEMES:
        return False
    rows.append({**base, "target": target, "fits": None,
                 "skipped": f"{scheme} variants are not compiled for NPU targets: Vela offloads only fully integer "
                            "(int8/int16x8) models, so every op would stay on the host CPU"})
    return True


def _emulated(path: Path, target: str, data: dict | None = None, reference=None) -> dict:
    """The emulate columns of one row; with ``data`` (``eval_on_target``) also the task metric of the
    model run as the target runs it (the firmware's kernels on an MCU) against ``reference``."""
    from workbench.emulate import emulate

    from workbench.core.errors import ToolFailure, UnsupportedError

    kw = {}
    if data is not None:
        kw = {"eval_data": data["eval"], "reference": reference, "eval_samples": data.get("eval_samples", 500)}
    try:
        r = emulate(path, target, **kw).to_dict()
    except UnsupportedError as exc:  # the target's runtime cannot run this model at all (e.g. hybrid on TFLM)
        return {"target": target, "fits": False, "error": exc.message}
    except ToolFailure as exc:  # our tooling failed, not the model: no verdict, and the job is not cached
        return {"target": target, "fits": None, "tool_failure": exc.message}
    except WorkbenchError as exc:
        return {"target": target, "fits": None, "error": exc.message}
    keep = ("flash_bytes", "ram_bytes", "arena_bytes", "latency_ms", "fits", "unsupported_ops", "method")
    out = {"target": target, **{k: r.get(k) for k in keep}}
    if r.get("tool_failure"):
        out["tool_failure"] = r["tool_failure"]
    out["unsupported_ops"] = len(r.get("unsupported_ops") or [])
    out["target_kind"] = r.get("target_kind")
    out["flash_limit_bytes"] = r.get("flash_budget_bytes")
    out["ram_limit_bytes"] = r.get("ram_budget_bytes")
    acc = r.get("accuracy") or {}
    for k in ("accuracy", "accuracy_drop_pp", "metric", "metric_loss"):
        if acc.get(k) is not None:
            out[f"target_{k}"] = acc[k]
    fw = r.get("firmware")
    if fw:  # the per-op instruction counts, for the report's chart
        out["instructions"] = fw["instructions"]
        out["per_op_instructions"] = [{"index": p["index"], "op": p["op"], "instructions": p["instructions"]}
                                      for p in fw["per_op"] if p.get("depth", 0) == 0]
    return out


def _size(p: Path) -> int:
    """Model bytes: the file itself, or for TFLite Micro sources the model their array holds."""
    p = Path(p)
    if p.is_dir():
        return int(json.loads((p / "manifest.json").read_text())["metrics"]["model_bytes"])
    return p.stat().st_size


_done = False


def _register_builtin() -> None:
    global _done
    if not _done:
        from workbench.pipeline import optimize_steps  # noqa: F401  (registers prune, cluster and qat)

        _done = True
