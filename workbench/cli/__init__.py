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
        from workbench.core.progress import to_stderr

        to_stderr()  # long steps (a PyTorch conversion, a library build) say how far they are
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
        except OSError as exc:
            said = os_error_message(exc)
            if said is None or debug:
                raise
            _fail(*said)
        except Exception as exc:  # a bug: say so briefly, keep the traceback for --debug
            if debug:
                raise
            _fail(f"Internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                  "This is a bug in workbench. Run again with --debug for the traceback and report it.", INTERNAL_ERROR)


def os_error_message(exc: OSError) -> tuple[str, str, int] | None:
    """What the machine refused (a full disk, a read-only or missing folder), said as such: exit 2, not a bug."""
    import errno

    where = f" '{exc.filename}'" if exc.filename else ""
    known = {
        errno.ENOSPC: ("No space left on the device while writing{where}.", "Free some space, or write -o elsewhere."),
        errno.EDQUOT: ("Disk quota exceeded while writing{where}.", "Free some space, or write -o elsewhere."),
        errno.EROFS: ("{where} is on a read-only file system.", "Choose another -o path."),
        errno.EACCES: ("Permission denied:{where}.", "Check the file's permissions, or choose another path."),
        errno.ENOTDIR: ("A part of the path{where} is a file, not a folder.", "Check the path."),
        errno.EISDIR: ("{where} is a folder; a file was expected.", "Check the path."),
    }
    if exc.errno not in known:
        return None
    message, hint = known[exc.errno]
    return message.format(where=where).strip(), hint, 2


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
