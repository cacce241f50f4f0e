"""Device emulation: will a model fit a board, how fast will it run, what does the board's
runtime do to its accuracy.

    from workbench.emulate import emulate, list_targets, load_target
    report = emulate("model.tflite", "stm32l4r5", eval_data="digits")
    report.fits, report.to_dict()["latency_ms"]

Target profiles are YAML files (``targets/`` in the repository, ``workbench.builtin.targets``
when installed); :mod:`workbench.emulate.cost` documents the latency model,
:mod:`workbench.emulate.memory` how flash and RAM are measured and
:mod:`workbench.emulate.compat` how op support is decided.
"""

from workbench.emulate.emulator import emulate
from workbench.emulate.report import TargetReport, render_text
from workbench.emulate.targets import Target, list_targets, load_target, load_target_file

__all__ = ["emulate", "list_targets", "load_target", "load_target_file", "Target", "TargetReport", "render_text"]
