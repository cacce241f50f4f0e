"""TFLite Micro sources checked against a target: the export stage writes them, this stage
judges the fit (``emulate``) and hands the report in."""

from __future__ import annotations

from workbench.export.tflm_sources import write_tflm_project as _write


def assess_on(target):
    """The ``assess`` function the export stage takes: the emulation report of a .tflite on ``target``."""
    import workbench.emulate as stage  # looked up at call time, so tests can stand in for it

    return lambda path: stage.emulate(path, target).to_dict()


def write_tflm_project(tflite_path, out_dir, *, target=None, **kw):
    """:func:`workbench.export.tflm_sources.write_tflm_project` with the fit on ``target`` checked
    (a model that does not fit raises CheckFailed unless ``force=True``)."""
    if target is not None:
        kw.setdefault("assess", assess_on(target))
    return _write(tflite_path, out_dir, target=target, **kw)
