"""An exported artifact and its manifest (JSON beside it).

The manifest records what is needed to reproduce and trust the file: source and artifact
hashes, the config used, tool and library versions, sizes and the measured metrics.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from workbench import __version__
from workbench.core.files import commit_files, sha256_file, staging_dir, write_json_atomic

VERSIONED = ("numpy", "tensorflow", "tf-keras", "keras", "tensorflow-model-optimization", "torch", "litert-torch",
             "torchao", "ai-edge-litert", "ai-edge-quantizer", "onnx", "onnxruntime", "onnxscript", "tflite-micro", "executorch")


def library_versions(names=VERSIONED) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def source_bytes(path: Path) -> int | None:
    """A source file's size; an .onnx file's with its external data files (model.onnx.data)."""
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        from workbench.core.errors import WorkbenchError
        from workbench.frontends.onnx_reader import model_files

        try:
            return sum(f.stat().st_size for f in model_files(path))
        except WorkbenchError:
            pass
    return path.stat().st_size


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: str  # tflite | onnx | ort | tflm
    source: Path | None
    config: dict
    metrics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        p = self.path
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)

    @property
    def manifest_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json") if not self.path.is_dir() else self.path / "manifest.json"

    def manifest(self) -> dict:
        return {
            "schema": "workbench.artifact/1",
            "artifact": {"path": self.path.name, "format": self.format, "bytes": self.bytes, "sha256": self.sha256},
            "source": None if self.source is None else {
                "path": self.source.name, "sha256": sha256_file(self.source),
                "bytes": source_bytes(self.source)},
            "config": self.config,
            "metrics": self.metrics,
            **({"float_ops": f} if (f := self.float_ops()) is not None else {}),
            **self.extra,
            "tool": {"workbench": __version__, "python": platform.python_version()},
            "libraries": library_versions(),
        }

    def float_ops(self) -> list[dict] | None:
        """A .tflite artifact's ops that compute in float (``[{op, count, layers}]``; empty for a fully integer
        model), so a quantized model's leftovers are on record; None for other formats."""
        if self.format != "tflite" or not self.path.is_file():
            return None
        from workbench.core.errors import WorkbenchError
        from workbench.frontends.tflite_reader import graph_float_ops, read_tflite

        try:
            return graph_float_ops(read_tflite(self.path))
        except WorkbenchError:
            return None

    def with_metrics(self, **metrics) -> "Artifact":
        from dataclasses import replace

        return replace(self, metrics={**self.metrics, **metrics})

    def write_manifest(self) -> Path:
        return write_json_atomic(self.manifest_path, self.manifest())


def manifest_path_of(out: Path) -> Path:
    return out.with_name(out.name + ".json")


@contextlib.contextmanager
def staged(out: str | Path) -> Iterator[Path]:
    """Write a file artifact and its manifest as one unit.

    Yields a path with ``out``'s name inside a fresh folder beside it: write the artifact there, its
    manifest (``Artifact.write_manifest``) and any companion files (ONNX external data) beside it.
    When the block ends normally they replace the old ones together (the old manifest is removed
    first, so a crash part-way never pairs a new model with an old manifest); when it fails or is
    interrupted the old pair is left as it was and the folder is removed.
    """
    out = Path(out)
    with staging_dir(out) as stage:
        main = stage / out.name
        yield main
        manifest = manifest_path_of(main)
        others = [f for f in sorted(stage.iterdir()) if f not in (main, manifest)]
        pairs = [(main, out), *[(f, out.parent / f.name) for f in others]]
        if manifest.exists():
            pairs.append((manifest, manifest_path_of(out)))
        else:  # no manifest this time: an old one must not describe the new file
            manifest_path_of(out).unlink(missing_ok=True)
        commit_files(pairs)
