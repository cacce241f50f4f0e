"""Flash and RAM of a model on a target, one measurer per runtime (a registry).

* ``tflm`` (MCUs): flash = model bytes + the runtime's code (profile); RAM = the exact
  tensor arena measured by :func:`workbench.runtimes.tflm.measure_arena_details` + the RAM
  the runtime and firmware need besides it (profile).
* ``litert`` (Linux boards): flash (storage) = the model's bytes; the runtime's installed code
  is reported beside it (``runtime_storage_bytes``), not added, since it is installed once;
  RAM = the peak resident memory of a fresh process that loads the model in LiteRT and runs
  one inference, measured on this machine (see :mod:`workbench.emulate.litert_child`). The
  budget is the board's RAM less what the OS keeps (profile).

Flash needs no runtime: when the runtime cannot load or run the model (an op without a
kernel, a kernel that aborts), :func:`flash_only` still gives the flash, with RAM unknown
and the reason recorded, so ``emulate`` always answers whether the model fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workbench.emulate.targets import Target
from workbench.core.errors import MissingDependencyError, ModelFormatError
from workbench.frontends.graph import Graph
from workbench.core.registry import Registry


@dataclass(frozen=True)
class Memory:
    flash_bytes: int
    flash_budget: int | None  # None: external storage, not a limit
    ram_bytes: int | None  # None: unknown (the runtime could not allocate or run the model; see ram_unknown)
    ram_budget: int
    arena_bytes: int | None  # MCU only
    breakdown: dict
    ram_unknown: str | None = None  # why RAM is unknown
    source: str = "measured"  # "firmware": the linked image run on QEMU; "measured": host runtime + profile constants

    @property
    def flash_margin(self) -> int | None:
        return None if self.flash_budget is None else self.flash_budget - self.flash_bytes

    @property
    def ram_margin(self) -> int | None:
        return None if self.ram_bytes is None else self.ram_budget - self.ram_bytes


MEASURERS: Registry[Callable[[Path, Graph, Target, dict], Memory]] = Registry("target runtime")


@MEASURERS.register("tflm")
def _tflm(model: Path, graph: Graph, target: Target, context: dict) -> Memory:
    from workbench.runtimes.tflm import measure_arena_details

    arena = measure_arena_details(model, timeout=context.get("timeout", 120.0), graph=graph)
    return tflm_with_arena(model, target, arena.arena_bytes, arena.to_dict())


def tflm_with_arena(model: Path, target: Target, arena_bytes: int, arena_info) -> Memory:
    """MCU flash and RAM from the model, the profile's runtime constants and a measured arena."""
    model_bytes = Path(model).stat().st_size
    rt = target.runtime
    info = arena_info if isinstance(arena_info, dict) else {"arena_bytes": arena_bytes, "method": arena_info}
    return Memory(
        flash_bytes=model_bytes + rt.code_bytes, flash_budget=target.flash_bytes,
        ram_bytes=arena_bytes + rt.ram_overhead_bytes, ram_budget=target.ram_bytes, arena_bytes=arena_bytes,
        breakdown={"model_bytes": model_bytes, "runtime_code_bytes": rt.code_bytes, "arena": info,
                   "runtime_ram_bytes": rt.ram_overhead_bytes})


def linux_board(model_bytes: int, target: Target, measured: dict, **breakdown) -> Memory:
    """A Linux board's storage (the model's bytes) and RAM (the peak resident memory a measuring child process
    reported, ``measured``) against the board's RAM less what its OS keeps; ``breakdown`` adds the runtime's
    own facts (measured_with, method, ...)."""
    rt = target.runtime
    return Memory(
        flash_bytes=model_bytes, flash_budget=target.flash_bytes,
        ram_bytes=int(measured["peak_rss"]), ram_budget=max(0, target.ram_bytes - rt.ram_overhead_bytes), arena_bytes=None,
        breakdown={"model_bytes": model_bytes, "runtime_storage_bytes": rt.code_bytes,
                   "process_baseline_rss_bytes": measured["baseline_rss"], "rss_with_model_bytes": measured["rss"],
                   "peak_rss_bytes": measured["peak_rss"], "os_reserved_bytes": rt.ram_overhead_bytes, **breakdown})


@MEASURERS.register("litert")
def _litert(model: Path, graph: Graph, target: Target, context: dict) -> Memory:
    m = context.get("litert") or measure_litert(model, context.get("threads") or target.threads, context.get("timeout", 120.0))
    if "error" in m:
        raise_load_error(model, m)
    return linux_board(model.stat().st_size, target, m,
                       measured_with=f"{m.get('module')} {m.get('version') or ''}".strip(),
                       method="peak resident memory of a fresh Python process that loads the model in LiteRT "
                              "and runs one inference, measured on this machine")


def measure_litert(model: Path, threads: int, timeout: float = 120.0) -> dict:
    """Run :mod:`workbench.emulate.litert_child` on ``model``: memory and XNNPACK delegation."""
    from workbench.emulate.child import run_child

    result = run_child("workbench.emulate.litert_child", "LiteRT", model, [str(threads)], timeout,
                       env={"TF_CPP_MIN_LOG_LEVEL": "3"}).result
    if result.get("error") == "import":
        raise MissingDependencyError("ai_edge_litert", "all", "Emulating a LiteRT board")
    return result


def raise_load_error(model: Path, result: dict) -> None:
    message = (result.get("message") or "").strip().splitlines()
    raise ModelFormatError(f"LiteRT could not load '{model}': {message[0] if message else 'unknown error'}",
                           hint="The model may use an op LiteRT lacks (see workbench inspect) or be corrupt.")


def flash_only(model: Path, target: Target, reason: str) -> Memory:
    """What is known without running the model: its flash (model + runtime code on an MCU, the
    model's storage on a Linux board); RAM unknown, for ``reason``."""
    model_bytes = Path(model).stat().st_size
    rt = target.runtime
    mcu = target.runtime.name == "tflm"
    breakdown = {"model_bytes": model_bytes, ("runtime_code_bytes" if mcu else "runtime_storage_bytes"): rt.code_bytes,
                 "arena": {"status": "unknown", "reason": reason} if mcu else None}
    budget = target.ram_bytes if mcu else max(0, target.ram_bytes - rt.ram_overhead_bytes)
    return Memory(flash_bytes=model_bytes + (rt.code_bytes if mcu else 0), flash_budget=target.flash_bytes,
                  ram_bytes=None, ram_budget=budget, arena_bytes=None, breakdown=breakdown, ram_unknown=reason)


def measure(model: Path, graph: Graph, target: Target, context: dict | None = None) -> Memory:
    return MEASURERS.get(target.runtime.name)(model, graph, target, context or {})
