"""Detect a model's format from its content (magic bytes, zip members, flatbuffer identifiers).

The extension is only a tie-breaker; a file whose content matches no known format gets
a clear error naming what was found.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.core.files import check_input_file
from workbench.frontends.protobuf_wire import read_varint

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

FORMATS = {
    "tflite": "TensorFlow Lite flatbuffer (.tflite)",
    "ort": "ONNX Runtime format (.ort)",
    "pte": "ExecuTorch program (.pte)",
    "onnx": "ONNX protobuf (.onnx)",
    "keras": "Keras 3 archive (.keras)",
    "h5": "Keras HDF5 model (.h5)",
    "savedmodel": "TensorFlow SavedModel folder",
    "torchscript": "TorchScript archive (torch.jit.save)",
    "exported_program": "PyTorch ExportedProgram (.pt2, torch.export.save)",
    "state_dict": "PyTorch checkpoint (torch.save zip)",
    "pickle": "Python pickle (legacy torch.save)",
    "frozen_graph": "TensorFlow 1.x frozen graph (.pb holding a GraphDef)",
}


def detect_format(path: str | Path) -> str:
    p = check_input_file(path)
    if p.is_dir():
        if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
            return "savedmodel"
        raise ModelFormatError(
            f"'{p}' is a folder but not a TensorFlow SavedModel (no saved_model.pb inside).",
            hint="Pass a model file, or the folder written by tf.saved_model.save.",
        )
    with open(p, "rb") as fh:
        head = fh.read(64)
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if len(head) >= 8 and head[4:8] == b"ORTM":
        return "ort"
    if is_pte(head):
        return "pte"
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head.startswith(b"PK"):
        return _detect_zip(p)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "pickle"
    if looks_like_graphdef(head):
        return "frozen_graph"
    if _is_saved_model_proto(p, head):
        raise ModelFormatError(f"'{p}' is the saved_model.pb of a TensorFlow SavedModel, not a model file on its own.",
                               hint=f"Pass the SavedModel folder ('{p.parent}'), with its variables/ folder beside it.")
    if _looks_like_onnx(head, p):
        return "onnx"
    raise ModelFormatError(
        f"Cannot tell what kind of model '{p}' is: its first bytes ({head[:8].hex(' ')}) match no known format.",
        hint="Supported: " + "; ".join(FORMATS.values()) + ".",
    )


def is_pte(head: bytes) -> bool:
    """An ExecuTorch program: a flatbuffer whose file identifier (bytes 4-8) is "ET" and a two-digit schema
    version ("ET12" from executorch 0.4 to 1.5)."""
    return len(head) >= 8 and head[4:6] == b"ET" and head[6:8].isdigit()


def _detect_zip(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFormatError(
            f"'{p}' starts like a zip archive (.keras, TorchScript, .pt2 or torch.save) but cannot be opened: {exc}.",
            hint="The file is probably truncated or corrupted; re-create it.",
        ) from None
    base = {n.split("/", 1)[-1] for n in names}
    if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
        return "keras"
    if "archive_format" in base and any("models/" in n for n in names):
        return "exported_program"
    if "constants.pkl" in base and any(n.split("/", 1)[-1].startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in base:
        return "state_dict"
    raise ModelFormatError(
        f"'{p}' is a zip archive but not a model this tool knows (members: {', '.join(sorted(names)[:5])}...).",
        hint="Supported zip formats: Keras 3 .keras, TorchScript, ExportedProgram .pt2, torch.save checkpoints.",
    )


def _looks_like_onnx(head: bytes, p: Path) -> bool:
    # An ONNX ModelProto usually begins with ir_version (field 1, varint: tag 0x08).
    # Other leading fields are possible, so also accept the .onnx extension with any
    # protobuf-looking first tag; the reader validates the whole file afterwards.
    if not head:
        return False
    if head[0] == 0x08 and len(head) > 1 and 1 <= head[1] <= 20:
        return True
    return p.suffix.lower() == ".onnx" and head[0] in (0x08, 0x12, 0x1A, 0x22, 0x2A, 0x32, 0x3A, 0x42)


def looks_like_graphdef(head: bytes) -> bool:
    """A GraphDef starts with its first node (field 1, length-delimited: 0x0a), whose first field is the
    node's name (0x0a again). An ONNX ModelProto's field 1 is a varint (0x08) and a SavedModel starts with
    its schema version (0x08 too), so neither matches."""
    if len(head) < 4 or head[0] != 0x0A:
        return False
    try:
        _, pos = read_varint(memoryview(head), 1)
    except ValueError:
        return False
    return pos < len(head) and head[pos] == 0x0A


def _is_saved_model_proto(p: Path, head: bytes) -> bool:
    """A SavedModel proto: schema version (field 1, varint) then MetaGraphDefs (field 2), and nothing else.
    An ONNX ModelProto also starts with a varint field 1 (ir_version) but always has a graph (field 7)."""
    from workbench.frontends import protobuf_wire as pw

    if head[:1] != b"\x08" or p.stat().st_size > 2**31:
        return False
    try:
        top = list(pw.fields(p.read_bytes()))
        metas = [v for f, w, v in top if f == 2 and w == pw.LEN]
        # MetaGraphDef: meta_info_def=1, graph_def=2, saver_def=3, collection_def=4, signature_def=5, asset_file_def=6,
        # object_graph_def=7: all messages
        meta_ok = bool(metas) and all(1 <= f <= 8 and w == pw.LEN for m in metas for f, w, _ in pw.fields(m))
    except ValueError:
        return False
    return meta_ok and {f for f, _, _ in top} <= {1, 2}
