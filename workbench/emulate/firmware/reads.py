"""Which data reads of a firmware run go to the board's flash: a QEMU TCG plugin's count per instruction.

The TB log the timing model reads (:mod:`~workbench.emulate.firmware.trace`) has no data addresses, so
it cannot tell a read of the model's weights (``.rodata``, in the code memory that stands for the
board's flash) from a read of the arena or the stack (SRAM). ``harness/wb_loads_plugin.c``, a TCG
plugin built here with the host C compiler against the plugin API of the installed QEMU, counts for
each instruction address how often it ran and how many of its reads fell in the machine's code
region. The same QEMU run writes the TB log and the plugin's counts, so both describe one execution.

:func:`flash_reads_per_tb` turns the counts into flash reads per execution of each translation
block, which :func:`~workbench.emulate.firmware.timing.window_cycles` adds up per op.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from workbench.core.errors import ToolFailure

SOURCE = Path(__file__).with_name("harness") / "wb_loads_plugin.c"
SO_NAME = "wb_loads.so"
COUNTS = "wb_reads.txt"


def host_compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


@functools.lru_cache(maxsize=None)
def _version(cc: str) -> str:
    """The compiler's first ``--version`` line (asked once per process; it keys the plugin's cache)."""
    return "".join(subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[:1])


def plugin_cache_dir() -> Path:
    from workbench.emulate.firmware.build import fw_cache_dir

    return fw_cache_dir().parent / "qemu-plugin"


def plugin(cc: str | None = None) -> Path | None:
    """The built plugin (cached by the digest of its source and the compiler), or None without a host C
    compiler. ToolFailure when the compiler fails on it."""
    from workbench.emulate.firmware.cache import build_once
    from workbench.core.digests import verify_digests, write_digests

    cc = cc or host_compiler()
    if cc is None:
        return None
    key = hashlib.sha256(SOURCE.read_bytes() + _version(cc).encode()).hexdigest()[:16]
    base = plugin_cache_dir()

    def load():
        folder = base / key
        if not folder.exists():
            return None
        verify_digests(folder, (SO_NAME,))
        return folder / SO_NAME

    def build(tmp: Path):
        cmd = [cc, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-o", str(tmp / SO_NAME), str(SOURCE)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise ToolFailure(f"The host C compiler could not build the QEMU plugin {SOURCE.name}: "
                              f"{res.stderr.strip()[-300:]}")
        write_digests(tmp, (SO_NAME,))
        return base / key / SO_NAME

    found, made, _notes = build_once(base, key, load, build, what="QEMU plugin")
    return found or made


def plugin_args(so: Path, code_base: int, code_size: int, out: str | os.PathLike) -> list[str]:
    """QEMU's command-line arguments that load the plugin for the code region [base, base + size)."""
    return ["-plugin", f"{so},lo=0x{code_base:x},hi=0x{code_base + code_size:x},out={out}"]


def read_counts(path: str | os.PathLike) -> dict[int, tuple[int, int, int]]:
    """{instruction address: (runs, reads in the code region, other reads)} from the plugin's file."""
    p = Path(path)
    if not p.exists():
        raise ToolFailure("The QEMU plugin wrote no counts (did the run end through exit?).")
    out = {}
    for line in p.read_text().splitlines():
        if line.startswith("#"):
            raise ToolFailure(f"The QEMU plugin's address table overflowed ({line[1:].strip()}).")
        a, runs, flash, other = line.split()
        out[int(a, 16)] = (int(runs), int(flash), int(other))
    return out


def flash_reads_per_tb(tbs: dict, counts: dict[int, tuple[int, int, int]]) -> dict:
    """{tb: flash reads per execution of the TB}: each instruction's reads in the code region divided by its
    runs over the whole program (a kernel's load reads the same kind of memory whichever op calls it)."""
    ratio = {a: flash / runs for a, (runs, flash, _other) in counts.items() if runs and flash}
    return {tb: sum(ratio.get(a, 0.0) for a in addrs) for tb, addrs in tbs.items()}
