"""What ONNX Runtime's quantizer needs before it starts, and proof that what it wrote runs.

* **Opset.** A per-channel ``DequantizeLinear`` (its ``axis`` attribute) exists from opset 13
  on; ONNX Runtime's quantizer writes it into older models anyway, and ONNX Runtime then
  refuses the file. Older models are upgraded to opset 13 with ``onnx.version_converter``;
  where that fails, weights are quantized per tensor. Either way the user is told.
* **Shared biases.** When one bias initializer feeds two Conv/Gemm nodes, the quantizer
  copies it under the name ``<bias><N>`` without checking that no other tensor has that name
  (a TensorFlow export often has one); the copy's DequantizeLinear then overwrites that tensor
  and the file no longer loads. Each node gets its own copy here first, under a free name.
* **Proof.** Every written model is loaded in ONNX Runtime and run once on a calibration
  sample; a model that does not load or run is an error, and nothing is left behind.
* **Crashes.** An exception inside ``onnxruntime.quantization`` is reported with the node it
  was quantizing, found in the traceback.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workbench.core.errors import RuntimeFailure

PER_CHANNEL_OPSET = 13  # DequantizeLinear's axis attribute (per-channel scales) appears in opset 13
BIAS_OPS = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}  # op type -> index of its bias input
ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(int32)": np.int32,
              "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class Prepared:
    """The model to quantize and what was changed to make it quantizable."""

    path: Path
    per_channel: bool
    notes: tuple[str, ...] = ()
    recipe: dict | None = None


def default_opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def prepare_opset(src: Path, tmp: Path, per_channel: bool, what: str) -> Prepared:
    """``src`` itself when its opset allows per-channel quantization (or per-tensor was asked for);
    else the model upgraded to opset 13, or, when the upgrade fails, ``src`` with per-tensor weights."""
    if not per_channel:
        return Prepared(src, per_channel)
    import onnx

    model = onnx.load(str(src))
    opset = default_opset(model)
    if opset >= PER_CHANNEL_OPSET:
        return Prepared(src, per_channel)
    from onnx import version_converter

    try:
        upgraded = version_converter.convert_version(model, PER_CHANNEL_OPSET)
        out = tmp / "opset13.onnx"
        onnx.save(upgraded, str(out))
        _session(out)  # the upgrade must still load
    except Exception as exc:  # the converter and onnxruntime raise their own types
        reason = _first_line(exc)
        note = (f"{what} is at opset {opset}; per-channel int8 needs opset {PER_CHANNEL_OPSET} and onnx.version_converter "
                f"could not upgrade it ({reason}): weights are quantized per tensor instead.")
        warnings.warn(note, stacklevel=3)
        return Prepared(src, False, (note,), {"opset": opset, "per_channel": False,
                                              "per_channel_fallback": f"opset {opset} < {PER_CHANNEL_OPSET}; upgrade failed: {reason}"})
    note = (f"{what} is at opset {opset}; per-channel int8 needs opset {PER_CHANNEL_OPSET}, so the model was upgraded to "
            f"opset {PER_CHANNEL_OPSET} with onnx.version_converter before quantizing (pass --per-tensor to keep opset {opset}).")
    warnings.warn(note, stacklevel=3)
    return Prepared(out, per_channel, (note,), {"opset_upgraded": {"from": opset, "to": PER_CHANNEL_OPSET}})


def split_shared_biases(path: Path) -> int:
    """Give every Conv/ConvTranspose/Gemm node its own copy of a bias initializer it shares with
    another node, named so that no tensor of the graph has the name. Rewrites ``path``; returns
    how many copies were made."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    users: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    taken = set(inits) | {v for node in g.node for v in (*node.input, *node.output)} | {v.name for v in g.input} \
        | {v.name for v in g.output} | {v.name for v in g.value_info}
    copies = 0
    seen: set[str] = set()
    for node in g.node:
        k = BIAS_OPS.get(node.op_type)
        if k is None or node.domain not in ("", "ai.onnx") or len(node.input) <= k:
            continue
        bias = node.input[k]
        if bias not in inits or users.get(bias, 0) < 2:
            continue
        if bias not in seen:  # the first user keeps the original
            seen.add(bias)
            continue
        n = 1
        while f"{bias}__bias_copy_{n}" in taken:
            n += 1
        name = f"{bias}__bias_copy_{n}"
        taken.add(name)
        t = onnx.TensorProto()
        t.CopyFrom(inits[bias])
        t.name = name
        g.initializer.append(t)
        node.input[k] = name
        copies += 1
    if copies:
        onnx.save(model, str(path))
    return copies


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    with open(path, "rb") as fh:
        if fh.read(8)[4:8] == b"ORTM":  # an .ort file, whatever its name
            so.add_session_config_entry("session.load_model_format", "ORT")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:400]


def sample_feeds(sess, calib: np.ndarray | None, input_shape: tuple | None = None, seed: int = 0) -> dict | None:
    """One input per model input: the first calibration sample for the first input (its batch as the
    model takes it); else uniform [0, 1) floats (zeros for integer inputs) of the declared shape, with
    ``input_shape`` filling the first input's dynamic dims and 1 for a dynamic batch. None when a
    non-batch dim stays unknown (a made-up size could fail where the model is fine)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for k, i in enumerate(sess.get_inputs()):
        dtype = ORT_DTYPES.get(i.type)
        if dtype is None:
            raise RuntimeFailure(f"Input '{i.name}' has type {i.type}, which the check run cannot fill.")
        shape = list(i.shape or [])
        batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else 1
        if k == 0 and calib is not None and len(calib):
            x = np.asarray(calib[:batch])
            if len(x) < batch:
                x = np.concatenate([x] * (batch // len(x) + 1))[:batch]
            feeds[i.name] = np.ascontiguousarray(x, dtype=dtype)
            continue
        hint = list(input_shape) if k == 0 and input_shape is not None and len(input_shape) == len(shape) else [None] * len(shape)
        dims = []
        for j, d in enumerate(shape):
            d = d if isinstance(d, int) and d > 0 else hint[j]
            if d is None and j > 0:
                return None
            dims.append(int(d) if d else 1)
        dims = tuple(dims)
        feeds[i.name] = rng.random(dims).astype(dtype) if np.dtype(dtype).kind == "f" else np.zeros(dims, dtype=dtype)
    return feeds


def check_runs(path: Path, calib: np.ndarray | None, what: str, input_shape: tuple | None = None) -> dict:
    """Load ``path`` in ONNX Runtime and run it once; raise RuntimeFailure naming what failed.
    Returns the record for the manifest."""
    import onnxruntime as ort

    hint = "Nothing was written. Try --per-tensor, another --scheme, or run again with --debug."
    try:
        sess = _session(path)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise RuntimeFailure(f"{what} does not load in ONNX Runtime {ort.__version__}: {_first_line(exc)}", hint=hint) from None
    feeds = sample_feeds(sess, calib, input_shape)
    if feeds is None:
        return {"loaded": f"onnxruntime {ort.__version__}",
                "not_run": "an input has a dynamic non-batch dimension and no sample was given (pass --input-shape)"}
    try:
        outs = sess.run(None, feeds)
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in feeds.items()}
        raise RuntimeFailure(f"{what} loads in ONNX Runtime {ort.__version__} but fails to run one sample "
                             f"(inputs {shapes}): {_first_line(exc)}", hint=hint) from None
    finite = all(np.all(np.isfinite(o)) for o in outs if isinstance(o, np.ndarray) and o.dtype.kind == "f")
    return {"loaded_and_ran": f"onnxruntime {ort.__version__}, one {'calibration' if calib is not None else 'random'} sample "
                              f"of shape {list(next(iter(feeds.values())).shape) if feeds else []}",
            **({} if finite else {"non_finite_outputs": True})}


def failing_node(exc: BaseException):
    """The ONNX node the quantizer was working on when ``exc`` was raised: the innermost frame of
    the traceback holding a NodeProto (a local ``node``, or ``self.node`` of an op quantizer)."""
    tb, found = exc.__traceback__, None
    while tb is not None:
        loc = tb.tb_frame.f_locals
        for cand in (loc.get("node"), getattr(loc.get("self"), "node", None)):
            if type(cand).__name__ == "NodeProto" and getattr(cand, "op_type", ""):
                found = cand
                break
        tb = tb.tb_next
    return found


def quantizer_failure(exc: BaseException, scheme: str) -> RuntimeFailure:
    node = failing_node(exc)
    where, tip = "", ""
    if node is not None:
        label = f"'{node.name}'" if node.name else f"with outputs {list(node.output)[:2]}"
        where = f" at the {node.op_type} node {label}"
        tip = f"It stopped at a {node.op_type} node; "
    err = RuntimeFailure(f"ONNX Runtime's quantizer failed ({scheme}){where}: {type(exc).__name__}: {_first_line(exc)}",
                         hint=f"Nothing was written. {tip}try --per-tensor or --scheme fp16/dynamic, or re-export the model "
                              "at a recent opset. --debug shows the quantizer's traceback.")
    err.node = None if node is None else {"op": node.op_type, "name": node.name}
    return err
