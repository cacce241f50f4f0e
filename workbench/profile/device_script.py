"""The on-device profiler: load time, first inference, latency distribution, peak memory,
per-op times where the runtime reports them, and the facts about the machine it ran on.

This file is used in two ways:

* imported, as ``workbench.profile.device_script``, by ``workbench.profile.run.profile``;
* as a self-contained script on a board that has no workbench install, only Python 3.7+,
  numpy and a runtime (ai-edge-litert, tflite-runtime or tensorflow for .tflite;
  onnxruntime for .onnx/.ort; executorch, which brings torch, for .pte)::

      python3 profiler.py model.tflite --runs 50 > report.json

  ``workbench profile --remote`` streams this file over ssh and runs it that way.

It must stay one file, whatever its length: ``profile --remote`` sends exactly this file
to the board and runs it there with nothing else installed. So it imports nothing from
workbench and only the standard library at module level;
numpy and the runtimes are imported when a profile starts, and a missing one is reported
as an error the caller can turn into "pip install ..." advice. Keep its syntax valid for
Python 3.7 (no walrus, no ``match``, no ``X | Y`` evaluated at run time).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

SCHEMA = "workbench.profile/1"
EVENT_PREFIX = "@@workbench-profiler "

# Exit codes of the script, matching the workbench CLI convention.
EXIT_CODES = {"missing_dependency": 3, "model_load": 2, "bad_input": 2, "run_failed": 1}


class ProfilerError(Exception):
    """A failure with a kind the caller maps to its own error type (see EXIT_CODES)."""

    def __init__(self, kind, message, hint=None, pip=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.hint = hint
        self.pip = pip  # for a missing dependency: what to pip install

    def to_dict(self):
        return {"kind": self.kind, "message": self.message, "hint": self.hint, "pip": self.pip}

    @property
    def exit_code(self):
        return EXIT_CODES.get(self.kind, 1)


def _numpy():
    try:
        import numpy

        return numpy
    except ImportError:
        raise ProfilerError("missing_dependency", "numpy is not installed for %s." % sys.executable,
                            hint="Install it: python3 -m pip install numpy", pip="numpy") from None


# --------------------------------------------------------------------------- runtimes

def _import_tflite():
    """(interpreter module, its name, version) of the first TFLite runtime that imports."""
    tried = []
    try:
        from ai_edge_litert import interpreter as mod

        return mod, "ai_edge_litert", _dist_version("ai-edge-litert", "ai_edge_litert")
    except ImportError as exc:
        tried.append("ai_edge_litert (%s)" % exc)
    try:
        from tflite_runtime import interpreter as mod

        return mod, "tflite_runtime", _dist_version("tflite-runtime", "tflite_runtime")
    except ImportError as exc:
        tried.append("tflite_runtime (%s)" % exc)
    try:
        import tensorflow as tf

        return tf.lite, "tensorflow.lite", getattr(tf, "__version__", None)
    except ImportError as exc:
        tried.append("tensorflow (%s)" % exc)
    raise ProfilerError(
        "missing_dependency",
        "No TFLite runtime is installed for %s; tried %s." % (sys.executable, "; ".join(tried)),
        hint="Install one: python3 -m pip install ai-edge-litert (or tflite-runtime, which needs numpy<2).",
        pip="ai-edge-litert")


def _dist_version(dist, module):
    try:
        from importlib import metadata

        return metadata.version(dist)
    except Exception:  # importlib.metadata is 3.8+; a vendored module may have no metadata
        mod = sys.modules.get(module)
        return getattr(mod, "__version__", None)


def _et_missing_operators(path):
    """Operator names in a .pte (flatbuffer strings "namespace::name") that this ExecuTorch runtime has no
    kernel for; [] when the runtime cannot list its kernels."""
    import re

    try:
        from executorch.extension.pybindings import portable_lib

        have = set(name.split(".", 1)[0] for name in portable_lib._get_operator_names())
        with open(path, "rb") as f:
            found = sorted(set(m.decode() for m in re.findall(rb"[a-z_][a-z0-9_]*::[A-Za-z0-9_]+", f.read())))
    except Exception:
        return []
    return [name for name in found if name not in have]


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Random inputs: floats uniform in [0, 1) (image-like), small integer types over their full
# range, and zeros for int32/int64/bool (often indices or lengths, where random values crash).
def resolve_shape(name, declared, given=None):
    """The shape to feed an input: ``declared`` (ints; None or a negative for a dynamic dim) with
    ``given`` (the user's --input-shape) filling it. A dynamic batch (dim 0) alone becomes 1; any
    other dynamic dim without ``given`` is refused, since a made-up size measures another model.
    Returns (shape, source) with source "model", "model, dynamic batch set to 1" or "--input-shape"."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in (declared or [])]
    shown = "[%s]" % ", ".join("?" if d is None else str(d) for d in dims)
    if given is not None:
        given = [int(d) for d in given]
        if len(given) != len(dims):
            raise ProfilerError("bad_input", "--input-shape %s has %d dims; input '%s' has %d: %s."
                                % (",".join(map(str, given)), len(given), name, len(dims), shown))
        fixed = [j for j, d in enumerate(dims) if d is not None and d != given[j]]
        if fixed:
            raise ProfilerError("bad_input", "--input-shape %s does not match input '%s' %s: dim %d is fixed at %d."
                                % (",".join(map(str, given)), name, shown, fixed[0], dims[fixed[0]]),
                                hint="Only the dynamic (?) dims can be chosen.")
        return given, "--input-shape"
    unknown = [j for j, d in enumerate(dims) if d is None and j > 0]
    if unknown:
        raise ProfilerError("bad_input", "Input '%s' has dynamic dims %s: the profiler will not make up its size."
                            % (name, shown),
                            hint="Pass --input-shape with the shape the device will see, batch first: %s with each "
                                 "<dN> chosen." % ",".join("1" if j == 0 and d is None else ("<d%d>" % j if d is None else str(d))
                                                           for j, d in enumerate(dims)))
    if dims and dims[0] is None:
        return [1] + dims[1:], "model, dynamic batch set to 1"
    return dims, "model"


def _random_input(np, rng, shape, dtype):
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.random(shape).astype(dt)
    if dt.kind in "iu" and dt.itemsize <= 2:
        info = np.iinfo(dt)
        return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dt)
    return np.zeros(shape, dtype=dt)


class LiteRTBackend:
    """.tflite models in ai_edge_litert, else tflite_runtime, else tf.lite."""

    name = "litert"
    suffix = ".tflite"

    def __init__(self, threads, input_shape=None):
        self.mod, self.module_name, self.version = _import_tflite()
        self.threads = threads
        self.input_shape = input_shape
        self.interp = None
        self.shape_sources = []

    def load(self, path):
        try:
            self.interp = self.mod.Interpreter(model_path=path, num_threads=self.threads)
            for k, d in enumerate(self.interp.get_input_details()):
                sig = d.get("shape_signature")
                declared = [int(s) for s in (sig if sig is not None and len(sig) else d["shape"])]
                shape, source = resolve_shape(d["name"], declared, self.input_shape if k == 0 else None)
                self.shape_sources.append(source)
                if list(shape) != [int(s) for s in d["shape"]]:
                    self.interp.resize_tensor_input(d["index"], list(shape))
            self.interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ProfilerError("model_load", "%s could not load the model: %s" % (self.module_name, _first_line(exc)),
                                hint="The model may use an op this runtime version lacks, or the file may be corrupt.")
        self._in = self.interp.get_input_details()
        self._out = self.interp.get_output_details()

    def inputs(self):
        return [{"name": d["name"], "shape": [int(s) for s in d["shape"]], "dtype": _dtype_name(d["dtype"]), "source": src}
                for d, src in zip(self._in, self.shape_sources)]

    def make_feeds(self, np, rng):
        return [_random_input(np, rng, tuple(int(s) for s in d["shape"]), d["dtype"]) for d in self._in]

    def run(self, feeds):
        interp = self.interp
        for d, x in zip(self._in, feeds):
            interp.set_tensor(d["index"], x)
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in self._out]

    timed_call = "Interpreter.invoke() (the inputs are set once before the runs, as benchmark_model does)"

    def timed(self, feeds):
        for d, x in zip(self._in, feeds):
            self.interp.set_tensor(d["index"], x)
        return self.interp.invoke

    def per_op(self, path, feeds, runs):
        return None, ("LiteRT's Python API has no per-op timer; for per-op times run TFLite's "
                      "benchmark_model tool with --enable_op_profiling=true on the device.")

    def info(self):
        return {"name": self.name, "module": self.module_name, "version": self.version, "threads": self.threads}


ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
             "tensor(int32)": "int32", "tensor(int64)": "int64", "tensor(bool)": "bool"}


class OrtBackend:
    """.onnx and .ort models in ONNX Runtime's CPU execution provider."""

    name = "ort"
    suffix = ".onnx"

    def __init__(self, threads, input_shape=None):
        try:
            import onnxruntime
        except ImportError as exc:
            raise ProfilerError("missing_dependency", "onnxruntime is not installed for %s (%s)." % (sys.executable, exc),
                                hint="Install it: python3 -m pip install onnxruntime", pip="onnxruntime") from None
        self.ort = onnxruntime
        self.module_name = "onnxruntime"
        self.version = getattr(onnxruntime, "__version__", None)
        self.threads = threads
        self.input_shape = input_shape
        self.sess = None
        self.shapes = []

    def _options(self, path, profile_prefix=None):
        so = self.ort.SessionOptions()
        so.log_severity_level = 3
        with open(path, "rb") as fh:
            if fh.read(8)[4:8] == b"ORTM":  # an .ort file, whatever its name
                so.add_session_config_entry("session.load_model_format", "ORT")
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        return so

    def _session(self, path, profile_prefix=None):
        try:
            return self.ort.InferenceSession(path, self._options(path, profile_prefix), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ProfilerError("model_load", "onnxruntime could not load the model: %s" % _first_line(exc),
                                hint="Check the model's opset against this onnxruntime version, or re-export it.")

    def load(self, path):
        self.sess = self._session(path)
        self._in = self.sess.get_inputs()
        self.shapes = [resolve_shape(i.name, i.shape, self.input_shape if k == 0 else None) for k, i in enumerate(self._in)]

    def inputs(self):
        return [{"name": i.name, "shape": list(shape), "dtype": ORT_TYPES.get(i.type, i.type), "source": source}
                for i, (shape, source) in zip(self._in, self.shapes)]

    def make_feeds(self, np, rng):
        feeds = {}
        for i, (shape, _) in zip(self._in, self.shapes):
            if i.type not in ORT_TYPES:
                raise ProfilerError("bad_input", "Input '%s' has type %s, which the profiler cannot fill." % (i.name, i.type))
            feeds[i.name] = _random_input(np, rng, tuple(shape), ORT_TYPES[i.type])
        return feeds

    def run(self, feeds):
        return self.sess.run(None, feeds)

    timed_call = "InferenceSession.run() (binding the inputs and copying the outputs included)"

    def timed(self, feeds):
        run = self.sess.run
        return lambda: run(None, feeds)

    def per_op(self, path, feeds, runs):
        folder = tempfile.mkdtemp(prefix="workbench-ort-profile-")
        try:
            sess = self._session(path, os.path.join(folder, "ort"))
            for _ in range(runs + 1):  # the first run is dropped: it includes one-time set-up
                sess.run(None, feeds)
            trace = sess.end_profiling()
            with open(trace, "r", encoding="utf-8") as fh:
                events = json.load(fh)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return parse_ort_trace(events), "onnxruntime profiling (SessionOptions.enable_profiling), median of %d runs" % runs

    def info(self):
        return {"name": self.name, "module": self.module_name, "version": self.version, "threads": self.threads,
                "provider": "CPUExecutionProvider"}


def parse_ort_trace(events):
    """Per-node times (ms per run) from an ONNX Runtime profiling trace, in execution order.

    ``latency_ms`` is the median over the profiled runs (robust to a stray slow run on a busy
    machine), ``mean_ms`` the mean. The first ``model_run`` is left out: it includes set-up."""
    if isinstance(events, dict):  # some versions wrap the list
        events = events.get("traceEvents", [])
    windows = sorted((e["ts"], e["ts"] + e.get("dur", 0)) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = [w[0] for w in windows]
    first_kept = 1 if len(windows) > 1 else 0
    n_runs = max(len(windows) - first_kept, 1)
    nodes = {}
    order = []
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        run = bisect.bisect_right(starts, e.get("ts", 0)) - 1
        if windows and run < first_kept:
            continue
        node = name[: -len("_kernel_time")]
        args = e.get("args", {})
        if node not in nodes:
            order.append(node)
            nodes[node] = {"kind": args.get("op_name", ""), "provider": args.get("provider"),
                           "graph_node_index": _int_or_none(args.get("node_index")), "per_run": {}}
        per_run = nodes[node]["per_run"]
        per_run[run] = per_run.get(run, 0.0) + float(e.get("dur", 0))
    ops = []
    for k, node in enumerate(order):
        n = nodes[node]
        times = sorted(n["per_run"].values()) + [0.0] * (n_runs - len(n["per_run"]))
        times.sort()
        ops.append({"index": k, "name": node, "kind": n["kind"], "latency_ms": _percentile(times, 50) / 1000.0,
                    "mean_ms": sum(times) / len(times) / 1000.0, "provider": n["provider"],
                    "graph_node_index": n["graph_node_index"]})
    return ops


def _int_or_none(v):
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _dtype_name(dt):
    try:
        import numpy

        return numpy.dtype(dt).name
    except Exception:
        return str(dt)


# ExecuTorch's ScalarType codes (TensorInfo.dtype()) -> numpy dtype names.
ET_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64", 11: "bool"}


class ExecuTorchBackend:
    """.pte programs in ExecuTorch's runtime (``executorch.runtime``, whose bindings load libtorch: the
    board needs torch and executorch). Per-op times come from an ETDump read by ExecuTorch's Inspector."""

    name = "executorch"
    suffix = ".pte"

    def __init__(self, threads, input_shape=None):
        try:
            import torch
            from executorch import runtime as et_runtime
        except ImportError as exc:
            raise ProfilerError("missing_dependency", "executorch is not installed for %s (%s)." % (sys.executable, exc),
                                hint="Install it: python3 -m pip install executorch (it brings torch).",
                                pip="executorch") from None
        self.torch, self.rt = torch, et_runtime
        self.module_name = "executorch"
        self.version = _dist_version("executorch", "executorch")
        self.threads = threads
        self.input_shape = input_shape
        self.shapes = []
        try:  # the runtime's one thread pool, shared by XNNPACK's kernels; the report gives its real size
            from executorch.extension.pybindings import portable_lib

            if threads:
                portable_lib._unsafe_reset_threadpool(int(threads))
            self.threads = int(portable_lib._threadpool_get_thread_count())
        except (ImportError, AttributeError):
            self.threads = None  # this executorch build has no thread-pool controls: the pool size is unknown

    def _method(self, path, **kwargs):
        try:
            program = self.rt.Runtime.get().load_program(path, **kwargs)
            return program, program.load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError and its own types
            missing = _et_missing_operators(path)
            if missing:
                raise ProfilerError("model_load", "executorch here has no kernel for %s: it cannot run this program."
                                    % ", ".join(missing),
                                    hint="cortex_m:: operators need an ExecuTorch runtime built with the cortex_m "
                                         "(CMSIS-NN) kernels, on a Cortex-M board." if any(
                                        m.startswith("cortex_m::") for m in missing) else
                                    "Use an ExecuTorch runtime built with kernels for these operators.")
            raise ProfilerError("model_load", "executorch could not load the program: %s" % _first_line(exc),
                                hint="The file may be from another ExecuTorch version, or need a backend or kernel "
                                     "this runtime was built without.")

    def load(self, path):
        self.program, self.method = self._method(path)
        meta = self.method.metadata
        self._in = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
        self.shapes = [resolve_shape("input_%d" % k, [int(d) for d in t.sizes()], self.input_shape if k == 0 else None)
                       for k, t in enumerate(self._in)]

    def inputs(self):
        return [{"name": "input_%d" % k, "shape": list(shape), "dtype": ET_SCALAR_TYPES.get(int(t.dtype()), str(t.dtype())),
                 "source": source} for k, (t, (shape, source)) in enumerate(zip(self._in, self.shapes))]

    def make_feeds(self, np, rng):
        return [self.torch.from_numpy(_random_input(np, rng, tuple(shape), ET_SCALAR_TYPES.get(int(t.dtype()), "float32")))
                for t, (shape, _) in zip(self._in, self.shapes)]

    def run(self, feeds):
        return [y.numpy() for y in self.method.execute(feeds)]

    timed_call = "Method.execute() (the input tensors are made once before the runs)"

    def timed(self, feeds):
        execute = self.method.execute
        return lambda: execute(feeds)

    def per_op(self, path, feeds, runs):
        folder = tempfile.mkdtemp(prefix="workbench-etdump-")
        try:
            program, method = self._method(path, enable_etdump=True, debug_buffer_size=0)
            for _ in range(runs + 1):  # the first run is dropped: it includes one-time set-up
                method.execute(feeds)
            etdump = os.path.join(folder, "profile.etdp")
            program.write_etdump_result_to_file(etdump, os.path.join(folder, "debug.bin"))
            try:
                from executorch.devtools import Inspector
            except ImportError as exc:
                return None, "ExecuTorch's Inspector (executorch.devtools) does not import here: %s" % _first_line(exc)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Output Buffer not found": no tensor data was asked for
                inspector = Inspector(etdump_path=etdump)
            ops = parse_etdump_events(inspector.event_blocks)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return ops, ("ExecuTorch ETDump read by executorch.devtools.Inspector, median of %d runs; XNNPACK reports "
                     "its ops' times to the microsecond" % runs)

    def info(self):
        return {"name": self.name, "module": self.module_name, "version": self.version, "threads": self.threads}


ET_CONTAINERS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")


def parse_etdump_events(event_blocks):
    """Per-op times (ms per run) from Inspector event blocks, in execution order: the ops inside
    delegates (XNNPACK's) and the ops run by ExecuTorch's own kernels; the method and delegate-call
    containers are left out. The first run of each op is dropped (set-up)."""
    ops = []
    for block in event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            perf = getattr(event, "perf_data", None)
            if event.name in ET_CONTAINERS or perf is None or not perf.raw:
                continue
            times = sorted(float(t) for t in (perf.raw[1:] if len(perf.raw) > 1 else perf.raw))
            ops.append({"index": len(ops), "name": event.name, "kind": _et_kind(event),
                        "latency_ms": _percentile(times, 50), "mean_ms": sum(times) / len(times),
                        "provider": getattr(event, "delegate_backend_name", None)
                        or ("XnnpackBackend" if getattr(event, "is_delegated_op", False) else "executorch kernels")})
    return ops


def _et_kind(event):
    """XNNPACK's "Convolution (NHWC, QC8) IGEMM #2" -> "Convolution"; a kernel's op type as recorded."""
    types = getattr(event, "op_types", None) or []
    if types:
        return str(types[0])
    return event.name.split(" (")[0].split(" #")[0]


BACKENDS = {"litert": LiteRTBackend, "ort": OrtBackend, "executorch": ExecuTorchBackend}


def runtime_for_bytes(head):
    """The runtime for a model from its first bytes: a TFLite flatbuffer says TFL3 at byte 4, an ExecuTorch
    program ET and a schema version."""
    if len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit():  # an ExecuTorch program ("ET12")
        return "executorch"
    return "litert" if len(head) >= 8 and head[4:8] == b"TFL3" else "ort"


# --------------------------------------------------------------------------- the machine

def _read(path, limit=65536):
    try:
        with open(path, "rb") as fh:
            return fh.read(limit).decode("utf-8", "replace").strip("\x00\n ")
    except OSError:
        return None


# ARM's CPU part numbers (implementer 0x41) for the cores found on single-board computers.
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
             "0xd49": "Neoverse-N2", "0xc07": "Cortex-A7", "0xc0f": "Cortex-A15", "0xb76": "ARM1176"}


def _cpuinfo():
    text = _read("/proc/cpuinfo", 1 << 20) or ""
    fields = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or fields.get("cpu model")
    core = None
    if fields.get("CPU implementer", "").lower() == "0x41":
        core = ARM_PARTS.get(fields.get("CPU part", "").lower())
    return model, core


def _mhz(path):
    v = _read(path)
    try:
        return round(int(v) / 1000.0, 1)
    except (TypeError, ValueError):
        return None


def _os_name():
    text = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.platform()


def system_facts():
    """What the machine is: board, CPU, cores, clock governor and frequencies, memory, OS."""
    model, core = _cpuinfo()
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = None
    mem_total = None
    m = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo", 8192) or "", re.M)
    if m:
        mem_total = int(m.group(1)) * 1024
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    board = _read("/proc/device-tree/model")
    facts = {
        "hostname": platform.node(),
        "board": board,
        "machine": platform.machine(),
        "cpu_model": model,
        "cpu_core": core,
        "cores": os.cpu_count(),
        "cores_available": available,
        "governor": _read(cpufreq + "scaling_governor"),
        "cpu_mhz": {"current": _mhz(cpufreq + "scaling_cur_freq"), "min": _mhz(cpufreq + "cpuinfo_min_freq"),
                    "max": _mhz(cpufreq + "cpuinfo_max_freq")},
        "memory_total_bytes": mem_total,
        "loadavg": load,
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    facts["description"] = describe_machine(facts)
    return facts


def describe_machine(f):
    parts = [f.get("board") or f.get("cpu_model") or f.get("machine") or "unknown machine"]
    cpu = f.get("cpu_core") or (f.get("cpu_model") if f.get("board") else None)
    cores = "%s cores" % f["cores"] if f.get("cores") else None
    parts.append(" ".join(x for x in (cores, cpu) if x))
    mhz = (f.get("cpu_mhz") or {}).get("max")
    if mhz:
        parts.append("up to %d MHz" % mhz)
    if f.get("machine"):
        parts.append(f["machine"])
    return ", ".join(p for p in parts if p)


# Bits of `vcgencmd get_throttled` (Raspberry Pi firmware).
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
                 3: "soft temperature limit now", 16: "under-voltage has occurred",
                 17: "ARM frequency capping has occurred", 18: "throttling has occurred",
                 19: "soft temperature limit has occurred"}


def thermal_state(base="/sys/class/thermal"):
    """SoC temperatures from /sys/class/thermal and the Raspberry Pi firmware's throttling flags."""
    temps = {}
    try:
        zones = sorted(z for z in os.listdir(base) if z.startswith("thermal_zone"))
    except OSError:
        zones = []
    for z in zones:
        raw = _read(os.path.join(base, z, "temp"))
        try:
            value = int(raw) / 1000.0
        except (TypeError, ValueError):
            continue
        temps[_read(os.path.join(base, z, "type")) or z] = round(value, 1)
    return {"temperature_c": temps or None, "throttled": _throttled()}


def _throttled():
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "get_throttled"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             timeout=5, universal_newlines=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out or "")
    if not m:
        return {"raw": (out or "").strip() or None}
    value = int(m.group(1), 16)
    flags = [text for bit, text in sorted(THROTTLE_BITS.items()) if value & (1 << bit)]
    return {"raw": m.group(1), "flags": flags, "now": bool(value & 0xF), "since_boot": bool(value & 0xF0000)}


# --------------------------------------------------------------------------- memory

def _status_kb(field):
    m = re.search(r"^%s:\s+(\d+) kB" % field, _read("/proc/self/status", 16384) or "", re.M)
    return int(m.group(1)) * 1024 if m else None


def memory_snapshot():
    """Resident memory now (VmRSS), its peak (VmHWM) and ru_maxrss, in bytes (None where unknown)."""
    snap = {"rss": _status_kb("VmRSS"), "hwm": _status_kb("VmHWM"), "ru_maxrss": None}
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        snap["ru_maxrss"] = int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, KiB elsewhere
    except (ImportError, OSError, ValueError):
        pass
    return snap


def reset_peak_rss():
    """Reset VmHWM to the current RSS (Linux 4.0+: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_report(before, after, peak_was_reset):
    """Peak resident memory of the process while the model loads and runs (what the device
    must have free), and the part of it the model added on top of Python and the runtime."""
    out = {"rss_before_load_bytes": before.get("rss"), "rss_after_runs_bytes": after.get("rss"),
           "peak_rss_bytes": after.get("hwm") or after.get("ru_maxrss"), "ru_maxrss_bytes": after.get("ru_maxrss")}
    if peak_was_reset and after.get("hwm") is not None and before.get("rss") is not None:
        out["added_peak_bytes"] = after["hwm"] - before["rss"]
        out["method"] = "VmHWM (peak RSS) after resetting it through /proc/self/clear_refs, minus VmRSS before loading"
    elif after.get("ru_maxrss") is not None and before.get("ru_maxrss") is not None:
        out["added_peak_bytes"] = after["ru_maxrss"] - before["ru_maxrss"]
        out["method"] = ("ru_maxrss after minus before (a lower bound: the process peak before loading "
                         "may hide part of the model's memory)")
    else:
        out["added_peak_bytes"] = None
        out["method"] = "unavailable on this system"
    return out


class _CapturedFd:
    """Send what C++ code writes to a file descriptor (LiteRT's "Created ... XNNPACK delegate")
    to a temporary file while loading, so that it lands in the report and not on the terminal."""

    def __init__(self, fd):
        self.fd = fd
        self.text = ""

    def __enter__(self):
        self._tmp = tempfile.TemporaryFile()
        try:
            sys.stderr.flush()
            self._saved = os.dup(self.fd)
            os.dup2(self._tmp.fileno(), self.fd)
        except (OSError, ValueError):
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, self.fd)
            os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode("utf-8", "replace")
        self._tmp.close()
        return False

    def lines(self):
        return [line for line in self.text.splitlines() if line.strip()][:20]


# --------------------------------------------------------------------------- statistics

def _percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def latency_stats(latencies_ms):
    n = len(latencies_ms)
    if not n:
        return {"runs": 0, "mean_ms": None, "p50_ms": None, "p90_ms": None, "p99_ms": None, "std_ms": None,
                "min_ms": None, "max_ms": None}
    s = sorted(latencies_ms)
    mean = sum(s) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in s) / (n - 1)) if n > 1 else 0.0
    return {"runs": n, "mean_ms": mean, "p50_ms": _percentile(s, 50), "p90_ms": _percentile(s, 90),
            "p99_ms": _percentile(s, 99), "std_ms": std, "min_ms": s[0], "max_ms": s[-1]}


# --------------------------------------------------------------------------- the profile

class _Events:
    """Calls ``progress(event)``; 'progress' events at most every ``interval`` seconds."""

    def __init__(self, progress, interval=0.2):
        self.progress = progress
        self.interval = interval
        self._last = 0.0

    def __call__(self, event, force=False):
        if self.progress is None:
            return
        if event.get("event") == "progress" and not force:
            now = time.monotonic()
            if now - self._last < self.interval and event.get("done") != event.get("total"):
                return
            self._last = now
        self.progress(event)


def profile_model(path, runtime=None, threads=None, runs=100, warmup=10, per_op=True, per_op_runs=20, seed=0,
                  progress=None, stop=None, model_name=None, input_shape=None):
    """Profile one model file on this machine and return the report (a JSON-ready dict).

    ``threads=None`` uses every core the process may run on. ``progress(event)`` receives
    dicts: {"event": "stage", "stage": ...} and {"event": "progress", "stage", "done", "total"}.
    ``stop`` (a threading.Event) or Ctrl-C ends the runs early: the report then holds what
    was measured and ``"interrupted": true``. ``input_shape`` (batch first) fills the first input's
    dynamic dims; a dynamic dim other than the batch without it is refused (see :func:`resolve_shape`).
    """
    if runs < 1 or warmup < 0 or (threads is not None and threads < 1):
        raise ProfilerError("bad_input", "runs must be >= 1, warmup >= 0 and threads >= 1 (got runs=%s, warmup=%s, "
                            "threads=%s)." % (runs, warmup, threads))
    with open(path, "rb") as fh:
        head = fh.read(8)
    runtime = runtime or runtime_for_bytes(head)
    if runtime not in BACKENDS:
        raise ProfilerError("bad_input", "Unknown runtime '%s'; valid: %s." % (runtime, ", ".join(sorted(BACKENDS))))
    if threads is None:
        try:
            threads = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            threads = os.cpu_count() or 1
    emit = _Events(progress)
    stopped = stop.is_set if stop is not None else (lambda: False)
    np = _numpy()
    state = {"interrupted": False, "latencies": [], "warmup_done": 0}
    with _CapturedFd(2) as import_log:  # onnxruntime's cpuinfo warnings on some boards
        backend = BACKENDS[runtime](threads, input_shape)
    state["system"] = system_facts()
    state["thermal_before"] = thermal_state()
    try:
        emit({"event": "stage", "stage": "load"})
        mem_before = memory_snapshot()
        state["mem_before"] = mem_before
        state["peak_reset"] = reset_peak_rss()
        with _CapturedFd(2) as log:
            t0 = time.perf_counter()
            backend.load(path)
            state["load_ms"] = (time.perf_counter() - t0) * 1000.0
        state["load_log"] = import_log.lines() + log.lines()
        state["inputs"] = backend.inputs()
        feeds = backend.make_feeds(np, np.random.default_rng(seed))
        emit({"event": "stage", "stage": "first"})
        t0 = time.perf_counter()
        _run_checked(backend, feeds)
        state["first_ms"] = (time.perf_counter() - t0) * 1000.0
        emit({"event": "stage", "stage": "warmup", "total": warmup})
        for i in range(warmup):
            if stopped():
                raise KeyboardInterrupt
            backend.run(feeds)
            state["warmup_done"] = i + 1
            emit({"event": "progress", "stage": "warmup", "done": i + 1, "total": warmup})
        emit({"event": "stage", "stage": "runs", "total": runs})
        lat = state["latencies"]
        call = backend.timed(feeds)
        clock = time.perf_counter_ns
        loop_start = clock()
        try:
            for i in range(runs):
                if stopped():
                    raise KeyboardInterrupt
                t = clock()
                call()
                lat.append((clock() - t) / 1e6)
                emit({"event": "progress", "stage": "runs", "done": i + 1, "total": runs})
        finally:
            state["loop_s"] = (clock() - loop_start) / 1e9
        state["mem_after"] = memory_snapshot()
        if per_op:
            emit({"event": "stage", "stage": "per_op"})
            n = max(1, min(per_op_runs, runs))
            try:
                state["ops"], state["per_op_source"] = backend.per_op(path, feeds, n)
                state["per_op_runs"] = n
            except (ProfilerError, OSError, ValueError, RuntimeError) as exc:
                state["ops"], state["per_op_source"] = None, "the per-op pass failed: %s" % _first_line(exc)
    except KeyboardInterrupt:
        state["interrupted"] = True
    state.setdefault("mem_after", memory_snapshot())
    state["thermal_after"] = thermal_state()
    return build_report(state, backend, path, model_name, runs, warmup, seed, per_op)


def _run_checked(backend, feeds):
    try:
        backend.run(feeds)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # runtimes raise their own exception types
        raise ProfilerError("run_failed", "%s loaded the model but failed to run it: %s" % (backend.module_name, _first_line(exc)),
                            hint="The model may need inputs the profiler cannot make up, or an op failed on this machine.")


def build_report(state, backend, path, model_name, runs, warmup, seed, per_op):
    stats = latency_stats(state["latencies"])
    mem = memory_report(state["mem_before"], state["mem_after"], state.get("peak_reset")) if "mem_before" in state else {}
    batch = 1
    ins = state.get("inputs") or []
    if ins and ins[0]["shape"]:
        batch = ins[0]["shape"][0] or 1
    loop_s = state.get("loop_s") or 0.0
    ips = len(state["latencies"]) / loop_s if loop_s > 0 and state["latencies"] else None
    ops = state.get("ops")
    if per_op and ops is None and not state["interrupted"]:
        per_op_info = {"available": False, "reason": state.get("per_op_source")}
    elif ops is not None:
        per_op_info = {"available": True, "source": state.get("per_op_source"), "runs": state.get("per_op_runs"),
                       "total_ms": sum(o["latency_ms"] for o in ops)}
    else:
        per_op_info = {"available": False, "reason": "not measured" + (" (interrupted)" if state["interrupted"] else "")}
    system = state["system"]
    size = os.path.getsize(path)
    return {
        "schema": SCHEMA,
        "kind": "measurement",
        "model": {"name": model_name or os.path.basename(path), "bytes": size, "sha256": _sha256(path)},
        "target": {"name": system.get("hostname") or "this machine", "description": system["description"], "system": system},
        "runtime": dict(backend.info(), load_log=state.get("load_log", [])),
        "settings": {"runs": runs, "warmup": warmup, "threads": backend.threads, "seed": seed, "timed": backend.timed_call,
                     "input_shape": list(backend.input_shape) if backend.input_shape else None,
                     "inputs": "random: floats uniform in [0, 1), int8/uint8/int16 over their range, other types zero"},
        "inputs": ins,
        "batch": batch,
        "load_ms": state.get("load_ms"),
        "first_inference_ms": state.get("first_ms"),
        "latency_ms": stats["mean_ms"],
        "latency": stats,
        "throughput": {"inferences_per_s": ips, "samples_per_s": ips * batch if ips else None},
        "ram_bytes": mem.get("peak_rss_bytes"),  # the whole process, as emulate's estimate; the model's share is in memory
        "memory": mem,
        "ops": ops or [],
        "per_op": per_op_info,
        "thermal": {"before": state.get("thermal_before"), "after": state.get("thermal_after")},
        "warmup_done": state["warmup_done"],
        "interrupted": state["interrupted"],
    }


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- the script

def _receive_model(stream, nbytes, suffix):
    """Copy exactly ``nbytes`` of the model from ``stream`` into a private temporary file."""
    fd, tmp = tempfile.mkstemp(prefix="workbench-profile-", suffix=suffix)
    left = nbytes
    with os.fdopen(fd, "wb") as out:
        while left > 0:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    if left:
        os.unlink(tmp)
        raise ProfilerError("bad_input", "The model arrived truncated: %d of %d bytes." % (nbytes - left, nbytes))
    return tmp


def _watch_control(stream, stop):
    """After the model, stdin is a control channel: a 'stop' line or end-of-file ends the runs."""
    def watch():
        try:
            while True:
                line = stream.readline()
                if not line or line.strip() == b"stop":
                    break
        except (OSError, ValueError):
            pass
        stop.set()

    t = threading.Thread(target=watch, name="workbench-profiler-control")
    t.daemon = True
    t.start()


def _stderr_events(event):
    sys.stderr.write(EVENT_PREFIX + json.dumps(event) + "\n")
    sys.stderr.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="workbench-profiler", description="Profile a .tflite or .onnx model on this machine; "
                                 "prints a JSON report on stdout.")
    ap.add_argument("model", nargs="?", help="model file (or use --model-stdin)")
    ap.add_argument("--model-stdin", type=int, metavar="NBYTES", help="read the model's NBYTES bytes from stdin")
    ap.add_argument("--model-name", help="name to record for the model (default: the file name)")
    ap.add_argument("--runtime", choices=sorted(BACKENDS), help="default: from the file's content")
    ap.add_argument("--threads", type=int, help="default: every available core")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-per-op", action="store_true", help="skip the per-op timing pass")
    ap.add_argument("--input-shape", help="the first input's shape, batch first (e.g. 1,3,224,224): fills dynamic dims")
    ap.add_argument("--events", action="store_true", help="write progress events to stderr")
    ap.add_argument("--control-stdin", action="store_true", help="after the model, a 'stop' line on stdin ends the runs")
    args = ap.parse_args(argv)
    stop = threading.Event()
    tmp = None
    try:
        if args.model_stdin is not None:
            stream = sys.stdin.buffer
            tmp = _receive_model(stream, args.model_stdin, BACKENDS.get(args.runtime or "", LiteRTBackend).suffix)
            path = tmp
        elif args.model:
            path = args.model
            if not os.path.isfile(path):
                raise ProfilerError("bad_input", "Model file '%s' does not exist." % path)
        else:
            raise ProfilerError("bad_input", "Give a model file, or --model-stdin NBYTES.")
        shape = None
        if args.input_shape:
            try:
                shape = [int(v) for v in args.input_shape.replace("x", ",").split(",") if v.strip()]
            except ValueError:
                shape = []
            if not shape or min(shape) < 1:
                raise ProfilerError("bad_input", "--input-shape '%s' is not a shape of positive integers." % args.input_shape)
        if args.control_stdin:
            _watch_control(sys.stdin.buffer, stop)
        report = profile_model(path, args.runtime, args.threads, args.runs, args.warmup, per_op=not args.no_per_op,
                               seed=args.seed, progress=_stderr_events if args.events else None, stop=stop,
                               model_name=args.model_name or (os.path.basename(args.model) if args.model else None),
                               input_shape=shape)
    except ProfilerError as exc:
        sys.stdout.write(json.dumps({"error": exc.to_dict()}) + "\n")
        return exc.exit_code
    finally:
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
