"""The child process that runs TensorFlow Lite Micro for :mod:`workbench.runtimes.tflm`.

TFLM's Python interpreter segfaults when its arena is far too small (below about 400
bytes) and reports most errors only on the C stderr, so workbench never runs it in its own
process. The parent starts ``python -m workbench.runtimes.tflm_child COMMAND ...`` and
reads one JSON document from the last stdout line that starts with ``RESULT_PREFIX``.

Inside this child, every arena size tried runs in a forked process of its own: a too-small
arena can also abort or segfault inside a kernel's Prepare, and an interpreter created in a
process where allocations already failed was seen to crash (see :func:`attempt`).

Commands:

``probe NAME...``
    Which builtin ops (and which of the given custom op names) the interpreter's op
    resolver registers. For each builtin code a one-op model is built whose op carries
    custom options: a registered op then fails *after* the resolver lookup ("found builtin
    operator X with custom options"), a missing one fails *in* it ("Didn't find op for
    builtin opcode"), so no kernel is ever initialised. A custom name is followed by a
    builtin op with custom options, which fails only if the custom lookup succeeded.
``arena MODEL``
    The smallest tensor arena with which the model allocates and runs (see
    :func:`measure`).
``run MODEL INPUTS.npy OUTPUTS.npy [ARENA]``
    Run every sample of INPUTS (already in the model's input dtype) and save the first
    output of each.

Only the standard library, numpy, flatbuffers and tflite_micro are imported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import tempfile

RESULT_PREFIX = "@@tflm-result "
PHASE_INVOKE = "@@tflm-phase invoke"  # written by an attempt once allocation has succeeded
# Arena sizes tried in turn until the model allocates; a model that fails at all of them
# fails for another reason than the arena (or needs more than any MCU has).
ARENA_LADDER = (1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28)
# Never try an arena below this: TFLM's Python build crashes below about 400 bytes.
SAFE_FLOOR = 1024
# How far below the reported total the search starts (alignment padding is < 16 bytes per region).
ALIGN_SLACK = 64
# TFLM's own message naming the node that failed (some TFLM versions print "(number 246f)").
_FAILED_NODE = re.compile(r"Node (\S+) \(number (\d+)[a-z]?\) failed to (invoke|prepare)")
_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_HEAD = re.compile(r"Arena allocation head (\d+) bytes")
_TAIL = re.compile(r"Arena allocation tail (\d+) bytes")


@contextlib.contextmanager
def c_stderr(log: list):
    """Capture what C++ writes to file descriptor 2 into ``log`` (one string per block)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.append(tmp.read().decode("utf-8", "replace"))


def _runtime():
    from tflite_micro import runtime

    return runtime


def try_allocate(runtime, data: bytes, arena: int, invoke: bool = False):
    """(interpreter or None, captured C stderr) for one arena size, in this process."""
    log: list = []
    interp = None
    with c_stderr(log):
        try:
            interp = runtime.Interpreter.from_bytes(data, arena_size=int(arena))
            if invoke:
                _invoke_zeros(interp, data)
        except (RuntimeError, ValueError):
            interp = None
    return interp, log[0]


def attempt(runtime, data: bytes, arena: int, invoke: bool = True, report: bool = False) -> tuple[bool, str]:
    """Does the model allocate (and run) with ``arena`` bytes? (ok, captured C stderr).

    Some arena sizes that are too small do not fail cleanly: TFLM aborts or segfaults in a
    kernel's Prepare. So each attempt runs in a forked process (copy-on-write, a few ms),
    and a crash counts as "does not run". Without fork (Windows) the attempt runs here.
    """
    if not hasattr(os, "fork"):
        interp, log = try_allocate(runtime, data, arena, invoke)
        if interp is not None and report:
            plog: list = []
            with c_stderr(plog):
                interp.print_allocations()
            log += plog[0]
        return interp is not None, log
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        pid = os.fork()
        if pid == 0:  # the attempt: report through the exit code and the captured stderr
            code = 5
            try:
                os.dup2(tmp.fileno(), 2)
                interp = runtime.Interpreter.from_bytes(data, arena_size=int(arena))
                if invoke:
                    os.write(2, PHASE_INVOKE.encode() + b"\n")  # allocation is done: a crash from here on is in invoke
                    _invoke_zeros(interp, data)
                if report:
                    interp.print_allocations()
                code = 0
            except BaseException:  # noqa: BLE001 - any failure means "does not run"
                code = 5
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        tmp.seek(0)
        log = tmp.read().decode("utf-8", "replace")
    if os.WIFSIGNALED(status):
        log += f"\nTFLite Micro crashed with signal {os.WTERMSIG(status)} at an arena of {arena} bytes."
        return False, log
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log


def parse_failed_node(log: str) -> dict | None:
    """The first node TFLM names as failing ("Node SQRT (number 246) failed to invoke with status 1"):
    {"op", "number" (its index in its subgraph), "stage" ("invoke" or "prepare")}, or None."""
    m = _FAILED_NODE.search(log or "")
    if m is None:
        return None
    return {"op": m.group(1), "number": int(m.group(2)), "stage": m.group(3)}


def _num_inputs(data: bytes) -> int:
    s = _schema()
    return s.Model.GetRootAs(data, 0).Subgraphs(0).InputsLength()


def _invoke_zeros(interp, data: bytes) -> None:
    import numpy as np

    for i in range(_num_inputs(data)):
        d = interp.get_input_details(i)
        interp.set_input(np.zeros(tuple(int(v) for v in d["shape"]), dtype=d["dtype"]), i)
    interp.invoke()


def measure(path: str) -> dict:
    """The smallest arena with which MODEL allocates its tensors and runs one inference.

    1. Allocate with a generous arena (growing through ARENA_LADDER), invoke once and read
       RecordingMicroAllocator's "Arena allocation total N bytes". N is close to the minimum
       but not a bound: the allocator aligns its head and tail to 16 bytes, so where the
       arena ends shifts the padding by a few bytes either way, and temporary allocations
       during Prepare can need a little more than what is left allocated at the end.
    2. Find a size that fails at or below N - ALIGN_SLACK (stepping down, never below
       SAFE_FLOOR) and one that runs at or above N (stepping up), and bisect between them.
    Every attempt allocates and invokes once, in a forked process (see :func:`attempt`).
    """
    runtime = _runtime()
    with open(path, "rb") as fh:
        data = fh.read()
    working, log = None, ""
    for size in ARENA_LADDER:
        ok, log = attempt(runtime, data, size, invoke=True, report=True)
        if ok:
            working = size
            break
    if working is None:
        if PHASE_INVOKE not in log:
            return {"error": "allocate", "phase": "allocate", "log": log, "arena_tried": ARENA_LADDER[-1]}
        # It allocates but fails in invoke: the arena is still known (allocation only). The op that
        # fails is the node TFLM names in its message; only when it names none, the first op whose
        # truncated model fails (bisection).
        alloc = next((s for s in ARENA_LADDER if attempt(runtime, data, s, invoke=False)[0]), ARENA_LADDER[-1])
        node = parse_failed_node(log)
        out = {"error": "invoke", "phase": "invoke", "log": log, "arena_tried": ARENA_LADDER[-1],
               "allocation_arena_bytes": _bisect(runtime, data, alloc, invoke=False)}
        if node is not None:
            return {**out, "failed_node": node, "op_index_source": "tflm"}
        return {**out, "op_index": failing_op(runtime, data, alloc), "op_index_source": "bisection"}
    text = log
    m = _TOTAL.search(text)
    reported = int(m.group(1)) if m else None
    head = _HEAD.search(text)
    tail = _TAIL.search(text)
    attempts = 0
    start = max(SAFE_FLOOR, reported or SAFE_FLOOR)
    # a failing lower end
    lo, step = max(SAFE_FLOOR, start - ALIGN_SLACK), ALIGN_SLACK
    while True:
        attempts += 1
        if not attempt(runtime, data, lo)[0]:
            break
        if lo == SAFE_FLOOR:  # runs even at the floor: report the floor, nothing smaller is tried
            return _measured(SAFE_FLOOR, reported, head, tail, attempts, text, exact=False)
        step *= 2
        lo = max(SAFE_FLOOR, lo - step)
    # a working upper end
    hi, step = start, 64
    while hi < working:
        attempts += 1
        if attempt(runtime, data, hi)[0]:
            break
        lo = hi
        hi, step = min(working, hi + step), step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        attempts += 1
        if attempt(runtime, data, mid)[0]:
            hi = mid
        else:
            lo = mid
    return _measured(hi, reported, head, tail, attempts, text)


def _bisect(runtime, data: bytes, working: int, invoke: bool) -> int:
    """The smallest arena (bytes, to SAFE_FLOOR) with which ``attempt`` succeeds, given one that does."""
    lo, hi = SAFE_FLOOR, working
    if attempt(runtime, data, lo, invoke=invoke)[0]:
        return lo
    while hi - lo > 16:
        mid = (lo + hi) // 2
        if attempt(runtime, data, mid, invoke=invoke)[0]:
            hi = mid
        else:
            lo = mid
    return hi


def truncated(data: bytes, last: int) -> bytes:
    """The model cut after operator ``last`` of the main subgraph, whose outputs become the model's."""
    import flatbuffers

    s = _schema()
    m = s.ModelT.InitFromPackedBuf(data, 0)
    sg = m.subgraphs[0]
    sg.operators = sg.operators[: last + 1]
    sg.outputs = [int(t) for t in sg.operators[last].outputs if int(t) >= 0]
    m.signatureDefs = None
    b = flatbuffers.Builder(len(data) + 4096)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def failing_op(runtime, data: bytes, arena: int) -> int | None:
    """Index of the first operator whose truncated model fails to invoke (bisection), or None."""
    n = _schema().Model.GetRootAs(data, 0).Subgraphs(0).OperatorsLength()
    if n == 0:
        return None
    lo, hi = -1, n - 1  # truncated(lo) runs (lo = -1: nothing), truncated(hi) fails
    try:
        if attempt(runtime, truncated(data, hi), arena)[0]:
            return None  # the truncated whole model runs: the failure is not in one op
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if attempt(runtime, truncated(data, mid), arena)[0]:
                lo = mid
            else:
                hi = mid
    except Exception:  # noqa: BLE001 - a model the schema cannot rewrite: the op stays unknown
        return None
    return hi


def _measured(arena: int, reported, head, tail, attempts: int, text: str, exact: bool = True) -> dict:
    return {"arena_bytes": arena, "exact": exact, "reported_total": reported, "head": int(head.group(1)) if head else None,
            "tail": int(tail.group(1)) if tail else None, "attempts": attempts, "log": text}


def run(path: str, inputs: str, outputs: str, arena: int | None = None) -> dict:
    import numpy as np

    runtime = _runtime()
    with open(path, "rb") as fh:
        data = fh.read()
    x = np.load(inputs, allow_pickle=False)
    interp, log = None, ""
    if not arena:  # the first size of the ladder that allocates and runs (tried in forked processes)
        for size in ARENA_LADDER:
            ok, log = attempt(runtime, data, size, invoke=True)
            if ok:
                arena = size
                break
        if not arena:
            return {"error": "allocate", "log": log, "arena_tried": ARENA_LADDER[-1]}
    interp, log = try_allocate(runtime, data, arena)
    if interp is None:
        return {"error": "allocate", "log": log}
    d = interp.get_input_details(0)
    shape = tuple(int(v) for v in d["shape"])
    outs = []
    rlog: list = []
    invoke_s = 0.0
    with c_stderr(rlog):
        try:
            for sample in x:
                interp.set_input(np.ascontiguousarray(sample.reshape(shape), dtype=d["dtype"]), 0)
                t0 = time.perf_counter()
                interp.invoke()
                invoke_s += time.perf_counter() - t0
                outs.append(np.array(interp.get_output(0), copy=True))
        except (RuntimeError, ValueError) as exc:
            failed = str(exc)
        else:
            failed = None
    if failed is not None:
        return {"error": "invoke", "message": failed, "log": rlog[0]}
    y = np.concatenate([o.reshape((1,) + o.shape[1:]) if o.ndim else o.reshape(1, 1) for o in outs]) if outs else np.zeros((0,))
    np.save(outputs, y, allow_pickle=False)
    return {"samples": len(outs), "arena_bytes": arena, "invoke_seconds": invoke_s}


def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as s

    return s


def _probe_model(s, code: int, custom_name: str | None = None) -> bytes:
    import flatbuffers

    def opcode(c: int, custom: str | None = None):
        oc = s.OperatorCodeT()
        oc.builtinCode = c
        oc.deprecatedBuiltinCode = min(c, 127)
        oc.version = 1
        if custom:
            oc.customCode = custom
        return oc

    def operator(index: int, custom_options: bool):
        op = s.OperatorT()
        op.opcodeIndex = index
        op.inputs = []
        op.outputs = []
        if custom_options:
            op.customOptions = [0]
        if code == s.BuiltinOperator.VAR_HANDLE and index == 0 and custom_name is None:
            # the Python wrapper counts resource variables by reading this option
            op.builtinOptionsType = s.BuiltinOptions.VarHandleOptions
            op.builtinOptions = s.VarHandleOptionsT()
            op.builtinOptions.sharedName = "probe"
        return op

    t = s.TensorT()
    t.shape = [1]
    t.type = s.TensorType.FLOAT32
    t.buffer = 0
    t.name = "t"
    sg = s.SubGraphT()
    sg.tensors = [t]
    sg.inputs = []
    sg.outputs = []
    m = s.ModelT()
    m.version = 3
    m.buffers = [s.BufferT()]
    if custom_name is None:
        m.operatorCodes = [opcode(code)]
        sg.operators = [operator(0, True)]
    else:
        m.operatorCodes = [opcode(s.BuiltinOperator.CUSTOM, custom_name), opcode(s.BuiltinOperator.ADD)]
        sg.operators = [operator(0, False), operator(1, True)]
    m.subgraphs = [sg]
    b = flatbuffers.Builder(256)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def probe(custom_names: list[str]) -> dict:
    s = _schema()
    runtime = _runtime()
    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    skip = {"CUSTOM", "DELEGATE", "PLACEHOLDER_FOR_GREATER_OP_CODES"}
    found, missing, unclear = [], [], []
    for code in sorted(names):
        name = names[code]
        if name in skip:
            continue
        _, log = try_allocate(runtime, _probe_model(s, code), 4096)
        if "with custom options" in log:
            found.append(name)
        elif "Didn't find op" in log:
            missing.append(name)
        else:
            unclear.append(name)
    custom = []
    for name in custom_names:
        _, log = try_allocate(runtime, _probe_model(s, 0, name), 4096)
        if "with custom options" in log:
            custom.append(name)
    return {"builtin": found, "missing": missing, "unclear": unclear, "custom": custom}


def _version() -> str | None:
    try:
        import tflite_micro

        return str(tflite_micro.__version__)
    except Exception:  # noqa: BLE001 - the version is informative only
        return None


def main(argv: list[str]) -> int:
    if not argv:
        sys.stdout.write("usage: python -m workbench.runtimes.tflm_child probe|arena|run ...\n")
        return 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "probe":
            result = probe(args)
        elif cmd == "arena":
            result = measure(args[0])
        elif cmd == "run":
            result = run(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else None)
        else:
            result = {"error": "usage", "message": f"unknown command {cmd!r}"}
    except ImportError as exc:
        result = {"error": "import", "message": str(exc), "module": getattr(exc, "name", None)}
    result["tflite_micro"] = _version()
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
