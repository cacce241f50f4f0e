"""The ``workbench`` command. Each command group lives in its own module and is a thin layer:
parse options, build a config, call the API, render the result.

Errors are turned into messages and exit codes here, in one place:
0 ok, 1 a check failed, 2 bad usage or input, 3 a missing optional dependency,
4 an internal error (a bug: please report it with the --debug traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys

import click

from workbench import __version__
from workbench.core.errors import WorkbenchError

INTERNAL_ERROR = 4


def _terminate(signum, frame):
    # SIGTERM becomes an exception, so `finally` blocks remove temporary outputs on the way out.
    raise KeyboardInterrupt


class WorkbenchGroup(click.Group):
    def list_commands(self, ctx):  # keep the registration order in --help, not alphabetical
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _terminate)
        debug = bool(ctx.params.get("debug")) or os.environ.get("WORKBENCH_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except WorkbenchError as exc:
            if debug:
                raise
            _fail(exc.message, exc.hint, exc.exit_code)
        except BrokenPipeError:  # output piped into `head` and friends
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except KeyboardInterrupt:
            if debug:
                raise
            _fail("Interrupted.", None, 130)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug: say so briefly, keep the traceback for --debug
            if debug:
                raise
            _fail(f"Internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  "This is a bug in workbench. Run again with --debug for the traceback and report it.", INTERNAL_ERROR)


def _fail(message: str, hint: str | None, code: int):
    click.echo(f"Error: {message}", err=True)
    if hint:
        click.echo(hint, err=True)
    sys.exit(code)


@click.group(cls=WorkbenchGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="workbench")
@click.option("--debug", is_flag=True, help="Show Python tracebacks on errors.")
def main(debug: bool) -> None:
    """Prune, quantize, export and emulate PyTorch and Keras models for edge devices.

    Develop in PyTorch or Keras, deploy to TFLite, TFLite Micro and ONNX Runtime, and know
    before you flash whether it fits, how fast it runs and what accuracy it costs.
    """


def _register() -> None:
    from workbench.cli import commands

    for cmd in commands.ALL:
        main.add_command(cmd)


_register()
