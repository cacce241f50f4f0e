"""What pruning and QAT are judged by: sizes, sparsity, int8 .tflite size, LiteRT latency, accuracy.

Every number comes from a real file or a real runtime: the saved model file (and its gzip
size, which is what unstructured sparsity changes), the int8 .tflite that ``convert_model``
writes from it, and LiteRT running that file on a single thread.
"""

from __future__ import annotations

import gzip
import statistics
import time
from pathlib import Path

import numpy as np

from workbench.data.dataset import Dataset
from workbench.core.errors import WorkbenchError
from workbench.frontends.handle import ModelHandle


def file_sizes(path: str | Path) -> dict:
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    raw = b"".join(f.read_bytes() for f in files)
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def latency_us(tflite_paths: list[str | Path], runs: int = 300, rounds: int = 5, warmup: int = 30,
               threads: int = 1, kernels: str = "xnnpack") -> list[dict]:
    """LiteRT latency of one inference of each model, timed around ``invoke()`` alone (the input is
    set once). The models take turns over ``rounds`` rounds so that load from other processes hits
    them alike; the reported figure is the best round's median. ``kernels``: ``xnnpack`` (LiteRT's
    default) or ``builtin`` (LiteRT's own kernels, no delegate)."""
    from workbench.runtimes import open_runner

    interps = []
    for path in tflite_paths:
        interp = open_runner(path, "litert", threads=threads, kernels=kernels).interp
        detail = interp.get_input_details()[0]
        interp.set_tensor(detail["index"], np.zeros(detail["shape"], dtype=detail["dtype"]))
        for _ in range(warmup):
            interp.invoke()
        interps.append(interp)
    per_round = max(1, runs // rounds)
    medians: list[list[float]] = [[] for _ in interps]
    means: list[list[float]] = [[] for _ in interps]
    for _ in range(rounds):
        for k, interp in enumerate(interps):
            times = []
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                interp.invoke()
                times.append(time.perf_counter_ns() - t0)
            medians[k].append(statistics.median(times) / 1000.0)
            means[k].append(statistics.fmean(times) / 1000.0)
    return [{"median_us": round(min(m), 2), "mean_us": round(statistics.fmean(a), 2), "runs": per_round * rounds,
             "threads": threads, "kernels": kernels} for m, a in zip(medians, means)]


def accuracy_of(model: str | Path | ModelHandle, data: Dataset | None, runtime: str | None = None, **runner_options) -> float | None:
    """Top-1 accuracy of a model in its real runtime (None without labels)."""
    if data is None or data.y is None:
        return None
    from workbench.evaluate.compare import accuracy
    from workbench.frontends import load
    from workbench.runtimes import open_runner

    handle = model if isinstance(model, ModelHandle) else load(model)
    runner = open_runner(handle, runtime, **runner_options)
    try:
        return round(accuracy(runner, data, f"'{handle.path}'"), 6)
    finally:
        runner.close()


def int8_tflite(handle: ModelHandle, calib: Dataset, out: Path, calib_samples: int = 200, seed: int = 0,
                per_channel: bool = True) -> Path:
    import warnings

    from workbench.export.convert import convert_model

    with warnings.catch_warnings():  # converter chatter; the comparison reports what matters
        warnings.simplefilter("ignore")
        convert_model(handle, "tflite", out, scheme="int8", calib=calib, calib_samples=min(calib_samples, len(calib)),
                    seed=seed, per_channel=per_channel, overwrite=True, write_manifest=False)
    return out


def deployed_metrics(handle: ModelHandle, calib: Dataset, val: Dataset | None, calib_samples: int, out: Path) -> dict:
    """Export ``handle`` to an int8 .tflite at ``out`` and measure its size and accuracy (latency is
    measured afterwards for several models together, see :func:`latency_us`)."""
    try:
        int8_tflite(handle, calib, out, calib_samples)
    except WorkbenchError as exc:
        return {"error": f"int8 export failed: {exc.message}"}
    sizes = file_sizes(out)
    return {"tflite_bytes": sizes["bytes"], "tflite_gzip_bytes": sizes["gzip_bytes"], "accuracy": accuracy_of(out, val, "litert")}


def weight_bytes(arrays) -> dict:
    """Size of a layer's float weights as stored, and gzipped (what unstructured zeros change)."""
    raw = b"".join(np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in arrays)
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0))}


def totals(layers: list[dict]) -> dict:
    params = sum(r["params"] for r in layers)
    zeros = sum(r["zeros"] for r in layers)
    return {"params": params, "nonzero_params": params - zeros, "sparsity": round(zeros / params, 6) if params else 0.0}


def layer_table(before: list[dict], after: list[dict]) -> list[dict]:
    """One row per layer: parameters, sparsity and shape before and after (None where a side lacks the layer)."""
    b = {r["layer"]: r for r in before}
    a = {r["layer"]: r for r in after}
    rows = []
    for name in list(b) + [n for n in a if n not in b]:
        rb, ra = b.get(name), a.get(name)
        rows.append({
            "layer": name, "kind": (rb or ra)["kind"],
            "params_before": rb["params"] if rb else None, "params_after": ra["params"] if ra else None,
            "sparsity_before": round(rb["zeros"] / rb["params"], 4) if rb and rb["params"] else None,
            "sparsity_after": round(ra["zeros"] / ra["params"], 4) if ra and ra["params"] else None,
            "shape_before": rb["shape"] if rb else None, "shape_after": ra["shape"] if ra else None,
            "bytes_before": rb.get("bytes") if rb else None, "bytes_after": ra.get("bytes") if ra else None,
            "gzip_bytes_before": rb.get("gzip_bytes") if rb else None, "gzip_bytes_after": ra.get("gzip_bytes") if ra else None,
        })
    return rows
