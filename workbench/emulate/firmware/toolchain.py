"""The cross toolchain (arm-none-eabi GCC with newlib) and the emulator (qemu-system-arm).

Each tool is looked up on PATH (``WORKBENCH_ARM_TOOLCHAIN`` may name a folder holding the
``arm-none-eabi-*`` programs, ``WORKBENCH_QEMU`` the qemu-system-arm program). A missing tool
raises :class:`ToolMissingError` (exit 3) with the exact Debian install line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from workbench.core.errors import MissingDependencyError, WorkbenchError

INSTALL_LINE = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm"
PREFIX = "arm-none-eabi-"
TOOLS = ("gcc", "g++", "size", "ar", "objcopy")


class ToolMissingError(MissingDependencyError):
    """A program the firmware emulation needs (cross compiler, newlib, QEMU) is not installed."""

    exit_code = 3

    def __init__(self, program: str, install: str = INSTALL_LINE, purpose: str = "Firmware emulation"):
        WorkbenchError.__init__(self, f"{purpose} needs the program '{program}', which was not found on PATH.",
                                hint=f"Install it with:\n{install}")
        self.module = program
        self.extra = ""
        self.program = program


@dataclass(frozen=True)
class Toolchain:
    gcc: Path
    gxx: Path
    size: Path
    ar: Path
    objcopy: Path
    qemu: Path
    gcc_version: str  # first line of `arm-none-eabi-gcc --version`
    qemu_version: str  # first line of `qemu-system-arm --version`

    @property
    def root(self) -> str:
        """The folder of the cross tools with a trailing slash (TFLM's TARGET_TOOLCHAIN_ROOT)."""
        return str(self.gcc.parent) + os.sep

    def to_dict(self) -> dict:
        return {"gcc": str(self.gcc), "gcc_version": self.gcc_version, "qemu": str(self.qemu),
                "qemu_version": self.qemu_version}


def _which(name: str, folder: str | None) -> Path | None:
    if folder:
        p = Path(folder) / name
        return p if p.is_file() and os.access(p, os.X_OK) else None
    found = shutil.which(name)
    return Path(found) if found else None


def _first_line(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown ({type(exc).__name__})"
    return (r.stdout or r.stderr).strip().splitlines()[0] if (r.stdout or r.stderr).strip() else "unknown"


def find_toolchain() -> Toolchain:
    """All tools, or ToolMissingError naming the first one missing (newlib included)."""
    return _find(os.environ.get("WORKBENCH_ARM_TOOLCHAIN") or None, os.environ.get("WORKBENCH_QEMU") or None)


@lru_cache(maxsize=4)
def _find(folder: str | None, qemu_env: str | None) -> Toolchain:
    paths = {}
    for tool in TOOLS:
        p = _which(PREFIX + tool, folder)
        if p is None:
            raise ToolMissingError(PREFIX + tool)
        paths[tool] = p
    qemu = Path(qemu_env) if qemu_env else _which("qemu-system-arm", None)
    if qemu is None or not qemu.is_file():
        raise ToolMissingError("qemu-system-arm")
    _check_newlib(paths["gcc"])
    return Toolchain(gcc=paths["gcc"], gxx=paths["g++"], size=paths["size"], ar=paths["ar"],
                     objcopy=paths["objcopy"], qemu=qemu, gcc_version=_first_line([str(paths["gcc"]), "--version"]),
                     qemu_version=_first_line([str(qemu), "--version"]))


def _check_newlib(gcc: Path) -> None:
    """newlib-nano and libstdc++ must be installed next to the compiler (separate Debian packages)."""
    for lib, program in (("libc_nano.a", "newlib (libnewlib-arm-none-eabi)"),
                         ("libstdc++_nano.a", "libstdc++ (libstdc++-arm-none-eabi-newlib)")):
        try:
            r = subprocess.run([str(gcc), "-mthumb", "-mcpu=cortex-m4", f"-print-file-name={lib}"],
                               check=False, capture_output=True, text=True, timeout=30)
            found = r.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if not found or not os.path.isabs(found) or not os.path.exists(found):
            raise ToolMissingError(program)


def toolchain_problem() -> str | None:
    """None when every tool is there, else the reason (for ``firmware_support``)."""
    try:
        find_toolchain()
    except ToolMissingError as exc:
        return f"{exc.message} ({INSTALL_LINE})"
    return None
