"""Strip a .tflite down to what TensorFlow Lite Micro reads: the smallest flatbuffer that runs the same.

``strip_tflite(data, where)`` rewrites the flatbuffer without

* tensor and subgraph names, the model description and the signature definitions;
* metadata TFLM never reads (``min_runtime_version``, ``CONVERSION_METADATA``, the deprecated
  ``metadata_buffer`` list, debug metadata indices);
* per-tensor ``min``/``max`` tables (calibration ranges; no kernel reads them), empty quantization
  tables and ``shape_signature`` where it equals ``shape``;
* operator codes no operator uses, buffers no tensor or kept metadata uses, and duplicate
  constant buffers (identical bytes, non-variable tensors) which then share one buffer.

It keeps every byte TFLM reads. In TFLM 90b983c the only metadata the runtime looks up by name
are ``OfflineMemoryAllocation`` (micro_allocation_info.cc: an offline memory plan indexed by tensor
number) and ``COMPRESSION_METADATA`` (micro_allocator.cc); both are kept, and tensors are never
removed or reordered, so tensor indices in those plans stay valid. The model ``version`` is kept
(TFLM examples check it); operator code versions are kept (LiteRT picks kernels by them).
Constant buffers are written 16-byte aligned, as the converter writes them.

A model whose structure the rewrite cannot prove it keeps is refused with what was found:
buffers or custom options stored outside the flatbuffer (``offset``/``size``), external buffer
groups, sparse tensors, operator options of a type this schema does not know, and any table
field the installed schema does not know (a newer converter), found by walking the vtables.
:func:`verify_identical` then runs both models in the TFLM interpreter and LiteRT (builtin
kernels) and requires bit-identical outputs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from workbench.core.errors import CheckFailed, ConfigError, ModelFormatError, UnsupportedError

__all__ = ["StripReport", "strip_tflite", "strip_file", "verify_identical", "KEPT_METADATA", "constant_bytes"]

KEPT_METADATA = {
    "OfflineMemoryAllocation": "TFLM reads it (micro_allocation_info.cc): an offline memory plan",
    "COMPRESSION_METADATA": "TFLM reads it (micro_allocator.cc): compressed tensors and their value tables",
}
ALIGN = 16  # the converter's and TFLM's alignment for constant buffers
RUNTIMES = {"portable": ("litert", "tflm"), "tflm": ("tflm",)}  # where each level is checked bit-identical


@dataclass(frozen=True)
class StripReport:
    """What strip removed and the sizes before and after (bytes)."""

    bytes_before: int
    bytes_after: int
    constant_bytes: int  # the distinct constant data the stripped model still holds
    removed: dict = field(default_factory=dict)
    kept_metadata: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """Stripped model bytes per constant byte (1.0 would be weights alone)."""
        return self.bytes_after / self.constant_bytes if self.constant_bytes else float("inf")

    def to_dict(self) -> dict:
        return {"bytes_before": self.bytes_before, "bytes_after": self.bytes_after, "constant_bytes": self.constant_bytes,
                "saved_bytes": self.bytes_before - self.bytes_after, "model_to_constant_ratio": round(self.ratio, 4),
                "removed": dict(self.removed), "kept_metadata": list(self.kept_metadata)}


# --------------------------------------------------------------------------- proving the rewrite safe


class _FieldCount:
    """Stands in for a flatbuffers Builder to read how many fields a generated table has."""

    n = 0

    def StartObject(self, n):  # noqa: N802 - the Builder's method name
        self.n = n


def _known_fields(s, table: str) -> int:
    c = _FieldCount()
    getattr(s, f"{table}Start")(c)
    return c.n


def _unknown_field(tab, known: int) -> int | None:
    """The first set field slot of a table beyond the ``known`` ones the schema has, or None."""
    buf, pos = tab.Bytes, tab.Pos
    vt = pos - int.from_bytes(buf[pos:pos + 4], "little", signed=True)
    vt_size = int.from_bytes(buf[vt:vt + 2], "little")
    for slot in range(known, (vt_size - 4) // 2):
        if int.from_bytes(buf[vt + 4 + 2 * slot: vt + 6 + 2 * slot], "little"):
            return slot
    return None


def _tables(s, m):
    """(kind, label, table) for every table the object API round-trips."""
    yield "Model", "the model", m._tab
    for k in range(m.OperatorCodesLength()):
        yield "OperatorCode", f"operator code {k}", m.OperatorCodes(k)._tab
    for k in range(m.BuffersLength()):
        yield "Buffer", f"buffer {k}", m.Buffers(k)._tab
    for k in range(m.MetadataLength()):
        yield "Metadata", f"metadata {k}", m.Metadata(k)._tab
    for g in range(m.SubgraphsLength()):
        sg = m.Subgraphs(g)
        yield "SubGraph", f"subgraph {g}", sg._tab
        for t in range(sg.TensorsLength()):
            tensor = sg.Tensors(t)
            yield "Tensor", f"tensor {t} of subgraph {g}", tensor._tab
            q = tensor.Quantization()
            if q is not None:
                yield "QuantizationParameters", f"the quantization of tensor {t} of subgraph {g}", q._tab
        for j in range(sg.OperatorsLength()):
            yield "Operator", f"operator {j} of subgraph {g}", sg.Operators(j)._tab


def _refuse(where: str, found: str) -> UnsupportedError:
    return UnsupportedError(
        f"Cannot strip '{where}' safely: {found}. Rewriting it could change what TensorFlow Lite Micro or LiteRT reads.",
        hint="Deploy it unstripped (export --format tflm --no-strip), or re-export it with the TFLite converter "
             "this workbench pins.")


def _check_structure(s, data: bytes, mt, where: str) -> None:
    m = s.Model.GetRootAs(data, 0)
    known = {}
    for kind, label, tab in _tables(s, m):
        n = known.setdefault(kind, _known_fields(s, kind))
        slot = _unknown_field(tab, n)
        if slot is not None:
            raise _refuse(where, f"{label} has field {slot} set, which this schema ({n} fields in {kind}) does not know")
    if mt.externalBufferGroups or mt.externalBuffers:
        raise _refuse(where, "it has external buffer groups (weights kept outside the flatbuffer)")
    for k, b in enumerate(mt.buffers or ()):
        if b.offset or b.size:
            raise _refuse(where, f"buffer {k} stores its data outside the flatbuffer (offset {b.offset}, size {b.size})")
    n_codes, n_bufs = len(mt.operatorCodes or ()), len(mt.buffers or ())
    for g, sg in enumerate(mt.subgraphs or ()):
        for t, tensor in enumerate(sg.tensors or ()):
            if tensor.sparsity is not None:
                raise _refuse(where, f"tensor {t} of subgraph {g} is sparse (TFLM does not run sparse tensors)")
            if tensor.externalBuffer:
                raise _refuse(where, f"tensor {t} of subgraph {g} refers to external buffer {tensor.externalBuffer}")
            if not 0 <= tensor.buffer < max(n_bufs, 1):
                raise ModelFormatError(f"'{where}': tensor {t} of subgraph {g} refers to buffer {tensor.buffer}, but the "
                                       f"model has {n_bufs} buffers.", hint="Re-export the model.")
        for j, op in enumerate(sg.operators or ()):
            if not 0 <= op.opcodeIndex < n_codes:
                raise ModelFormatError(f"'{where}': operator {j} of subgraph {g} uses operator code {op.opcodeIndex}, "
                                       f"but the model has {n_codes}.", hint="Re-export the model.")
            if op.largeCustomOptionsOffset or op.largeCustomOptionsSize:
                raise _refuse(where, f"operator {j} of subgraph {g} keeps its custom options outside the flatbuffer")
            for which in ("", "2"):
                if getattr(op, f"builtinOptions{which}Type") and getattr(op, f"builtinOptions{which}") is None:
                    raise _refuse(where, f"operator {j} of subgraph {g} has builtin_options{which} of type "
                                         f"{getattr(op, f'builtinOptions{which}Type')}, which this schema does not know")
    for k, md in enumerate(mt.metadata or ()):
        if not 0 <= md.buffer < n_bufs:
            raise ModelFormatError(f"'{where}': metadata {k} refers to buffer {md.buffer}, but the model has {n_bufs}.",
                                   hint="Re-export the model.")
    kept = {md.buffer for md in mt.metadata or () if _name(md.name) in KEPT_METADATA}
    used = {t.buffer for sg in mt.subgraphs or () for t in sg.tensors or ()}
    if kept & used - {0}:
        raise _refuse(where, f"metadata and tensors share buffer(s) {sorted(kept & used - {0})}")


def _name(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw or "")


# --------------------------------------------------------------------------- the rewrite


def _data(b) -> bytes:
    return b"" if b is None or b.data is None else np.asarray(b.data, dtype=np.uint8).tobytes()


def _pack(s, mt, size_hint: int) -> bytes:
    """Pack ``mt`` with every constant buffer 16-byte aligned (the Python object API aligns to 1)."""
    import flatbuffers

    class AlignedBuffer(s.BufferT):
        def __init__(self, raw: bytes):
            super().__init__()
            self.raw = raw

        def Pack(self, builder):  # noqa: N802 - the object API's method name
            vec = None
            if self.raw:
                n = len(self.raw)
                builder.StartVector(1, n, ALIGN)
                builder.head -= n
                builder.Bytes[builder.head:builder.head + n] = self.raw
                vec = builder.EndVector()
            s.BufferStart(builder)
            if vec is not None:
                s.BufferAddData(builder, vec)
            return s.BufferEnd(builder)

    mt.buffers = [AlignedBuffer(_data(b)) for b in mt.buffers]
    b = flatbuffers.Builder(size_hint + 1024)
    b.Finish(mt.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _check_alignment(s, out: bytes, where: str) -> None:
    m = s.Model.GetRootAs(out, 0)
    for k in range(m.BuffersLength()):
        buf = m.Buffers(k)
        if buf.DataLength():
            off = buf._tab.Vector(buf._tab.Offset(4))
            if off % ALIGN:
                raise CheckFailed(f"Stripping '{where}' placed buffer {k} at offset {off}, not {ALIGN}-byte aligned.",
                                  hint="This is a workbench bug; export with --no-strip meanwhile.")


def constant_bytes(data: bytes) -> int:
    """Bytes of distinct constant data the tensors of a .tflite refer to (metadata not counted)."""
    from workbench.frontends.tflite_reader import schema

    mt = schema().ModelT.InitFromPackedBuf(data, 0)
    bufs = mt.buffers or ()
    used = {t.buffer for sg in mt.subgraphs or () for t in sg.tensors or () if 0 <= t.buffer < len(bufs)}
    return sum(len(d) for d in {_data(bufs[i]) for i in used})


def strip_tflite(data: bytes, where: str = "<bytes>", level: str = "portable") -> tuple[bytes, StripReport]:
    """The stripped flatbuffer of ``data`` and what was removed; refuses what it cannot prove safe.

    ``level``: "portable" (TFLM and LiteRT run it) or "tflm" (also cuts per-channel zero-point tables
    holding one repeated value to that one value: TFLM's allocator broadcasts a one-entry table,
    micro_allocator.cc, while LiteRT requires one zero point per scale)."""
    if level not in ("portable", "tflm"):
        raise ConfigError(f"Strip level must be 'portable' or 'tflm', got {level!r}.")
    from workbench.frontends.tflite_reader import schema

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError(f"'{where}' is not a TFLite flatbuffer (no 'TFL3' identifier at byte 4).",
                               hint="Give a .tflite file.")
    from workbench.frontends.tflite_reader import read_tflite_bytes

    read_tflite_bytes(data, where)  # the bounds-checked reader: a clear error for truncated or corrupt files
    s = schema()
    try:
        mt = s.ModelT.InitFromPackedBuf(data, 0)
        _check_structure(s, data, mt, where)
    except (IndexError, ValueError, TypeError, OverflowError, AttributeError, struct.error, RecursionError, MemoryError,
            UnicodeDecodeError) as exc:
        raise ModelFormatError(f"'{where}' is a corrupt or truncated TFLite flatbuffer ({type(exc).__name__}: {exc}).",
                               hint="Re-export the model.") from None
    removed: dict[str, int | list] = {"tensor_names": 0, "subgraph_names": 0, "signature_defs": len(mt.signatureDefs or ()),
                                      "description": int(bool(mt.description)), "metadata": [], "min_max_tables": 0,
                                      "shape_signatures": 0, "zero_point_entries": 0, "operator_codes": 0, "buffers": 0, "duplicate_buffers": 0}
    mt.description = None
    mt.signatureDefs = None
    mt.metadataBuffer = None
    kept_md = []
    for md in mt.metadata or ():
        (kept_md if _name(md.name) in KEPT_METADATA else removed["metadata"]).append(md)
    removed["metadata"] = [_name(md.name) for md in removed["metadata"]]
    mt.metadata = kept_md or None

    # operator codes no operator uses
    used_codes = sorted({op.opcodeIndex for sg in mt.subgraphs or () for op in sg.operators or ()})
    code_map = {old: new for new, old in enumerate(used_codes)}
    removed["operator_codes"] = len(mt.operatorCodes or ()) - len(used_codes)
    mt.operatorCodes = [mt.operatorCodes[i] for i in used_codes]

    # names, calibration ranges, redundant shape signatures, debug indices
    for sg in mt.subgraphs or ():
        removed["subgraph_names"] += int(bool(sg.name))
        sg.name, sg.debugMetadataIndex = None, -1
        for op in sg.operators or ():
            op.opcodeIndex = code_map[op.opcodeIndex]
            op.debugMetadataIndex = -1
        for t in sg.tensors or ():
            removed["tensor_names"] += int(bool(t.name))
            t.name = None
            q = t.quantization
            if q is not None:
                if q.min is not None or q.max is not None:
                    removed["min_max_tables"] += 1
                q.min = q.max = None
                zp = q.zeroPoint
                if level == "tflm" and zp is not None and len(zp) > 1 and np.all(np.asarray(zp) == zp[0]):
                    removed["zero_point_entries"] += len(zp) - 1
                    q.zeroPoint = np.asarray(zp[:1])
                if (q.scale is None or not len(q.scale)) and (q.zeroPoint is None or not len(q.zeroPoint)) and not q.detailsType:
                    t.quantization = None
            if t.shapeSignature is not None and t.shape is not None and np.array_equal(t.shapeSignature, t.shape):
                t.shapeSignature = None
                removed["shape_signatures"] += 1

    # duplicate constant buffers, then unused buffers (buffer 0 stays the empty sentinel)
    raw = [_data(b) for b in mt.buffers or ()]
    first: dict[bytes, int] = {}
    variable = {t.buffer for sg in mt.subgraphs or () for t in sg.tensors or () if t.isVariable}
    for sg in mt.subgraphs or ():
        for t in sg.tensors or ():
            d = raw[t.buffer]
            if not d or t.buffer in variable:
                continue
            keep = first.setdefault(d, t.buffer)
            if keep != t.buffer:
                t.buffer = keep
    used = {0} | {t.buffer for sg in mt.subgraphs or () for t in sg.tensors or ()} | {md.buffer for md in kept_md}
    order = sorted(used)
    buf_map = {old: new for new, old in enumerate(order)}
    n_dupes = len({i for i, d in enumerate(raw) if d and first.get(d, i) != i and i not in variable})
    removed["duplicate_buffers"] = n_dupes
    removed["buffers"] = len(raw) - len(order) - n_dupes
    mt.buffers = [mt.buffers[i] for i in order]
    for sg in mt.subgraphs or ():
        for t in sg.tensors or ():
            t.buffer = buf_map[t.buffer]
    for md in kept_md:
        md.buffer = buf_map[md.buffer]

    md_bufs = {md.buffer for md in kept_md}
    const = sum(len(_data(b)) for i, b in enumerate(mt.buffers) if i not in md_bufs)
    out = _pack(s, mt, len(data))
    _check_alignment(s, out, where)
    return out, StripReport(bytes_before=len(data), bytes_after=len(out), constant_bytes=const, removed=removed,
                            kept_metadata=tuple(_name(md.name) for md in kept_md))


# --------------------------------------------------------------------------- proving the result the same


def _inputs(specs, samples: int, seed: int) -> list[list[np.ndarray]]:
    """Random raw inputs (the full integer range, or standard normal floats) for every model input."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(samples):
        row = []
        for spec in specs:
            dt, shape = np.dtype(spec.dtype), [1 if d is None else int(d) for d in spec.shape]
            if np.issubdtype(dt, np.integer):
                info = np.iinfo(dt)
                row.append(rng.integers(info.min, int(info.max) + 1, size=shape, dtype=np.int64).astype(dt))
            else:
                row.append(rng.standard_normal(shape).astype(dt))
        out.append(row)
    return out


def _litert_outputs(path, batches) -> list[list[np.ndarray]]:
    from workbench.runtimes.litert import interpreter_module

    mod, _ = interpreter_module()
    kw = {"model_path": str(path)}
    if getattr(mod, "OpResolverType", None) is not None:
        kw["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    it = mod.Interpreter(**kw)
    it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()
    res = []
    for row in batches:
        for d, x in zip(ins, row):
            it.set_tensor(d["index"], x)
        it.invoke()
        res.append([it.get_tensor(d["index"]).copy() for d in outs])
    return res


def verify_identical(original, candidate, *, samples: int = 8, seed: int = 0, runtimes=("litert", "tflm")) -> dict:
    """Run ``original`` and ``candidate`` (.tflite paths) on the same random raw inputs in LiteRT (builtin
    kernels, every input and output) and the TFLM interpreter (input 0, output 0); CheckFailed unless
    every output is bit-identical. Returns ``{"samples": n, "runtimes": [...], "skipped": {...}}``."""
    from workbench.frontends.loader import load

    batches = _inputs(load(original).inputs, samples, seed)
    checked, skipped = [], {}
    if "litert" in runtimes:
        a, b = _litert_outputs(original, batches), _litert_outputs(candidate, batches)
        _same(a, b, "LiteRT", original, candidate)
        checked.append("litert")
    if "tflm" in runtimes:
        if len(batches[0]) != 1:
            skipped["tflm"] = "the TFLM runner feeds one input; the model has several"
        else:
            from workbench.runtimes.tflm import TflmRunner

            x = np.concatenate([row[0] for row in batches])
            ya = TflmRunner(load(original))._run(x)
            yb = TflmRunner(load(candidate))._run(x)
            _same([[ya]], [[yb]], "TensorFlow Lite Micro", original, candidate)
            checked.append("tflm")
    return {"samples": samples, "seed": seed, "runtimes": checked, "skipped": skipped, "bit_identical": True}


def _same(a, b, runtime: str, original, candidate) -> None:
    for i, (ra, rb) in enumerate(zip(a, b)):
        for k, (x, y) in enumerate(zip(ra, rb)):
            if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                raise CheckFailed(f"{runtime} gives different outputs for '{candidate}' and '{original}' "
                                  f"(sample {i}, output {k}).",
                                  hint="Keep the original model (--no-strip) and report this as a workbench bug.")


def strip_file(src, out, *, level: str = "portable", overwrite: bool = False, verify: bool = True, samples: int = 8):
    """Strip the .tflite ``src`` into ``out`` (checked bit-identical in LiteRT and TFLM when ``verify``).
    Returns an Artifact of format "tflite" with the report in its metrics (manifest not written)."""
    from pathlib import Path

    from workbench.core.files import atomic_path, check_input_file, check_output
    from workbench.export.artifact import Artifact

    src = check_input_file(src)
    if not src.is_file():
        raise ModelFormatError(f"Model '{src}' is not a file.", hint="Give the path of a .tflite file.")
    out = Path(out)
    check_output(out, overwrite)
    data, report = strip_tflite(src.read_bytes(), src.name, level)
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(data)
        checked = verify_identical(src, tmp, samples=samples, runtimes=RUNTIMES[level]) if verify else None
    metrics = {**report.to_dict(), **({"verify": checked} if checked else {})}
    return Artifact(path=out, format="tflite", source=src, config={"strip": level, "verify": verify}, metrics=metrics)
