"""When TFLite Micro names the node that failed ("Node SQRT (number 246f) failed to invoke ..."),
that node is the one blamed, on the host interpreter and on the firmware; the bisection over
truncated models runs only when TFLM names none.

The model is built here with the .tflite schema: RESHAPE, RELU, RELU, SQRT, RELU on int8
tensors. TFLM's SQRT kernel computes float32 only, so node 3 fails and TFLM says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

KINDS = ("RESHAPE", "RELU", "RELU", "SQRT", "RELU")
FAILING = 3


def _model(path: Path, kinds=KINDS) -> Path:
    import flatbuffers

    from workbench.frontends.tflite_reader import schema

    s = schema()
    m = s.ModelT()
    m.version = 3
    m.buffers = [s.BufferT()]
    codes: list[int] = []
    sg = s.SubGraphT()
    sg.tensors = []
    for i in range(len(kinds) + 1):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = f"t{i}", [1, 4], s.TensorType.INT8, 0
        q = s.QuantizationParametersT()
        q.scale, q.zeroPoint = [0.05], [-3]
        t.quantization = q
        sg.tensors.append(t)
    sg.operators = []
    for i, kind in enumerate(kinds):
        code = getattr(s.BuiltinOperator, kind)
        if code not in codes:
            codes.append(code)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(code), [i], [i + 1]
        sg.operators.append(op)
    sg.inputs, sg.outputs = [0], [len(kinds)]
    m.subgraphs = [sg]
    m.operatorCodes = []
    for code in codes:
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        m.operatorCodes.append(oc)
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path


@pytest.fixture(scope="module")
def sqrt_int8(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("node") / "sqrt_int8.tflite")


@pytest.mark.parametrize("line,expected", [
    ("Node SQRT (number 246f) failed to prepare with status 1", {"op": "SQRT", "number": 246, "stage": "prepare"}),
    ("x.cc:202 input->type != expected_type (INT8 != FLOAT32)\r\nNode SQRT (number 3) failed to invoke with status 1",
     {"op": "SQRT", "number": 3, "stage": "invoke"}),
    ("Node TFLite_Detection_PostProcess (number 12) failed to invoke with status 1",
     {"op": "TFLite_Detection_PostProcess", "number": 12, "stage": "invoke"}),
    ("Didn't find op for builtin opcode 'GELU'", None),
])
def test_tflm_failed_node_messages_are_parsed(line, expected):
    from workbench.runtimes.tflm_child import parse_failed_node

    assert parse_failed_node(line) == expected


def test_the_node_number_counts_within_its_subgraph():
    from workbench.frontends.graph import Graph, Op
    from workbench.runtimes.tflm import node_op

    ops = [Op(index=i, kind=k, version=1, inputs=(), outputs=(), subgraph=sg)
           for i, (k, sg) in enumerate([("RESHAPE", 0), ("WHILE", 0), ("ADD", 1), ("SQRT", 1), ("LESS", 2)])]
    g = Graph(format="tflite", tensors=(), ops=tuple(ops), inputs=(), outputs=())
    assert node_op(g, {"op": "SQRT", "number": 1, "stage": "invoke"}).index == 3  # the WHILE body's node 1
    assert node_op(g, {"op": "WHILE", "number": 1, "stage": "invoke"}).index == 1
    assert node_op(g, {"op": "RESHAPE", "number": 0, "stage": "prepare"}).index == 0
    assert node_op(g, {"op": "CONV_2D", "number": 9, "stage": "invoke"}) is None


def test_host_tflm_blames_the_node_tflm_names_without_bisecting(sqrt_int8):
    from workbench.core.errors import RuntimeFailure, UnsupportedError
    from workbench.runtimes.tflm import _child, measure_arena

    raw = _child(["arena", str(sqrt_int8)], 120, "test")
    assert raw["failed_node"]["number"] == FAILING and raw["op_index_source"] == "tflm" and "op_index" not in raw
    with pytest.raises((RuntimeFailure, UnsupportedError)) as ei:
        measure_arena(sqrt_int8)
    err = ei.value
    assert f"op {FAILING} SQRT" in err.message and "RESHAPE" not in err.message
    assert err.problem["index"] == FAILING and err.problem["op"] == "SQRT"


def test_emulate_names_the_failing_node(sqrt_int8):
    """On an MCU target (the firmware where it can be built, else the host TFLM): op 3 SQRT, not op 0."""
    from workbench.cli import main

    r = CliRunner().invoke(main, ["emulate", str(sqrt_int8), "--target", "stm32l4r5", "--json"])
    assert r.exit_code == 1, r.output
    d = json.loads(r.stdout)
    assert d["fits"] is False and d.get("tool_failure") is None
    (problem,) = d["unsupported_ops"]
    assert problem["index"] == FAILING and problem["op"] == "SQRT", problem


def test_a_firmware_failure_names_the_node_tflm_printed(sqrt_int8):
    """The harness passes TFLM's log lines on; the report's problem names the op TFLM named."""
    from workbench.core.errors import RuntimeFailure
    from workbench.emulate.emulator import _firmware_problem
    from workbench.emulate.firmware.qemu import tflm_failed_node
    from workbench.frontends.tflite_reader import read_tflite

    logs = ["tensorflow/lite/micro/kernels/elementwise.cc:90 Input data type INT8 (9) is not supported.",
            "Node SQRT (number 3f) failed to prepare with status 1"]
    err = RuntimeFailure("The firmware of 'sqrt_int8.tflite' failed on QEMU mps2-an386 during allocate: AllocateTensors failed.")
    err.tflm_node = tflm_failed_node(logs)
    problem = _firmware_problem(err, read_tflite(sqrt_int8))
    assert problem["index"] == FAILING and problem["op"] == "SQRT" and problem["phase"] == "prepare"
    assert problem["message"].startswith("op 3 SQRT") and "RESHAPE" not in problem["message"]
