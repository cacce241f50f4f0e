"""``emulate(model, target)``: will this .tflite fit the board, how fast will it run, and what
accuracy does the board's runtime give?

Flash and RAM are exact where they can be (the TFLM arena is measured in TFLM itself; a
LiteRT board's resident memory is measured with LiteRT on this machine), latency is an
estimate from the documented cost model of :mod:`workbench.emulate.cost`, op support comes
from the target runtime's own op set, and accuracy from running the model in that runtime.
"""

from __future__ import annotations

from pathlib import Path

from workbench.emulate import compat, memory
from workbench.emulate.cost import estimate_latency
from workbench.emulate.report import TargetReport
from workbench.emulate.targets import Target, load_target
from workbench.core.errors import UnsupportedError
from workbench.core.files import check_input_file, sha256_file
from workbench.core.registry import Registry

# The runner that executes a model as the target would, per target runtime.
TARGET_RUNNERS: Registry = Registry("target runtime")


@TARGET_RUNNERS.register("tflm")
def _tflm_runner(handle, target: Target, threads: int):
    from workbench.runtimes.tflm import TflmRunner

    return TflmRunner(handle)


@TARGET_RUNNERS.register("litert")
def _litert_runner(handle, target: Target, threads: int):
    from workbench.runtimes.litert import LiteRTRunner

    return LiteRTRunner(handle, threads=threads, kernels="xnnpack")


def emulate(model_path: str | Path, target: str | Path | Target, eval_data=None, reference=None, threads: int | None = None,
            *, eval_samples: int | None = 500, timeout: float = 120.0) -> TargetReport:
    """Emulate ``model_path`` (a .tflite) on ``target`` (a profile name, a YAML path or a Target).

    ``eval_data``: a Dataset or a data spec (opened with split "test" and ``eval_samples``);
    with it the report holds the accuracy of the model run in the target's runtime, compared
    with ``reference`` (a model path or ModelHandle run in its own runtime) when given.
    """
    from workbench.frontends import load

    tgt = load_target(target)
    path = check_input_file(model_path)
    handle = load(path)
    if handle.format != "tflite":
        raise UnsupportedError(f"emulate works on .tflite models; '{path}' is {handle.format}.",
                               hint="Export it first: workbench export MODEL --format tflite -o model.tflite")
    graph = handle.meta["graph"]
    n_threads = 1 if tgt.runtime.name == "tflm" else max(1, min(threads or tgt.threads, tgt.cores))
    context: dict = {"timeout": timeout, "threads": n_threads}
    if tgt.runtime.name == "litert":
        context["litert"] = memory.measure_litert(path, n_threads, timeout)
    support = compat.check(graph, tgt.runtime.name, str(path), context)
    mem = None
    if support.supported:
        try:
            mem = memory.measure(path, graph, tgt, context)
        except UnsupportedError as exc:  # found by the runtime itself: an op it refuses
            problem = getattr(exc, "problem", None)
            if problem is None:
                raise
            support = compat.Compat(unsupported=(problem,), delegated=support.delegated, notes=support.notes)
    latency = estimate_latency(graph, tgt, n_threads, set(support.delegated) if support.delegated is not None else None)
    notes = list(support.notes)
    runtime_info: dict = {}
    if tgt.runtime.name == "tflm":
        from workbench.runtimes.tflm import tflm_version

        runtime_info["tflite_micro"] = tflm_version()
        if mem is not None:
            notes.append("The arena is measured with the host (64-bit) TFLite Micro build and its recording allocator; "
                         "a 32-bit MCU build needs the same or a little less.")
    elif context.get("litert") and "error" not in context["litert"]:
        lm = context["litert"]
        runtime_info.update({"module": lm.get("module"), "version": lm.get("version"),
                             "delegated_ops": len(lm.get("delegated") or []), "xnnpack_partitions": lm.get("partitions")})
    accuracy = None
    if eval_data is not None and support.supported:
        accuracy = _accuracy(handle, tgt, n_threads, eval_data, reference, eval_samples)
    return TargetReport(target=tgt, model=str(path), model_bytes=path.stat().st_size, model_sha256=sha256_file(path),
                        memory=mem, latency=latency, unsupported_ops=support.unsupported, notes=tuple(notes),
                        accuracy=accuracy, runtime=runtime_info)


def _accuracy(handle, target: Target, threads: int, eval_data, reference, eval_samples) -> dict:
    from workbench.data import Dataset, open_data
    from workbench.evaluate.compare import compare_runners, predict
    from workbench.runtimes import open_runner

    data = eval_data if isinstance(eval_data, Dataset) else open_data(str(eval_data), split="test", limit=eval_samples)
    if eval_samples and isinstance(eval_data, Dataset) and len(data) > eval_samples:
        data = data.take(eval_samples, seed=0)
    cand = TARGET_RUNNERS.get(target.runtime.name)(handle, target, threads)
    try:
        if reference is not None:
            ref = open_runner(reference)
            try:
                comp = compare_runners(ref, cand, data, ref_name=str(getattr(reference, "path", reference)),
                                       cand_name=f"{handle.path} on {target.name}")
            finally:
                ref.close()
            return comp.to_dict()
        y = predict(cand, data, str(handle.path))
        out = {"candidate": f"{handle.path} on {target.name}", "data": data.name, "samples": int(len(data)),
               "candidate_runtime": cand.info()}
        if data.y is not None and y.reshape(len(y), -1).shape[1] > 1:
            out["accuracy"] = float((y.reshape(len(y), -1).argmax(1) == data.y).mean())
        return out
    finally:
        cand.close()
