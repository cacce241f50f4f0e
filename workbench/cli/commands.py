"""The list of commands; importing this imports no machine-learning framework."""

from workbench.cli.inspect_cmd import inspect_cmd

ALL = [inspect_cmd]
