"""The list of commands; importing this imports no machine-learning framework."""

from workbench.cli.compare_cmd import compare_cmd
from workbench.cli.debug_quant_cmd import debug_quant_cmd
from workbench.cli.export_cmd import export_cmd, quantize_cmd
from workbench.cli.inspect_cmd import inspect_cmd
from workbench.cli.profile_cmd import profile_cmd
from workbench.cli.compare_report_cmd import compare_report_cmd

ALL = [inspect_cmd, export_cmd, quantize_cmd, compare_cmd, debug_quant_cmd, profile_cmd, compare_report_cmd]
