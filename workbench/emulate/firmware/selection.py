"""Which of TFLM's library sources one model needs, derived from the tree (no hand-kept op list).

Starting from the plan (:mod:`.plan`: every library source after TFLM's kernel specialisation):

* the framework core (the plan's ``core`` and ``third_party`` groups) always;
* per op, the kernel file(s) defining the ``Register_*`` function(s) the op's
  ``MicroMutableOpResolver::Add*`` method names in ``micro_mutable_op_resolver.h``
  (``AddConv2D`` -> ``Register_CONV_2D()`` -> ``kernels/cmsis_nn/conv.cc`` with CMSIS-NN);
* the kernel helpers those files need: a kernel-group file that registers no op is taken when a
  selected file includes (directly or through headers) a header ``x.h`` beside it, for the files
  ``x.cc`` and ``x_*.cc`` (``conv.h`` -> ``conv_common.cc``, ``decode_state.h`` -> ``decode_state_lut.cc``);
* the CMSIS-NN sources defining the ``arm_*`` functions those files call, and what those call.

What this misses shows up as an undefined symbol at the link: :func:`definers` names the sources
mentioning it, and the firmware build falls back to the whole source list when that is not enough.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from workbench.emulate.firmware.plan import TREE_TOKEN, all_sources

RESOLVER_HEADER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
REGISTER_DEF = re.compile(r"\bTFLMRegistration\s*\*?\s*(?:[\w:]+::)?Register_(\w+)\s*\(\s*\)\s*\{")
REGISTER_USE = re.compile(r"\bRegister_(\w+)\s*\(")
RESOLVER_METHOD = re.compile(r"TfLiteStatus\s+(Add[A-Za-z0-9_]+)\s*\(")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
ARM_CALL = re.compile(r"\b(arm_\w+)\s*\(")
# A C function defined at the start of a line: return type token(s), then the name and "(".
ARM_DEF = re.compile(r"^(?:[A-Za-z_]\w*[\s*]+)+(arm_\w+)\s*\(", re.M)
UNDEFINED = re.compile(r"undefined reference to [`'\"]([^'`\"]+)['`\"]")
KERNEL_GROUPS = ("kernel",)
CMSIS_GROUPS = ("third_party_kernel",)
CORE_GROUPS = ("core", "third_party")


@dataclass(frozen=True)
class Selection:
    sources: tuple[tuple[str, str], ...]  # (group, tokenised source) in TFLM's archive order
    kernels: tuple[str, ...]  # the op kernels' file stems (for progress lines)
    unmatched: tuple[str, ...]  # resolver methods no kernel file registers (left to the link fallback)


@lru_cache(maxsize=4096)
def _text(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _path(source: str, root: Path) -> str:
    return source.replace(TREE_TOKEN, str(root))


def resolver_registrations(root: Path) -> dict[str, frozenset[str]]:
    """``Add*`` method -> the ``Register_*`` names (without the prefix) its declaration calls."""
    text = _text(str(root / RESOLVER_HEADER))
    starts = [(m.start(), m.group(1)) for m in RESOLVER_METHOD.finditer(text)]
    out: dict[str, frozenset[str]] = {}
    for i, (pos, method) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        out[method] = out.get(method, frozenset()) | frozenset(REGISTER_USE.findall(text[pos:end]))
    return out


def registered_ops(path: str) -> frozenset[str]:
    """The ``Register_*`` functions (names without the prefix) a source file defines."""
    return frozenset(REGISTER_DEF.findall(_text(path)))


def _includes(path: str, root: Path) -> list[str]:
    here = Path(path).parent
    out = []
    for inc in INCLUDE.findall(_text(path)):
        for cand in (root / inc, here / inc):
            if cand.is_file():
                out.append(str(cand))
                break
    return out


def _header_closure(path: str, root: Path, seen: set[str]) -> list[str]:
    """Headers ``path`` includes, directly or through other headers (each once per ``seen``)."""
    found, todo = [], [path]
    while todo:
        for h in _includes(todo.pop(), root):
            if h not in seen:
                seen.add(h)
                found.append(h)
                todo.append(h)
    return found


def _arm_definitions(cmsis: list[tuple[str, str]], root: Path) -> dict[str, set[tuple[str, str]]]:
    defs: dict[str, set[tuple[str, str]]] = {}
    for item in cmsis:
        for name in ARM_DEF.findall(_text(_path(item[1], root))):
            defs.setdefault(name, set()).add(item)
    return defs


def select_sources(plan: dict, root: Path, methods) -> Selection:
    """The sources the ops registered by resolver ``methods`` need (see the module notes)."""
    root = Path(root)
    everything = all_sources(plan)
    kernel_files = [s for s in everything if s[0] in KERNEL_GROUPS]
    registers = {s: registered_ops(_path(s[1], root)) for s in kernel_files}
    helpers = [s for s in kernel_files if not registers[s]]
    cmsis = [s for s in everything if s[0] in CMSIS_GROUPS]
    regs = resolver_registrations(root)

    chosen: set[tuple[str, str]] = {s for s in everything if s[0] in CORE_GROUPS}
    kernels, unmatched = [], []
    for method in methods:
        wanted = regs.get(method, frozenset())
        files = [s for s in kernel_files if registers[s] & wanted]
        if not files:
            unmatched.append(method)
        for s in files:
            chosen.add(s)
            stem = Path(s[1]).stem
            if stem not in kernels:
                kernels.append(stem)

    # kernel helpers, through the headers every chosen file includes (to a fixed point)
    helper_keys = [(s, _path(s[1], root).rsplit(".", 1)[0]) for s in helpers]
    seen_headers: set[str] = set()
    todo = list(chosen)
    while todo:
        s = todo.pop()
        for h in _header_closure(_path(s[1], root), root, seen_headers):
            base = h.rsplit(".", 1)[0]
            for helper, key in helper_keys:
                if helper not in chosen and (key == base or key.startswith(base + "_")):
                    chosen.add(helper)
                    todo.append(helper)

    # CMSIS-NN functions the chosen files call, and what those call
    defs = _arm_definitions(cmsis, root)
    todo = list(chosen)
    while todo:
        s = todo.pop()
        for name in set(ARM_CALL.findall(_text(_path(s[1], root)))):
            for d in defs.get(name, ()):
                if d not in chosen:
                    chosen.add(d)
                    todo.append(d)
    ordered = tuple(s for s in everything if s in chosen)
    return Selection(sources=ordered, kernels=tuple(kernels), unmatched=tuple(unmatched))


def undefined_symbols(link_output: str) -> list[str]:
    """The names a failed link could not resolve (demangled C++ names as GNU ld prints them)."""
    out = []
    for sym in UNDEFINED.findall(link_output):
        if sym not in out:
            out.append(sym)
    return out


def symbol_name(symbol: str) -> str:
    """The bare identifier of a linker symbol: ``tflite::ConvPrepare(TfLiteContext*, ...)`` -> ``ConvPrepare``,
    ``vtable for tflite::MicroProfiler`` -> ``MicroProfiler``."""
    s = symbol.split("(", 1)[0].strip()
    s = re.sub(r"<.*>", "", s)
    s = s.rsplit(" ", 1)[-1]
    return s.rsplit("::", 1)[-1]


def definers(symbols, plan: dict, root: Path, have) -> list[tuple[str, str]]:
    """Sources outside ``have`` that mention the identifiers of ``symbols`` followed by "(" or "{"
    (the candidates for defining them), in TFLM's archive order."""
    names = {symbol_name(s) for s in symbols} - {""}
    if not names:
        return []
    pattern = re.compile(r"\b(" + "|".join(re.escape(n) for n in sorted(names)) + r")\b\s*[({]")
    have = set(have)
    return [s for s in all_sources(plan) if s not in have and pattern.search(_text(_path(s[1], Path(root))))]
