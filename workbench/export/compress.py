"""TFLite Micro LUT weight compression: constant tensors with few distinct values become bit-packed
indices plus value tables, decoded at run time by TFLM's DECODE operator.

``compress_tflite(data, where, max_bits=4)`` picks every constant int8/int16 tensor an operator
reads whose values fit ``2**max_bits`` table entries, per tensor or per channel (along the tensor's
quantized dimension: a weight clustered in float and quantized per channel has one table per
channel), and hands them to the compression module of the ``tflite-micro`` package
(``tensorflow/lite/micro/compression``), which inserts ``TFLM_DECODE`` operators and aligns the
flatbuffer. Everything else is left alone, with the reason in the report: biases and other tensors
with too many distinct values, tensors a kernel must read in Prepare, tensors too small to gain.

Support in TFLM 90b983c: the DECODE kernel (kernels/decode*.cc) is compiled into every
``microlite`` library (tools/make/sources.inc), with no build flag; ``USE_TFLM_COMPRESSION`` enables
only the older COMPRESSION_METADATA path, and only for TARGET=linux or xtensa (Makefile). So
the Cortex-M firmware and the host interpreter run these models with the libraries they have.
The decoded weights live in the arena: compression moves bytes from flash to RAM.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from workbench.core.errors import ConfigError, ModelFormatError, UnsupportedError, require

__all__ = ["CompressReport", "compress_tflite", "COMPRESSIBLE_TYPES"]

COMPRESSIBLE_TYPES = {9: "int8", 7: "int16"}  # schema TensorType -> name
MIN_GAIN_BYTES = 16  # below this saving a tensor is left alone: a DECODE op costs time and arena


@dataclass(frozen=True)
class CompressReport:
    bytes_before: int
    bytes_after: int
    tensors: tuple[dict, ...] = ()  # compressed: index, shape, bits, mode, bytes before/after
    left_alone: tuple[dict, ...] = field(default_factory=tuple)  # index, shape, bytes, reason

    def to_dict(self) -> dict:
        return {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "saved_bytes": self.bytes_before - self.bytes_after, "compressed": list(self.tensors),
                "left_alone": list(self.left_alone)}


def _modules():
    require("tflite_micro", "micro", "TFLite Micro weight compression")
    base = "tflite_micro.tensorflow.lite.micro.compression"
    return (importlib.import_module(f"{base}.compress"), importlib.import_module(f"{base}.spec"),
            importlib.import_module(f"{base}.lut"), importlib.import_module(f"{base}.compressor"))


def _consumers(sg) -> dict[int, list[int]]:
    uses: dict[int, list[int]] = {}
    for j, op in enumerate(sg.operators or ()):
        for ti in op.inputs if op.inputs is not None else ():
            if ti >= 0:
                uses.setdefault(int(ti), []).append(j)
    return uses


def _plan(t, arr: np.ndarray, max_bits: int):
    """(bits, axis or None, compressed bytes) for the cheapest LUT layout within ``max_bits``, or a reason."""
    options = []
    uniq = len(np.unique(arr))
    if uniq <= 2 ** max_bits:
        bits = max(1, math.ceil(math.log2(uniq))) if uniq > 1 else 1
        options.append((bits, None, math.ceil(arr.size * bits / 8) + uniq * arr.itemsize))
    q = t.quantization
    axis = int(q.quantizedDimension) if q is not None and q.scale is not None and len(q.scale) > 1 else None
    if axis is not None and arr.ndim > axis:
        per = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1)
        most = max(len(np.unique(row)) for row in per)
        if most <= 2 ** max_bits:
            bits = max(1, math.ceil(math.log2(most))) if most > 1 else 1
            options.append((bits, axis, math.ceil(arr.size * bits / 8) + per.shape[0] * (2 ** bits) * arr.itemsize))
    if not options:
        worst = uniq if axis is None else f"{uniq} (per channel up to {most})"
        return f"{worst} distinct values, more than the {2 ** max_bits} a {max_bits}-bit table holds (not clustered?)"
    return min(options, key=lambda o: o[2])


def compress_tflite(data: bytes, where: str = "<bytes>", *, max_bits: int = 4) -> tuple[bytes, CompressReport]:
    """The LUT-compressed flatbuffer of ``data`` and what was compressed or left alone (and why)."""
    if not 1 <= int(max_bits) <= 7:
        raise ConfigError(f"Compression index width must be 1-7 bits, got {max_bits}.", hint="Use 4 for 16 clusters.")
    from workbench.frontends.tflite_reader import read_tflite_bytes, schema

    read_tflite_bytes(data, where)
    compress_mod, spec, _lut, compressor = _modules()
    s = schema()
    mt = s.ModelT.InitFromPackedBuf(data, 0)
    specs, done, alone = [], [], []
    for g, sg in enumerate(mt.subgraphs or ()):
        uses = _consumers(sg)
        for i, t in enumerate(sg.tensors or ()):
            buf = mt.buffers[t.buffer].data if 0 <= t.buffer < len(mt.buffers) else None
            if buf is None or not len(buf) or i not in uses:
                continue
            shape = [int(v) for v in t.shape] if t.shape is not None else []
            row = {"subgraph": g, "tensor": i, "shape": shape, "bytes": int(len(buf)), "operators": uses[i]}
            if t.type not in COMPRESSIBLE_TYPES:
                alone.append({**row, "reason": f"type {t.type} (only {', '.join(COMPRESSIBLE_TYPES.values())} "
                                               "tables are worth it; int32 biases keep their precision)"})
                continue
            arr = np.frombuffer(np.asarray(buf, np.uint8).tobytes(), dtype=np.int8 if t.type == 9 else np.int16)
            arr = arr.reshape(shape) if shape and int(np.prod(shape)) == arr.size else arr
            plan = _plan(t, arr, max_bits)
            if isinstance(plan, str):
                alone.append({**row, "reason": plan})
                continue
            bits, axis, est = plan
            if len(buf) - est < MIN_GAIN_BYTES:
                alone.append({**row, "reason": f"too small: {len(buf)} B would become about {est} B with its tables"})
                continue
            mode = spec.PerTensor() if axis is None else spec.PerChannel(axis=axis)
            specs.append(spec.Tensor(subgraph=g, tensor=i, compression=[spec.LookUpTableCompression(index_bitwidth=bits, mode=mode)]))
            done.append({**row, "bits": bits, "mode": "per-tensor" if axis is None else f"per-channel (axis {axis})",
                         "estimated_bytes": est})
    if not specs:
        raise UnsupportedError(
            f"Nothing in '{where}' can be LUT-compressed within {max_bits} bits: "
            + "; ".join(f"tensor {r['tensor']}: {r['reason']}" for r in sorted(alone, key=lambda r: r["reason"].startswith("type"))[:3])
            + ".",
            hint="Cluster the weights first (workbench cluster MODEL --clusters 16 ...), then quantize to int8.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "resulted in expansion": excluded above by the estimate
            out = bytes(compress_mod.compress(data, specs))
    except compressor.CompressionError as exc:
        raise UnsupportedError(f"TFLite Micro's compressor refused '{where}': {exc}",
                               hint="Export without --compress.") from None
    except (ValueError, IndexError, TypeError) as exc:
        raise ModelFormatError(f"'{where}' could not be compressed ({type(exc).__name__}: {exc}).",
                               hint="Re-export the model, or export without --compress.") from None
    return out, CompressReport(bytes_before=len(data), bytes_after=len(out), tensors=tuple(done), left_alone=tuple(alone))
