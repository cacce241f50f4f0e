"""TF1 SavedModels (``tf.compat.v1.saved_model.Builder``) whose signature map has no ``serving_default``.

TF2's loader and converter want a ``serving_default`` signature; a TF1 export often has only
``predict`` (or a custom key), or no signature at all. Such a folder is loaded the TF1 way (a
``tf.compat.v1.Session`` and ``saved_model.loader.load`` with the ``serve`` tag), its variables are frozen
into constants for the signature's outputs (or ``--outputs``), and from there it is a frozen graph:
the same inspect rows, precheck, Session parity and TF1 converter (:mod:`workbench.frontends.graphdef`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from workbench.core.errors import ModelFormatError
from workbench.core.quiet import captured_output
from workbench.frontends.handle import ModelHandle
from workbench.frontends.loader import LoadOptions


def _node(tensor_name: str) -> str:
    return tensor_name.split(":")[0]


def load_tf1_savedmodel(path: Path, opts: LoadOptions, tf) -> ModelHandle:
    from workbench.frontends.graphdef import parse_graphdef, signature

    tf1 = tf.compat.v1
    graph = tf.Graph()
    try:
        with graph.as_default(), tf1.Session(graph=graph) as sess, captured_output():
            tags = _tags(tf, path)
            meta = tf1.saved_model.loader.load(sess, tags, str(path))
            sigs = dict(meta.signature_def)
            key = sorted(sigs)[0] if sigs else None
            outputs = list(opts.graph_outputs) or ([_node(t.name) for t in sigs[key].outputs.values()] if key else [])
            inputs = opts.graph_inputs or (tuple((_node(t.name), None) for t in sigs[key].inputs.values()) if key else ())
            if not outputs:
                raise ModelFormatError(f"The TF1 SavedModel '{path}' has no signature to tell its outputs.",
                                       hint="Name them with --outputs NAME,... (see the graph's nodes with a TF1 tool, e.g. "
                                            "saved_model_cli show --dir FOLDER --all).")
            frozen = tf1.graph_util.convert_variables_to_constants(sess, sess.graph_def, [_node(o) for o in outputs])
    except ModelFormatError:
        raise
    except Exception as exc:  # RuntimeError (no such tag), AssertionError/KeyError (no such node), ...
        raise ModelFormatError(f"TensorFlow could not load '{path}' as a TF1 SavedModel: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}",
                               hint="Check --outputs names nodes of the graph; a TF2 SavedModel needs a 'serving_default' "
                                    "signature (model.export(path) in Keras 3).") from None
    data = frozen.SerializeToString()
    info = parse_graphdef(data)
    ins, outs = signature(info, replace(opts, graph_inputs=tuple(inputs), graph_outputs=tuple(outputs)), path)
    return ModelHandle(path=path, format="savedmodel_tf1", framework="tf1", inputs=ins, outputs=outs,
                       meta={"graphdef": info, "graphdef_bytes": data, "outputs_named": True, "signature": key,
                             "tags": list(tags)})


def _tags(tf, path: Path) -> list[str]:
    """The ``serve`` tag set when there is one, else the first the SavedModel holds (read with the wire reader:
    SavedModel meta_graphs=2, MetaGraphDef meta_info_def=1, MetaInfoDef tags=4)."""
    from workbench.frontends import protobuf_wire as pw

    sets = []
    try:
        for f, w, meta in pw.fields((path / "saved_model.pb").read_bytes()):
            if f == 2 and w == pw.LEN:
                for f2, w2, info in pw.fields(meta):
                    if f2 == 1 and w2 == pw.LEN:
                        sets.append([pw.text(v) for f3, w3, v in pw.fields(info) if f3 == 4 and w3 == pw.LEN])
    except (ValueError, OSError):
        sets = []
    return next((t for t in sets if "serve" in t), sets[0] if sets else ["serve"])
