"""`workbench strip` and `export --format tflm --strip` (issue 15): smaller flatbuffers, bit-identical outputs
in TFLite Micro and LiteRT, refusal of models whose structure strip cannot prove it keeps."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.cli import main
from workbench.core.errors import ModelFormatError, UnsupportedError
from workbench.export.strip import KEPT_METADATA, constant_bytes, strip_tflite, verify_identical


def _schema():
    from ai_edge_litert import schema_py_generated as s

    return s


def _repack(mt) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1 << 16)
    b.Finish(mt.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


@pytest.fixture(scope="module")
def stripped(digits_tflite_int8, tmp_path_factory):
    d = tmp_path_factory.mktemp("strip")
    data, rep = strip_tflite(digits_tflite_int8.read_bytes(), digits_tflite_int8.name)
    (d / "portable.tflite").write_bytes(data)
    tdata, trep = strip_tflite(digits_tflite_int8.read_bytes(), digits_tflite_int8.name, level="tflm")
    (d / "tflm.tflite").write_bytes(tdata)
    return {"portable": (d / "portable.tflite", rep), "tflm": (d / "tflm.tflite", trep)}


def test_byte_counts(digits_tflite_int8, stripped):
    path, rep = stripped["portable"]
    before = digits_tflite_int8.stat().st_size
    assert rep.bytes_before == before and rep.bytes_after == path.stat().st_size
    assert rep.constant_bytes == constant_bytes(digits_tflite_int8.read_bytes()) == constant_bytes(path.read_bytes())
    assert before - rep.bytes_after >= 1000  # names, signature, metadata of the digits model: ~1.2 KB
    assert rep.ratio <= 1.7  # 1.60x measured; 1.85x unstripped
    assert set(rep.removed["metadata"]) == {"min_runtime_version", "CONVERSION_METADATA"}
    assert rep.removed["tensor_names"] == 12 and rep.removed["signature_defs"] == 1
    trep = stripped["tflm"][1]
    assert trep.bytes_after < rep.bytes_after and trep.removed["zero_point_entries"] > 0


def test_stripped_model_keeps_structure(digits_tflite_int8, stripped):
    s = _schema()
    a = s.ModelT.InitFromPackedBuf(digits_tflite_int8.read_bytes(), 0)
    b = s.ModelT.InitFromPackedBuf(stripped["portable"][0].read_bytes(), 0)
    assert b.version == a.version and b.signatureDefs is None and b.description is None
    ga, gb = a.subgraphs[0], b.subgraphs[0]
    assert len(ga.tensors) == len(gb.tensors) and list(ga.inputs) == list(gb.inputs) and list(ga.outputs) == list(gb.outputs)
    for ta, tb in zip(ga.tensors, gb.tensors):
        assert tb.name is None and list(ta.shape) == list(tb.shape) and ta.type == tb.type
        da, db = a.buffers[ta.buffer].data, b.buffers[tb.buffer].data
        assert (da is None or not len(da)) == (db is None or not len(db))
        if da is not None and len(da):
            assert bytes(da) == bytes(db)
    for oa, ob in zip(ga.operators, gb.operators):
        assert a.operatorCodes[oa.opcodeIndex].builtinCode == b.operatorCodes[ob.opcodeIndex].builtinCode
    # every constant buffer 16-byte aligned
    m = s.Model.GetRootAs(stripped["portable"][0].read_bytes(), 0)
    for k in range(m.BuffersLength()):
        buf = m.Buffers(k)
        if buf.DataLength():
            assert buf._tab.Vector(buf._tab.Offset(4)) % 16 == 0


def test_bit_identical_in_tflm_and_litert(digits_tflite_int8, stripped):
    r = verify_identical(digits_tflite_int8, stripped["portable"][0], samples=16)
    assert r["runtimes"] == ["litert", "tflm"] and r["bit_identical"]
    r = verify_identical(digits_tflite_int8, stripped["tflm"][0], samples=16, runtimes=("tflm",))
    assert r["runtimes"] == ["tflm"]


def test_tflm_level_is_refused_by_litert(stripped):
    from ai_edge_litert.interpreter import Interpreter

    with pytest.raises((RuntimeError, ValueError)):
        it = Interpreter(model_path=str(stripped["tflm"][0]))
        it.allocate_tensors()


def test_idempotent(stripped):
    path, rep = stripped["portable"]
    again, rep2 = strip_tflite(path.read_bytes(), path.name)
    assert again == path.read_bytes() and rep2.removed["tensor_names"] == 0


def test_duplicate_and_unused_buffers_and_codes(digits_tflite_int8, tmp_path):
    s = _schema()
    mt = s.ModelT.InitFromPackedBuf(digits_tflite_int8.read_bytes(), 0)
    sg = mt.subgraphs[0]
    const = next(t for t in sg.tensors if mt.buffers[t.buffer].data is not None and len(mt.buffers[t.buffer].data) > 100)
    dup = s.BufferT()
    dup.data = np.array(mt.buffers[const.buffer].data, copy=True)
    mt.buffers.append(dup)
    const.buffer = len(mt.buffers) - 1  # now an identical copy holds this tensor's data
    unused = s.BufferT()
    unused.data = np.arange(64, dtype=np.uint8)
    mt.buffers.append(unused)
    extra_code = s.OperatorCodeT()
    extra_code.builtinCode = extra_code.deprecatedBuiltinCode = s.BuiltinOperator.TANH
    mt.operatorCodes.append(extra_code)
    src = tmp_path / "dupes.tflite"
    src.write_bytes(_repack(mt))
    data, rep = strip_tflite(src.read_bytes(), src.name)
    assert rep.removed["buffers"] >= 1 and rep.removed["operator_codes"] == 1
    out = tmp_path / "dupes_stripped.tflite"
    out.write_bytes(data)
    assert verify_identical(src, out)["runtimes"] == ["litert", "tflm"]
    # the copy is gone: the stripped model holds no more constant bytes than the original
    assert rep.constant_bytes == constant_bytes(digits_tflite_int8.read_bytes())
    # the original had the copy in a separate buffer; strip merged it (or dropped the orphan)
    assert rep.removed["duplicate_buffers"] + rep.removed["buffers"] >= 2


def test_kept_metadata(digits_tflite_int8):
    s = _schema()
    mt = s.ModelT.InitFromPackedBuf(digits_tflite_int8.read_bytes(), 0)
    for name in KEPT_METADATA:
        buf = s.BufferT()
        buf.data = np.frombuffer(name.encode() * 2, dtype=np.uint8).copy()
        mt.buffers.append(buf)
        md = s.MetadataT()
        md.name, md.buffer = name.encode(), len(mt.buffers) - 1
        mt.metadata.append(md)
    data, rep = strip_tflite(_repack(mt), "with_metadata.tflite")
    assert set(rep.kept_metadata) == set(KEPT_METADATA)
    out = s.ModelT.InitFromPackedBuf(data, 0)
    kept = {m.name.decode(): bytes(out.buffers[m.buffer].data) for m in out.metadata}
    assert kept == {n: n.encode() * 2 for n in KEPT_METADATA}


def _refused(data, text):
    with pytest.raises(UnsupportedError) as e:
        strip_tflite(data, "odd.tflite")
    assert text in str(e.value) and "odd.tflite" in str(e.value) and e.value.hint


def test_refuses_external_buffer_data(digits_tflite_int8):
    s = _schema()
    mt = s.ModelT.InitFromPackedBuf(digits_tflite_int8.read_bytes(), 0)
    mt.buffers[1].offset, mt.buffers[1].size = 16, 64  # inside the file (one beyond it is refused as corrupt, see test_tflite_trust)
    _refused(_repack(mt), "outside the flatbuffer")


def test_refuses_sparse_tensors(digits_tflite_int8):
    s = _schema()
    mt = s.ModelT.InitFromPackedBuf(digits_tflite_int8.read_bytes(), 0)
    mt.subgraphs[0].tensors[3].sparsity = s.SparsityParametersT()
    _refused(_repack(mt), "sparse")


def test_refuses_fields_the_schema_does_not_know(digits_tflite_int8):
    """A Tensor table with one more field than this schema has (what a newer converter would write)."""
    import flatbuffers

    s = _schema()
    mt = s.ModelT.InitFromPackedBuf(digits_tflite_int8.read_bytes(), 0)
    real_start = s.TensorStart
    real_end = s.TensorEnd

    def start(b):
        b.StartObject(12)  # one slot more than the 11 fields of Tensor in this schema

    def end(b):
        b.PrependInt32Slot(11, 7, 0)
        return real_end(b)

    s.TensorStart, s.TensorEnd = start, end
    try:
        b = flatbuffers.Builder(1 << 16)
        b.Finish(mt.Pack(b), file_identifier=b"TFL3")
    finally:
        s.TensorStart, s.TensorEnd = real_start, real_end
    _refused(bytes(b.Output()), "does not know")


def test_not_a_tflite():
    with pytest.raises(ModelFormatError):
        strip_tflite(b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "picture.tflite")


def test_cli_strip(digits_tflite_int8, tmp_path):
    out = tmp_path / "s.tflite"
    r = CliRunner().invoke(main, ["strip", str(digits_tflite_int8), "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    m = d["metrics"]
    assert m["bytes_after"] == out.stat().st_size < m["bytes_before"] == digits_tflite_int8.stat().st_size
    assert m["verify"]["runtimes"] == ["litert", "tflm"]
    r = CliRunner().invoke(main, ["strip", str(digits_tflite_int8), "-o", str(out)])
    assert r.exit_code == 2 and "exists" in r.output
    r = CliRunner().invoke(main, ["strip", str(digits_tflite_int8), "-o", str(out), "--overwrite", "--tflm-only"])
    assert r.exit_code == 0 and "TensorFlow Lite Micro" in r.output and "zero point entries" in r.output


def test_export_tflm_strips_by_default(digits_tflite_int8, tmp_path):
    from workbench.export.strip import strip_tflite as _strip

    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "-o", str(tmp_path / "a"), "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["metrics"]
    want = _strip(digits_tflite_int8.read_bytes(), "x")[0]
    assert m["model_bytes"] == len(want) and m["strip"]["level"] == "portable"
    assert m["strip"]["verify"]["runtimes"] == ["litert", "tflm"]
    header = (tmp_path / "a" / f"{digits_tflite_int8.stem}_model_data.h").read_text()
    assert f"_size = {len(want)};" in header
    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "--no-strip", "-o", str(tmp_path / "b"),
                                  "--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["metrics"]
    assert m["model_bytes"] == digits_tflite_int8.stat().st_size and "strip" not in m
    r = CliRunner().invoke(main, ["export", str(digits_tflite_int8), "--format", "tflm", "--no-strip", "--strip-tflm-only",
                                  "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and not (tmp_path / "c").exists()
