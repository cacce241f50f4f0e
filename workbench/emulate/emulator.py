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
from workbench.core.errors import ConfigError, MissingDependencyError, RuntimeFailure, ToolFailure, UnsupportedError, WorkbenchError
from workbench.core.files import check_input_file, sha256_file
from workbench.core.registry import Registry

# The runner that executes a model as the target would, per target runtime.
TARGET_RUNNERS: Registry = Registry("target runtime")
# What the report says of the runtime that ran the model (module, version, threads), per target runtime
# registered by a board adapter; each takes the emulation's context.
RUNTIME_INFO: Registry = Registry("target runtime")
# Model formats a Linux board runs in a runtime other than the profile's LiteRT: format -> "module:function"
# giving (the board as it runs that model, the graph to cost); the module registers its runtime above and
# in compat.CHECKERS and memory.MEASURERS.
BOARD_ADAPTERS = {"onnx": "workbench.emulate.ort_board:onnx_target", "ort": "workbench.emulate.ort_board:onnx_target",
                  "pte": "workbench.emulate.pte_board:pte_target"}


@TARGET_RUNNERS.register("tflm")
def _tflm_runner(handle, target: Target, threads: int):
    from workbench.runtimes.tflm import TflmRunner

    return TflmRunner(handle)


@TARGET_RUNNERS.register("litert")
def _litert_runner(handle, target: Target, threads: int):
    from workbench.runtimes.litert import LiteRTRunner

    return LiteRTRunner(handle, threads=threads, kernels="xnnpack")


def emulate(model_path: str | Path, target: str | Path | Target, eval_data=None, reference=None, threads: int | None = None,
            *, eval_samples: int | None = 500, timeout: float = 120.0, firmware: bool | None = None,
            tflm_dir=None, metric: str | None = None, opt_level: str | None = None) -> TargetReport:
    """Emulate ``model_path`` (a .tflite) on ``target`` (a profile name, a YAML path or a Target).

    ``eval_data``: a Dataset or a data spec (opened with split "test" and ``eval_samples``);
    with it the report holds the accuracy of the model run in the target's runtime, compared
    with ``reference`` (a model path or ModelHandle run in its own runtime) when given;
    ``metric`` names the task metric (:mod:`workbench.evaluate.metrics`; default: top1 for classifiers).

    ``firmware``: for MCU targets, build and run the model's real firmware on QEMU
    (:mod:`workbench.emulate.on_firmware`). ``None`` (default): whenever the toolchain, QEMU
    and a TFLM tree (``tflm_dir`` or ``WORKBENCH_TFLM_DIR``) are available, else the estimate
    with a note saying why; ``True``: required (a missing piece is an error); ``False``: the
    estimate only. ``opt_level`` (``-Os``, ``-O2``, ``-O3``, ...): build every TFLM and CMSIS-NN source of
    the firmware at that level, as the user's build system does (mbed-os, the Arduino Mbed core and Zephyr
    use -Os); None keeps TFLM's Makefile levels (-Os framework, -O2 kernels).

    A tool that fails while the firmware is built or run (a build that fails or times out, a
    link error, QEMU timing out, a tool missing part-way) gives no verdict on the model: the
    report keeps what is known without it (flash, RAM and latency estimates, accuracy on the
    host TFLite Micro) and has ``tool_failure`` set, so ``fits`` is None and ``to_dict()`` has
    ``"fits": None`` and ``"tool_failure": "<cause>"``; the CLI exits 4 (3 for a missing tool).
    Such a report is not a result to cache.
    """
    from workbench.frontends import load

    tgt = load_target(target)
    path = check_input_file(model_path)
    _check_opt_level(opt_level, tgt, firmware)
    handle = load(path)
    onnx_graph = None  # the graph a board adapter gives (ONNX Runtime for .onnx/.ort, ExecuTorch for .pte)
    if handle.format in BOARD_ADAPTERS:
        from workbench.core.isolate import resolve

        tgt, onnx_graph = resolve(BOARD_ADAPTERS[handle.format])(handle, tgt)
    elif handle.format != "tflite":
        raise UnsupportedError(f"emulate works on .tflite models, and on .onnx/.ort/.pte models for Linux boards; '{path}' is "
                               f"{handle.format}.", hint="Export it first: workbench export MODEL --format tflite -o model.tflite "
                                                         "(or --format onnx / executorch for a Linux board)")
    if tgt.npu is not None:  # a board with an NPU: its compiler's estimate (workbench.emulate.npu)
        from workbench.emulate.npu import emulate_on_npu

        return emulate_on_npu(path, handle, tgt, threads=threads, eval_data=eval_data, reference=reference,
                              eval_samples=eval_samples, metric=metric, timeout=max(timeout, 300.0),
                              firmware=firmware, tflm_dir=tflm_dir, opt_level=opt_level)
    graph = handle.meta["graph"] if onnx_graph is None else onnx_graph
    n_threads = 1 if tgt.runtime.name == "tflm" else max(1, min(threads or tgt.threads, tgt.cores))
    context: dict = {"timeout": timeout, "threads": n_threads}
    if tgt.runtime.name == "litert":
        context["litert"] = memory.measure_litert(path, n_threads, timeout)
    support = compat.check(graph, tgt.runtime.name, str(path), context)
    notes: list[str] = []
    fw, accuracy, support, tool_failure = _on_firmware(handle, tgt, support, firmware, tflm_dir, eval_data, reference,
                                                       eval_samples, notes, metric=metric, opt_level=opt_level)
    if fw is not None:
        from workbench.emulate.on_firmware import firmware_memory

        notes.extend(_level_note(opt_level))

        mem = firmware_memory(fw, tgt)
    else:
        mem, support = _memory(path, graph, tgt, context, support)
    latency = estimate_latency(graph, tgt, n_threads, set(support.delegated) if support.delegated is not None else None)
    notes = list(support.notes) + notes
    runtime_info: dict = {}
    if tgt.runtime.name == "tflm":
        from workbench.runtimes.tflm import tflm_version

        runtime_info["tflite_micro"] = tflm_version()
        if mem.arena_bytes is not None and fw is None:
            notes.append("The arena is measured with the host (64-bit) TFLite Micro build and its recording allocator; "
                         "a 32-bit MCU build needs the same or a little less.")
    elif context.get("litert") and "error" not in context["litert"]:
        lm = context["litert"]
        runtime_info.update({"module": lm.get("module"), "version": lm.get("version"),
                             "delegated_ops": len(lm.get("delegated") or []), "xnnpack_partitions": lm.get("partitions")})
    elif RUNTIME_INFO.find(tgt.runtime.name) is not None:
        runtime_info.update(RUNTIME_INFO.get(tgt.runtime.name)(context))
    if eval_data is not None and support.supported and accuracy is None:
        accuracy = _accuracy(handle, tgt, n_threads, eval_data, reference, eval_samples, metric=metric)
    return TargetReport(target=tgt, model=str(path), model_bytes=path.stat().st_size, model_sha256=sha256_file(path),
                        memory=mem, latency=latency, unsupported_ops=support.unsupported, notes=tuple(notes),
                        accuracy=accuracy, runtime=runtime_info, firmware=fw, tool_failure=tool_failure)


def _tool_failure(exc: WorkbenchError) -> dict:
    """What the report keeps of a tool's failure (not a verdict on the model)."""
    missing = isinstance(exc, MissingDependencyError)
    return {"kind": "missing_tool" if missing else "tool_failure", "message": exc.message, "hint": exc.hint,
            "exit_code": exc.exit_code}


def _firmware_problem(exc: WorkbenchError, graph) -> dict:
    """The unsupported-op entry for a firmware that could not run the model, naming the op TFLM named."""
    problem = getattr(exc, "problem", None) or {"kind": "firmware_failure", "message": exc.message}
    node = getattr(exc, "tflm_node", None)
    if node is not None and "index" not in problem:
        from workbench.runtimes.tflm import layer_label, node_op

        op = node_op(graph, node)
        problem = {**problem, "op": node["op"], "tflm_node": node["number"], "phase": node["stage"]}
        if op is not None:
            problem.update({"index": op.index, "layer": op.name, "message": f"op {op.index} {op.kind} (layer "
                            f"'{layer_label(op)}') failed to {node['stage']} on the firmware: {exc.message}"})
    if exc.hint:
        problem = {**problem, "hint": exc.hint}
    return problem


def _check_opt_level(opt_level: str | None, tgt: Target, firmware: bool | None) -> None:
    """An optimisation level is a property of a firmware build: refused where no firmware is built (the level
    itself is checked by the firmware library)."""
    if opt_level is None:
        return
    if tgt.runtime.name != "tflm" or firmware is False:
        why = "--no-firmware gives the estimate only" if firmware is False else f"'{tgt.name}' runs {tgt.runtime.name}"
        raise ConfigError(f"An optimisation level ({opt_level}) applies to the MCU firmware build, and none is built "
                          f"here: {why}.", hint="Leave --opt-level out, or emulate on an MCU target with the firmware.")


def _level_note(opt_level: str | None) -> tuple[str, ...]:
    """What the default build level means for the latency, when no level was chosen."""
    if opt_level is not None:
        return ()
    return ("The firmware is compiled at TFLite Micro's own levels (-Os framework, -O2 kernels and CMSIS-NN); a build "
            "that compiles every source at -Os (mbed-os, the Arduino Mbed core, Zephyr) executes more instructions "
            "(+18% on TFLM's person-detection model on a Cortex-M4): --opt-level -Os measures that build.",)


def _on_firmware(handle, tgt: Target, support: compat.Compat, firmware: bool | None, tflm_dir, eval_data, reference,
                 eval_samples, notes: list[str], metric: str | None = None, opt_level: str | None = None):
    """(firmware report or None, accuracy or None, support, tool failure or None): the firmware run
    when it can and should happen.

    A model the firmware cannot build (an op the TFLM tree lacks) or run (a kernel that
    aborts) becomes an unsupported op of the report, so the verdict still comes. A tool that
    fails (ToolFailure, a tool missing part-way) is returned as the tool failure: no verdict."""
    if tgt.runtime.name != "tflm" or firmware is False or not support.supported:
        return None, None, support, None
    model_bytes = Path(handle.path).stat().st_size
    room = _machine_code_bytes(tgt)
    if room is not None and model_bytes > room:
        # The emulated machine is bigger than the board, but not without limit: a model larger than its code
        # memory cannot be linked (building such a firmware only to see the linker overflow takes minutes).
        notes.append(f"Not run on firmware: the model alone ({model_bytes:,} B) is larger than the emulated machine's "
                     f"code memory ({room:,} B); flash, RAM and latency are the documented estimates.")
        return None, None, support, None
    from workbench.emulate.firmware import firmware_support

    why_not = None if firmware else firmware_support(tgt, tflm_dir=tflm_dir)
    if why_not is not None:
        notes.append(f"Not run on firmware ({why_not}): flash, RAM and latency are the documented estimates. "
                     "`workbench firmware setup` and the install line in the README give the real firmware.")
        return None, None, support, None
    from workbench.emulate.firmware import ImageOverflow, run_firmware
    from workbench.emulate.on_firmware import FirmwareRunner

    try:
        if eval_data is None:
            fw = run_firmware(handle.path, tgt, tflm_dir=tflm_dir, opt_level=opt_level)
            notes.extend(fw.notes)
            return fw, None, support, None
        runner = FirmwareRunner(handle, tgt, tflm_dir, opt_level)
        accuracy = _accuracy(handle, tgt, 1, eval_data, reference, eval_samples, runner=runner, metric=metric)
        if runner.last is not None:
            from workbench.emulate.on_firmware import lsb_agreement

            try:
                accuracy["vs_litert"] = lsb_agreement(handle, *runner.last)
            except WorkbenchError as exc:  # e.g. a LUT-compressed model: LiteRT has no DECODE kernel
                accuracy["vs_litert"] = {"skipped": exc.message.splitlines()[0][:300]}
        notes.extend(runner.report.notes if runner.report is not None else ())
        return runner.report, accuracy, support, None
    except (ToolFailure, MissingDependencyError) as exc:  # the tool failed, not the model: no verdict
        notes.append(f"No verdict: the firmware emulation failed ({exc.message.splitlines()[0][:300]}); flash, RAM "
                     "and latency are the documented estimates.")
        return None, None, support, _tool_failure(exc)
    except ImageOverflow as exc:  # too big for the emulated machine: a size, not a defect
        said = next((ln for ln in exc.message.splitlines() if "overflowed" in ln or "will not fit" in ln), "")
        notes.append(f"Not run on firmware: the linked image does not fit the emulated machine's memory "
                     f"({said.strip()[:200]}); flash, RAM and latency are the documented estimates.")
        return None, None, support, None
    except (UnsupportedError, RuntimeFailure) as exc:
        problem = _firmware_problem(exc, handle.meta["graph"])
        notes.append(f"The firmware could not be built or run: {exc.message}")
        return None, None, compat.Compat(unsupported=(problem,), delegated=support.delegated, notes=support.notes), None


def _memory(path: Path, graph, tgt: Target, context: dict, support: compat.Compat):
    """Flash and RAM, and the op support updated with what the runtime itself found.

    Whatever stops the runtime (an op without a kernel, a kernel that aborts while running),
    the flash is still known, so the verdict is always given; the RAM is measured where
    allocation still succeeds (a failure in invoke) and unknown otherwise, with the reason."""
    if not support.supported:
        return memory.flash_only(path, tgt, "the runtime cannot load the model: " + support.unsupported[0]["message"]), support
    try:
        return memory.measure(path, graph, tgt, context), support
    except (UnsupportedError, RuntimeFailure) as exc:  # found by the runtime itself
        problem = getattr(exc, "problem", None)
        if problem is None and isinstance(exc, UnsupportedError):
            raise
        problem = problem or {"kind": "runtime_failure", "message": exc.message}
        problem = {**problem, "detail": exc.message}
        if exc.hint:
            problem["hint"] = exc.hint
        support = compat.Compat(unsupported=(problem,), delegated=support.delegated, notes=support.notes)
        arena = getattr(exc, "arena_bytes", None)
        if arena is not None and tgt.runtime.name == "tflm":
            return memory.tflm_with_arena(path, tgt, arena, "smallest arena with which the host TFLM build allocates "
                                          "(it fails in invoke, so allocation alone was measured)"), support
        return memory.flash_only(path, tgt, exc.message), support


def _machine_code_bytes(tgt: Target) -> int | None:
    """Bytes the QEMU machine for the target's core has for code and the model, or None when there is none."""
    from workbench.emulate.firmware.machines import machine_for_core, machine_problem

    if machine_problem(tgt.core):
        return None
    return machine_for_core(tgt.core).code.size


def _accuracy(handle, target: Target, threads: int, eval_data, reference, eval_samples, runner=None, metric=None) -> dict:
    from workbench.data import Dataset, open_data
    from workbench.evaluate.compare import compare_runners, predict
    from workbench.runtimes import open_runner

    data = eval_data if isinstance(eval_data, Dataset) else open_data(str(eval_data), split="test", limit=eval_samples)
    if eval_samples and isinstance(eval_data, Dataset) and len(data) > eval_samples:
        data = data.take(eval_samples, seed=0)
    cand = runner or TARGET_RUNNERS.get(target.runtime.name)(handle, target, threads)
    try:
        if reference is not None:
            ref = open_runner(reference)
            try:
                comp = compare_runners(ref, cand, data, ref_name=str(getattr(reference, "path", reference)),
                                       cand_name=f"{handle.path} on {target.name}", metric=metric)
            finally:
                ref.close()
            return comp.to_dict()
        y = predict(cand, data, str(handle.path))
        out = {"candidate": f"{handle.path} on {target.name}", "data": data.name, "samples": int(len(data)),
               "candidate_runtime": cand.info()}
        from workbench.data.dataset import fit_to_input
        from workbench.evaluate.metrics import model_metric

        spec = cand.inputs[0]
        x = fit_to_input(data.x, spec.shape, spec.layout, data.name, str(handle.path))
        out.update(model_metric(y, x, data.y, metric))
        return out
    finally:
        cand.close()
