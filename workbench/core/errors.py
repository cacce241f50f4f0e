"""Typed errors. The CLI turns each into a message and an exit code in one place.

Every message should say which file, what was expected, what was found and what to do.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class. ``exit_code`` follows the CLI convention: 2 bad input, 1 a failed check, 3 missing dependency."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"

    def __reduce__(self):  # pickles with its hint and attributes (errors cross process boundaries)
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _rebuild(cls, args, state):
    err = Exception.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err


class InputFileError(WorkbenchError):
    """A file given by the user is missing, empty, unreadable or of the wrong kind."""


class ModelFormatError(InputFileError):
    """A model file whose format is unknown, corrupt or unsupported."""


class UnsafeModelError(WorkbenchError):
    """Loading the file would run code from it; refused without --trust-model."""


class DataError(WorkbenchError):
    """Calibration, training or evaluation data that does not fit the model or is malformed."""


class ConfigError(WorkbenchError):
    """An impossible option combination, a bad recipe or target file."""


class UnsupportedError(WorkbenchError):
    """A combination that cannot work (a scheme a format lacks, an op a runtime lacks)."""


class OutputExistsError(WorkbenchError):
    """The output path exists and --overwrite was not given."""


class MissingDependencyError(WorkbenchError):
    """An optional dependency is not installed."""

    exit_code = 3

    def __init__(self, module: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{module}', which is not installed.",
            hint=f"Install it with: pip install 'workbench[{extra}]'",
        )
        self.module = module
        self.extra = extra


class ProfilerDependencyError(WorkbenchError):
    """Python, numpy or a runtime is missing where the profile runs (here or on the board)."""

    exit_code = 3


class RemoteConnectionError(WorkbenchError):
    """ssh could not reach the board, authenticate, or verify its host key."""


class CheckFailed(WorkbenchError):
    """A check the user asked for failed (a budget, a model that does not fit)."""

    exit_code = 1


class RuntimeFailure(WorkbenchError):
    """A runtime (LiteRT, ONNX Runtime, TFLite Micro, a converter) failed on a valid-looking input."""


class ToolFailure(WorkbenchError):
    """A tool of ours failed, not the model: a build or emulator that timed out, a corrupt cache, a link error.

    Never a verdict on the model (never "does not fit"), never cached; the answers still known are kept
    beside it by the caller.
    """

    exit_code = 4


class ParityError(RuntimeFailure):
    """A converted model does not compute what its source computes (outputs differ beyond the tolerance)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, max_abs_error: float = 0.0, tolerance: float = 0.0,
                 argmax_agreement: float | None = None):
        super().__init__(message, hint=hint)
        self.max_abs_error, self.tolerance, self.argmax_agreement = max_abs_error, tolerance, argmax_agreement


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise MissingDependencyError naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        if exc.name and not module.startswith(exc.name.split(".")[0]):
            raise
        raise MissingDependencyError(module, extra, purpose) from exc
