"""The list of commands; importing this imports no machine-learning framework."""

from workbench.cli.benchmark_cmd import benchmark_cmd
from workbench.cli.cluster_cmd import cluster_cmd
from workbench.cli.compare_cmd import compare_cmd
from workbench.cli.compare_report_cmd import compare_report_cmd
from workbench.cli.debug_quant_cmd import debug_quant_cmd
from workbench.cli.emulate_cmd import emulate_cmd
from workbench.cli.export_cmd import export_cmd, quantize_cmd
from workbench.cli.firmware_cmd import firmware_cmd
from workbench.cli.inspect_cmd import inspect_cmd
from workbench.cli.optimize_cmd import optimize_cmd
from workbench.cli.profile_cmd import profile_cmd
from workbench.cli.prune_cmd import prune_cmd
from workbench.cli.qat_cmd import qat_cmd
from workbench.cli.run_cmd import demo_cmd, run_cmd
from workbench.cli.strip_cmd import strip_cmd
from workbench.cli.targets_cmd import targets_cmd

# In the order a user meets them: look, optimize, export, measure, deploy, automate.
ALL = [inspect_cmd, prune_cmd, cluster_cmd, qat_cmd, quantize_cmd, export_cmd, strip_cmd, debug_quant_cmd, compare_cmd, targets_cmd, emulate_cmd,
       firmware_cmd, profile_cmd, compare_report_cmd, benchmark_cmd, run_cmd, optimize_cmd, demo_cmd]
