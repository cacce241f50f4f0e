"""TF1 frozen graphs run as TensorFlow 1.x ran them: imported into a ``tf.Graph`` and fed through a
``tf.compat.v1.Session``. The float reference for a frozen ``.pb`` (parity checks, ``compare``)."""

from __future__ import annotations

import numpy as np

from workbench.core.errors import RuntimeFailure, UnsupportedError
from workbench.core.quiet import captured_output, import_quietly
from workbench.frontends.handle import ModelHandle
from workbench.runtimes.base import RUNNERS, Runner


def pruned_graph_def(tf, handle: ModelHandle):
    """The GraphDef in ``handle.path`` cut down to what computes the handle's outputs (a frozen training graph
    keeps its gradient and optimizer nodes, which may not even import once the variables became constants)."""
    graph_def = tf.compat.v1.GraphDef()
    data = handle.meta.get("graphdef_bytes")  # a TF1 SavedModel frozen at load time
    graph_def.ParseFromString(data if data is not None else handle.path.read_bytes())
    if handle.outputs:
        with captured_output():
            graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [o.name for o in handle.outputs])
    return graph_def


class Tf1SessionRunner(Runner):
    name = "tf1-session"
    batch_size = 1  # placeholders often fix the batch; one sample per run works for every graph

    def __init__(self, handle: ModelHandle, threads: int | None = None):
        if handle.framework != "tf1":
            raise UnsupportedError(f"The tf1-session runtime runs TF1 frozen graphs; '{handle.path}' is {handle.format}.")
        tf = import_quietly("tensorflow", extra="tf", purpose="Running TF1 frozen graphs")
        self.tf = tf
        self.inputs, self.outputs = handle.inputs, handle.outputs
        try:
            graph_def = pruned_graph_def(tf, handle)
            self.graph = tf.Graph()
            with self.graph.as_default(), captured_output():
                tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as exc:  # DecodeError, ValueError (an op this TensorFlow lacks), ...
            raise RuntimeFailure(f"TensorFlow could not import the graph in '{handle.path}': {str(exc).strip().splitlines()[0][:300]}",
                                 hint="The graph may need ops from a newer or a custom TensorFlow build.") from None
        config = tf.compat.v1.ConfigProto()
        if threads:
            config.intra_op_parallelism_threads = threads
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)

    def run_all(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One run with every named input fed; returns every output by name."""
        fetch = [f"{o.name}:0" for o in self.outputs]
        try:
            values = self.session.run(fetch, {f"{k}:0": v for k, v in feeds.items()})
        except Exception as exc:  # InvalidArgumentError, ...
            raise RuntimeFailure(f"The TF1 session failed: {str(exc).strip().splitlines()[0][:300]}",
                                 hint="Check the input names and shapes (--inputs NAME:SHAPE).") from None
        return {o.name: np.asarray(v) for o, v in zip(self.outputs, values)}

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self._run_all(x)[0]

    def _run_all(self, x: np.ndarray) -> list[np.ndarray]:
        first = self.inputs[0]
        by_name = self.run_all({first.name: x.astype(first.dtype, copy=False)})
        return [by_name[o.name] for o in self.outputs]

    def output_names(self) -> tuple[tuple[str, ...], ...]:
        # a graph's output node "scores" is the tensor "scores:0", the name a converted .tflite keeps
        return tuple((o.name, f"{o.name}:0") for o in self.outputs)

    def info(self) -> dict:
        return {"runtime": self.name, "version": self.tf.__version__}

    def close(self) -> None:
        self.session.close()


RUNNERS.add("tf1-session", Tf1SessionRunner)
