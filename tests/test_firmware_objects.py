"""The per-object TFLM build: which sources a model's ops need (from the real tree and TFLM's own
Makefile), objects cached one by one (a damaged one is rebuilt, never served), a second model
compiling only what it adds, and the link falling back to more sources on an undefined symbol.

Needs arm-none-eabi-gcc and a TFLM tree (skips naming the missing piece). The plan (TFLM's
Makefile parsed once per core, about 15 s) is kept in the user's cache like `emulate` keeps it;
every object these tests compile goes to a temporary cache.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DIGITS_METHODS = ("AddConv2D", "AddReshape", "AddFullyConnected")  # the digits int8 model's ops


def _tree_dir() -> Path:
    env = os.environ.get("WORKBENCH_TFLM_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "third_party" / "tflite-micro"


@pytest.fixture(scope="module")
def m4_plan():
    """(tree, toolchain, a plan-route Library) for the Cortex-M4 with CMSIS-NN kernels."""
    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware import ToolMissingError, find_toolchain, machine_for_core, validate_tree
    from workbench.emulate.firmware.library import DEFAULT_BUILD_TYPE, Library, lib_cache_dir, library_key
    from workbench.emulate.firmware.plan import get_plan

    try:
        tc = find_toolchain()
    except ToolMissingError as exc:
        pytest.skip(f"the per-object build needs {exc.program}")
    try:
        tree = validate_tree(_tree_dir())
    except ConfigError as exc:
        pytest.skip(f"no usable TFLM tree: {exc.message}")
    machine = machine_for_core("cortex-m4")
    key = library_key(tree, machine, "cmsis-nn", DEFAULT_BUILD_TYPE, tc)
    folder, plan, flags, meta, _, _ = get_plan(tree, machine, tc, kernels="cmsis-nn", build_type=DEFAULT_BUILD_TYPE,
                                               library_key=key, base=lib_cache_dir().parent / "plan", timeout=600,
                                               say=lambda _line: None)
    lib = Library(path=folder / "plan.json", folder=folder, key=meta["key"], flags=flags, meta=meta, built_now=False,
                  seconds=0.0, plan=plan, jobs=2, timeout=1200)
    return tree, tc, machine, lib


def _names(sources) -> set[str]:
    return {s.split("${TFLM_ROOT}/", 1)[-1] for _, s in sources}


K = "tensorflow/lite/micro/kernels/"
NN = "tensorflow/lite/micro/tools/make/downloads/cmsis_nn/Source/"


def test_ops_select_their_specialised_kernels_helpers_and_cmsis_nn_sources(m4_plan):
    from workbench.emulate.firmware.plan import all_sources
    from workbench.emulate.firmware.selection import registered_ops, resolver_registrations, select_sources

    tree, _, _, lib = m4_plan
    sel = select_sources(lib.plan, tree.root, DIGITS_METHODS)
    names = _names(sel.sources)
    assert sel.kernels == ("conv", "reshape", "fully_connected") and sel.unmatched == ()
    # TFLM's specialisation, as its Makefile printed it: the CMSIS-NN conv, never the reference one
    assert K + "cmsis_nn/conv.cc" in names and K + "conv.cc" not in names
    assert {K + "conv_common.cc", K + "fully_connected_common.cc", K + "reshape_common.cc"} <= names  # helpers
    assert NN + "ConvolutionFunctions/arm_convolve_wrapper_s8.c" in names
    assert NN + "ConvolutionFunctions/arm_convolve_s8.c" in names  # called by the wrapper, not by conv.cc
    assert NN + "FullyConnectedFunctions/arm_fully_connected_s8.c" in names
    assert not any(n.endswith(("softmax.cc", "arm_softmax_s8.c", "pooling.cc", "arm_max_pool_s8.c")) for n in names)
    assert "tensorflow/lite/micro/micro_interpreter.cc" in names  # the framework core, always
    everything = all_sources(lib.plan)
    assert len(sel.sources) < len(everything) / 2
    assert list(sel.sources) == [s for s in everything if s in set(sel.sources)]  # TFLM's archive order

    # every op the tree's resolver can add (AddBuiltin and AddCustom take any registration) maps to a
    # kernel file the plan compiles
    regs = {m: r for m, r in resolver_registrations(tree.root).items() if r}
    assert len(regs) > 100 and "AddBuiltin" not in regs and regs["AddConv2D"] == {"CONV_2D"}
    kernel_files = [s for s in everything if s[0] == "kernel"]
    registered = set().union(*(registered_ops(s.replace("${TFLM_ROOT}", str(tree.root))) for _, s in kernel_files))
    missing = [m for m, r in regs.items() if not r & registered]
    assert missing == [], missing


def test_one_new_op_adds_only_its_own_sources(m4_plan):
    from workbench.emulate.firmware.selection import select_sources

    tree, _, _, lib = m4_plan
    base = set(select_sources(lib.plan, tree.root, DIGITS_METHODS).sources)
    more = set(select_sources(lib.plan, tree.root, (*DIGITS_METHODS, "AddSoftmax")).sources)
    added = _names(more - base)
    assert base < more and K + "cmsis_nn/softmax.cc" in added and NN + "SoftmaxFunctions/arm_softmax_s8.c" in added
    assert all("softmax" in n.lower() or n.startswith(NN) for n in added), added


def test_an_undefined_symbol_names_the_sources_that_define_it(m4_plan):
    from workbench.emulate.firmware.selection import definers, symbol_name, undefined_symbols

    tree, _, _, lib = m4_plan
    ld = ("/usr/bin/ld: conv.o: in function `tflite::Register_CONV_2D()':\n"
          "conv.cc:(.text+0x1a): undefined reference to `tflite::ConvPrepare(TfLiteContext*, TfLiteNode*)'\n"
          "conv.cc:(.text+0x2a): undefined reference to `arm_convolve_wrapper_s8'\n")
    missing = undefined_symbols(ld)
    assert missing == ["tflite::ConvPrepare(TfLiteContext*, TfLiteNode*)", "arm_convolve_wrapper_s8"]
    assert symbol_name("vtable for tflite::MicroProfiler") == "MicroProfiler"
    names = _names(definers(missing, lib.plan, tree.root, have=()))
    assert K + "conv_common.cc" in names and NN + "ConvolutionFunctions/arm_convolve_wrapper_s8.c" in names


def test_the_link_widens_the_selection_then_takes_everything_then_fails(m4_plan, tmp_path, monkeypatch):
    """The fallback itself, with the compiler left out: an undefined symbol adds its definers, an
    unresolvable one every source, and only a failure with every source reaches the user."""
    from workbench.core.errors import ToolFailure
    from workbench.emulate.firmware import objects as objects_mod
    from workbench.emulate.firmware.plan import all_sources

    tree, tc, machine, lib = m4_plan
    lib = type(lib)(**{**lib.__dict__, "folder": tmp_path / "plan" / "k"})
    compiled: list[list] = []

    def fake_compile(jobs, base, **kw):
        compiled.append([j.source for j in jobs])
        return [tmp_path / f"{i}.o" for i in range(len(jobs))], len(jobs), ()

    monkeypatch.setattr(objects_mod, "compile_objects", fake_compile)
    monkeypatch.setattr(objects_mod, "make_archive", lambda toolchain, objs, folder: tmp_path / "x.a")
    dropped = next(s for s in all_sources(lib.plan) if s[1].endswith("/conv_common.cc"))
    monkeypatch.setattr(objects_mod, "select_sources", lambda plan, root, methods: _without(plan, root, methods, dropped))

    def link(archive):
        if not any(s.endswith("/conv_common.cc") for s in compiled[-1]):
            raise ToolFailure("Linking the firmware failed (exit 1):\nconv.cc:(.text+0x1a): undefined reference to "
                              "`tflite::ConvPrepare(TfLiteContext*, TfLiteNode*)'")
        return "linked"

    result, info = objects_mod.link_model(lib, tree, tc, machine, DIGITS_METHODS, tmp_path / "w", link, say=lambda _: None)
    assert result == "linked" and info.attempts == 2 and not info.full
    assert "ConvPrepare" in info.notes[0] and len(compiled[1]) > len(compiled[0])

    compiled.clear()
    calls = []

    def never(archive):
        calls.append(len(compiled[-1]))
        raise ToolFailure("Linking the firmware failed (exit 1):\nundefined reference to `wb_no_such_symbol_anywhere'")

    with pytest.raises(ToolFailure, match="wb_no_such_symbol_anywhere"):
        objects_mod.link_model(lib, tree, tc, machine, DIGITS_METHODS, tmp_path / "w", never, say=lambda _: None)
    assert len(calls) == 2 and calls[-1] == len(all_sources(lib.plan))  # the whole list was tried before failing


def _without(plan, root, methods, dropped):
    from dataclasses import replace

    from workbench.emulate.firmware.selection import select_sources

    sel = select_sources(plan, root, methods)
    return replace(sel, sources=tuple(s for s in sel.sources if s != dropped))


def test_a_damaged_cached_object_is_rebuilt_not_served(m4_plan, tmp_path):
    from workbench.core.files import sha256_file
    from workbench.emulate.firmware.objects import compile_objects, object_jobs
    from workbench.emulate.firmware.plan import all_sources

    tree, tc, _, lib = m4_plan
    small = [s for s in all_sources(lib.plan) if s[1].endswith(("/arm_q7_to_q15_with_offset.c", "/arm_vector_sum_s8.c"))]
    assert len(small) == 2
    jobs = object_jobs(lib, tree, tc, small)
    base = tmp_path / "obj"
    paths, n, notes = compile_objects(jobs, base, workers=2, timeout=300, say=lambda _: None)
    assert n == 2 and not notes and all(p.is_file() for p in paths)
    good = [sha256_file(p) for p in paths]
    raw = bytearray(paths[0].read_bytes())
    raw[len(raw) // 2] ^= 0x10
    paths[0].write_bytes(bytes(raw))
    said: list[str] = []
    again, n, notes = compile_objects(jobs, base, workers=2, timeout=300, say=said.append)
    assert n == 1  # only the damaged one
    assert [sha256_file(p) for p in again] == good  # the same bytes as the first compile
    assert notes and "integrity check" in notes[0] and paths[0].name in notes[0] and notes[0] in said
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in base.iterdir())  # no half-made folder left
    _, n, notes = compile_objects(jobs, base, workers=2, timeout=300, say=said.append)
    assert n == 0 and not notes


def test_two_builders_of_one_object_compile_it_once(m4_plan, tmp_path):
    """The same object asked for twice at once (two workers, as two processes would): the per-object lock
    makes the second wait and take the first one's sealed folder instead of writing beside it."""
    from workbench.emulate.firmware.objects import compile_objects, object_jobs
    from workbench.emulate.firmware.plan import all_sources

    tree, tc, _, lib = m4_plan
    one = [s for s in all_sources(lib.plan) if s[1].endswith("/arm_vector_sum_s8.c")]
    (job,) = object_jobs(lib, tree, tc, one)
    paths, n, notes = compile_objects([job, job], tmp_path / "obj", workers=2, timeout=300, say=lambda _: None)
    assert n == 1 and not notes and paths[0] == paths[1] and paths[0].is_file()
    assert [p.name for p in (tmp_path / "obj").iterdir() if not p.name.startswith(".")] == [job.key]


@pytest.mark.slow
def test_a_second_model_compiles_only_the_kernel_it_adds(m4_plan, tmp_path, monkeypatch, digits_tflite_int8):
    """Real compiles into an empty object cache: the digits ops, then the same ops plus SOFTMAX; then
    the digits firmware from those cached objects, bit-exact with the firmware linked against TFLM's
    whole library. Measured on 2 cores: 217 s for the first 100 objects (440 s under a load of 13;
    the framework core is most of it), 5 s (30 s) for the 5 SOFTMAX adds; 4-8 min for the whole test."""
    from workbench.emulate.firmware import objects as objects_mod
    from workbench.emulate.firmware import run_firmware
    from workbench.emulate.firmware.selection import select_sources

    tree, tc, machine, lib = m4_plan
    x = np.random.default_rng(0).integers(-128, 128, size=(8, 8, 8, 1), dtype=np.int8)  # 8 samples of the 8x8 input
    monkeypatch.setenv("WORKBENCH_FIRMWARE_LIBRARY", "full")
    full = run_firmware(digits_tflite_int8, "stm32l4r5", inputs=x[:8], tflm_dir=tree.root, jobs=2)
    monkeypatch.delenv("WORKBENCH_FIRMWARE_LIBRARY")
    fw = tmp_path / "workbench" / "firmware"
    lib = type(lib)(**{**lib.__dict__, "folder": fw / "plan" / "k"})
    archives = []

    def link(archive):
        archives.append(archive.stat().st_size)
        return "ok"

    t0 = time.perf_counter()
    _, first = objects_mod.link_model(lib, tree, tc, machine, DIGITS_METHODS, tmp_path / "a", link)
    t1 = time.perf_counter()
    _, second = objects_mod.link_model(lib, tree, tc, machine, (*DIGITS_METHODS, "AddSoftmax"), tmp_path / "b", link)
    t2 = time.perf_counter()
    new = set(select_sources(lib.plan, tree.root, (*DIGITS_METHODS, "AddSoftmax")).sources) - set(
        select_sources(lib.plan, tree.root, DIGITS_METHODS).sources)
    print(f"\nfirst {first.objects} objects compiled {first.compiled} in {t1 - t0:.0f} s; "
          f"second {second.objects} objects compiled {second.compiled} in {t2 - t1:.0f} s")
    assert first.compiled == first.objects and first.attempts == 1
    assert second.compiled == len(new) > 0 and second.objects == first.objects + len(new)
    assert archives[1] > archives[0]
    stored = [p for p in (fw / "obj").iterdir() if not p.name.startswith(".")]
    assert len(stored) == second.objects
    assert all(json.loads((p / "digests.json").read_text())["files"] for p in stored)

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no full library there: the per-object route
    mine = run_firmware(digits_tflite_int8, "stm32l4r5", inputs=x[:8], tflm_dir=tree.root, jobs=2)
    (image,) = [p for p in (fw / "fw").iterdir() if not p.name.startswith(".")]
    objs = json.loads((image / "meta.json").read_text())["tflm_objects"]
    assert objs["compiled"] == 0 and objs["objects"] == first.objects and objs["attempts"] == 1
    assert mine.library_key != full.library_key
    assert (mine.outputs == full.outputs).all() and mine.instructions == full.instructions
    assert [o["instructions"] for o in mine.per_op] == [o["instructions"] for o in full.per_op]
