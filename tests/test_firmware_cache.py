"""The firmware caches and tool failures: the TFLM tree's key does not change when a build
writes into the tree, a cached library or image is checked against its digests before use
(a mismatch is rebuilt, never served), and a tool that fails (a build killed by its timeout, a
link error) is reported as a tool failure (exit 4, "fits": null), never as "does not fit".

The tests that need the firmware (arm-none-eabi-gcc, qemu-system-arm, a TFLM tree) skip
without it. Those that corrupt a cache work on a private copy of it (``XDG_CACHE_HOME`` in a
temporary folder), never on the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
TARGET = "stm32l4r5"


def _tree_dir() -> Path:
    env = os.environ.get("WORKBENCH_TFLM_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "third_party" / "tflite-micro"


@pytest.fixture(scope="module")
def tree_dir() -> Path:
    from workbench.core.errors import ConfigError
    from workbench.emulate.firmware import validate_tree

    d = _tree_dir()
    try:
        validate_tree(d)
    except ConfigError as exc:
        pytest.skip(f"no usable TFLM tree at {d}: {exc.message}")
    return d


@pytest.fixture(scope="module")
def firmware_ready(tree_dir):
    from workbench.emulate.firmware import firmware_support

    why = firmware_support(TARGET, tflm_dir=tree_dir)
    if why:
        pytest.skip(f"firmware emulation unavailable: {why}")
    return tree_dir


def run_cli(*args):
    from workbench.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- the tree's key (item: cache key)


def _write_data_files(root: Path) -> list[Path]:
    """A model, an image and a test-data file where TFLM keeps them, as in its own tree."""
    models = root / "tensorflow/lite/micro/models"
    testdata = root / "tensorflow/lite/micro/examples/person_detection/testdata"
    models.mkdir(parents=True)
    testdata.mkdir(parents=True)
    (models / "person_detect.tflite").write_bytes(b"TFL3" + bytes(range(200)))
    from PIL import Image

    Image.new("L", (8, 8), color=7).save(testdata / "no_person.bmp")
    (root / "tensorflow/lite/micro/kernels").mkdir(parents=True)
    (root / "tensorflow/lite/micro/kernels/add.cc").write_text("int add(int a, int b) { return a + b; }\n")
    (root / "tensorflow/lite/micro/kernels/add_int8_test_data.cc").write_text("// a real source with a _data name\n")
    return [models / "person_detect.tflite"]


def test_tree_key_ignores_the_arrays_tflm_writes_beside_its_data_files(tmp_path, tree_dir):
    """TFLM's own generate_cc_arrays.py writes <name>_model_data.cc/.h beside each data file of the
    tree it parses (TENSORFLOW_ROOT absolute): the content key must be the same after it ran."""
    from workbench.emulate.firmware.tree import content_hash, is_generated

    root = tmp_path / "tree"
    models = _write_data_files(root)
    before = content_hash(root)
    script = tree_dir / "tensorflow/lite/micro/tools/generate_cc_arrays.py"
    bmp = root / "tensorflow/lite/micro/examples/person_detection/testdata/no_person.bmp"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "gen" / "genfiles") + "/", str(models[0]), str(bmp)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    written = sorted(p.name for p in root.rglob("*_data.*"))
    assert "person_detect_model_data.cc" in written and "no_person_image_data.h" in written  # in the tree itself
    assert all(is_generated(p) for p in root.rglob("*_model_data.*"))
    assert not is_generated(root / "tensorflow/lite/micro/kernels/add_int8_test_data.cc")  # no data file beside it
    assert content_hash(root) == before
    (root / "tensorflow/lite/micro/kernels/add.cc").write_text("int add(int a, int b) { return a - b; }\n")
    assert content_hash(root) != before  # a real source change still changes the key


def test_tree_and_library_keys_are_the_same_after_tflm_makefile_ran_in_the_tree(tmp_path, tree_dir):
    """The real thing: a writable copy of the TFLM tree, its Makefile parsed for the Cortex-M4 library
    (which writes about 834 generated sources into the tree), the key computed before and after."""
    from workbench.emulate.firmware import find_toolchain, machine_for_core
    from workbench.emulate.firmware.library import library_key, make_args
    from workbench.emulate.firmware.toolchain import ToolMissingError
    from workbench.emulate.firmware.tree import MAKEFILE, TflmTree, content_hash, pristine_copy

    make = shutil.which("make")
    try:
        tc = find_toolchain()
    except ToolMissingError as exc:
        pytest.skip(exc.message)
    if make is None:
        pytest.skip("needs make")
    root = pristine_copy(tree_dir, tmp_path / "tree")
    files_before = {p for p in root.rglob("*") if p.is_file()}
    key_before = content_hash(root)
    machine = machine_for_core("cortex-m4")

    def lib_key(content: str) -> str:
        return library_key(TflmTree(root=root, source="test", commit=None, content_key=f"content:{content}"),
                           machine, "cmsis-nn", "release_with_logs", tc)

    lib_before = lib_key(key_before)
    args = make_args(root, machine, "cmsis-nn", "release_with_logs", tc, tmp_path / "gen")
    r = subprocess.run([make, "-n", "-f", str(root / MAKEFILE), *args, "microlite"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stderr[-2000:]
    written = {p for p in root.rglob("*") if p.is_file()} - files_before
    assert len(written) > 100, "TFLM's Makefile no longer writes into the tree it parses; this test lost its point"
    key_after = content_hash(root)
    assert key_after == key_before and lib_key(key_after) == lib_before
    # the tree the library is built from is a pristine copy: none of those files are carried into it
    again = pristine_copy(root, tmp_path / "again")
    assert not any((again / p.relative_to(root)).exists() for p in written)
    assert os.access(again / "tensorflow/lite/micro/tools/make/ext_libs/cmsis_download.sh", os.X_OK)


# --------------------------------------------------------------------------- digests (item: integrity)


def _made(tmp: Path) -> dict:
    (tmp / "payload.bin").write_bytes(bytes(range(256)) * 64)
    (tmp / "meta.json").write_text(json.dumps({"flash": 123456}))
    from workbench.emulate.firmware.cache import write_digests

    write_digests(tmp, ("payload.bin", "meta.json"))
    return {"built": True}


def _loader(folder: Path):
    from workbench.emulate.firmware.cache import verify_digests

    def load():
        if not folder.exists():
            return None
        verify_digests(folder, ("payload.bin", "meta.json"))
        return json.loads((folder / "meta.json").read_text())

    return load


@pytest.mark.faults
@pytest.mark.parametrize("damage", ["flip_payload", "edit_meta", "drop_digests", "garble_digests", "delete_payload"])
def test_a_damaged_cache_folder_is_rebuilt_never_served(tmp_path, damage):
    from workbench.emulate.firmware.cache import build_once

    base, key = tmp_path / "cache", "k1"
    said: list[str] = []
    found, made, notes = build_once(base, key, _loader(base / key), _made, say=said.append)
    assert found is None and made == {"built": True} and not notes
    found, made, notes = build_once(base, key, _loader(base / key), _made, say=said.append)
    assert found == {"flash": 123456} and made is None and not notes and not said
    folder = base / key
    if damage == "flip_payload":
        raw = bytearray((folder / "payload.bin").read_bytes())
        raw[1000] ^= 0x01  # one bit
        (folder / "payload.bin").write_bytes(bytes(raw))
    elif damage == "edit_meta":
        (folder / "meta.json").write_text(json.dumps({"flash": 1120}))
    elif damage == "drop_digests":
        (folder / "digests.json").unlink()
    elif damage == "garble_digests":
        (folder / "digests.json").write_text("{not json")
    else:
        (folder / "payload.bin").unlink()
    found, made, notes = build_once(base, key, _loader(folder), _made, say=said.append, what="test build")
    assert found is None and made == {"built": True}  # rebuilt, the damaged folder never served
    assert len(notes) == 1 and "integrity check" in notes[0] and "test build" in notes[0] and said == notes
    assert json.loads((folder / "meta.json").read_text()) == {"flash": 123456}
    assert _loader(folder)() == {"flash": 123456}


# --------------------------------------------------------------------------- the linker: size or tool failure


def test_a_region_overflow_is_a_size_and_an_undefined_symbol_is_a_tool_failure(tmp_path):
    from workbench.core.errors import ToolFailure
    from workbench.emulate.firmware import ImageOverflow, find_toolchain
    from workbench.emulate.firmware.build import _run_tool
    from workbench.emulate.firmware.toolchain import ToolMissingError

    try:
        tc = find_toolchain()
    except ToolMissingError as exc:
        pytest.skip(exc.message)
    (tmp_path / "a.c").write_text("const unsigned char big[4096] = {1};\nint use(int i) { return big[i]; }\n"
                                  "void _start(void) { use(3); }\n")
    (tmp_path / "b.c").write_text("int missing(int);\nvoid _start(void) { missing(3); }\n")
    (tmp_path / "small.ld").write_text("MEMORY { CODE (rx) : ORIGIN = 0, LENGTH = 256 }\n"
                                       "SECTIONS { .text : { *(.text*) *(.rodata*) } > CODE }\n")
    common = [str(tc.gcc), "-mcpu=cortex-m4", "-mthumb", "-nostdlib", "-nostartfiles"]
    with pytest.raises(ImageOverflow) as ei:
        _run_tool([*common, "-T", "small.ld", "a.c", "-o", "a.elf"], tmp_path, "Linking the firmware")
    assert "will not fit in region" in ei.value.message
    with pytest.raises(ToolFailure) as ei:
        _run_tool([*common, "b.c", "-o", "b.elf"], tmp_path, "Linking the firmware")
    assert ei.value.exit_code == 4 and "undefined reference" in ei.value.message


# --------------------------------------------------------------------------- with the firmware


@pytest.fixture()
def private_cache(firmware_ready, tmp_path, monkeypatch):
    """XDG_CACHE_HOME in tmp_path holding a copy of the Cortex-M4 library (built once in the user cache)."""
    from workbench.emulate.firmware import find_toolchain, find_tree, get_library, machine_for_core

    tree = find_tree(firmware_ready)
    lib = get_library(tree, machine_for_core("cortex-m4"), find_toolchain(), jobs=2)
    cache = tmp_path / "xdg"
    dest = cache / "workbench" / "firmware" / "lib" / lib.key
    shutil.copytree(lib.folder, dest)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return dest


def _emulate_json(model, *extra):
    r = run_cli("emulate", model, "--target", TARGET, "--json", *extra)
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else None
    return r, doc


def _cached_images(private_cache: Path) -> list[Path]:
    return sorted((private_cache.parents[1] / "fw").glob("[!.]*"))


@pytest.mark.faults
def test_flipped_bytes_in_a_cached_elf_are_rebuilt_not_served(private_cache, digits_tflite_int8):
    r, first = _emulate_json(digits_tflite_int8, "--eval", "digits", "--eval-samples", "120")
    assert r.exit_code == 0, r.output
    assert first["method"] == "firmware" and first["firmware"]["firmware_cached"] is False
    (folder,) = _cached_images(private_cache)
    elf = folder / "firmware.elf"
    raw = bytearray(elf.read_bytes())
    for off in range(len(raw) // 3, len(raw) // 3 + 64, 4):  # a few flipped bytes in the image
        raw[off] ^= 0xFF
    elf.write_bytes(bytes(raw))
    r, second = _emulate_json(digits_tflite_int8, "--eval", "digits", "--eval-samples", "120")
    assert r.exit_code == 0, r.output
    assert second["firmware"]["firmware_cached"] is False  # rebuilt, not served
    assert second["accuracy"]["accuracy"] == first["accuracy"]["accuracy"]
    assert second["flash_bytes"] == first["flash_bytes"] and second["latency_ms"] == first["latency_ms"]
    assert any("integrity check" in n and "firmware.elf" in n for n in second["notes"])
    assert "integrity check" in r.stderr  # said on stderr too, as it happened
    r, third = _emulate_json(digits_tflite_int8)
    assert third["firmware"]["firmware_cached"] is True and not any("integrity" in n for n in third["notes"])


@pytest.mark.faults
def test_an_edited_meta_json_is_rebuilt_not_served(private_cache, digits_tflite_int8):
    r, first = _emulate_json(digits_tflite_int8)
    assert r.exit_code == 0, r.output
    (folder,) = _cached_images(private_cache)
    meta = json.loads((folder / "meta.json").read_text())
    meta["size"]["text"], meta["size"]["data"] = 1000, 120  # "1,120 B of flash"
    (folder / "meta.json").write_text(json.dumps(meta))
    r, second = _emulate_json(digits_tflite_int8)
    assert r.exit_code == 0, r.output
    assert second["flash_bytes"] == first["flash_bytes"] != 1120
    assert second["firmware"]["firmware_cached"] is False
    assert any("integrity check" in n and "meta.json" in n for n in second["notes"])


@pytest.mark.faults
def test_a_flipped_bit_in_the_cached_library_is_rebuilt_not_served(private_cache, firmware_ready, monkeypatch):
    """One bit of the cached .a: get_library refuses it and rebuilds. The rebuild here restores the
    good archive (a real rebuild takes minutes); what is checked is that the damaged one is never served."""
    from workbench.emulate.firmware import find_toolchain, find_tree, get_library, machine_for_core
    from workbench.emulate.firmware import library as library_mod
    from workbench.emulate.firmware.cache import file_sha256

    good = private_cache.parent / "good.a"
    shutil.copy2(private_cache / library_mod.LIB_NAME, good)
    good_sha = file_sha256(good)
    raw = bytearray((private_cache / library_mod.LIB_NAME).read_bytes())
    raw[len(raw) // 2] ^= 0x04
    (private_cache / library_mod.LIB_NAME).write_bytes(bytes(raw))
    rebuilt: list[Path] = []
    folder_files = {n: (private_cache / n).read_bytes() for n in ("flags.json", "meta.json", "build.log")}

    def rebuild(tree, machine, toolchain, kernels, build_type, jobs, timeout, tmp, key, say):
        rebuilt.append(tmp)
        shutil.copy2(good, tmp / library_mod.LIB_NAME)
        for name, data in folder_files.items():
            (tmp / name).write_bytes(data)
        library_mod.write_digests(tmp, library_mod.SERVED)
        return {"flags": json.loads(folder_files["flags.json"]), "meta": json.loads(folder_files["meta.json"]),
                "sha256": good_sha}

    monkeypatch.setattr(library_mod, "_build", rebuild)
    said: list[str] = []
    lib = get_library(find_tree(firmware_ready), machine_for_core("cortex-m4"), find_toolchain(), say=said.append,
                      cache_dir=private_cache.parent)
    assert len(rebuilt) == 1 and lib.built_now
    assert lib.sha256 == good_sha == file_sha256(lib.path)
    assert lib.notes and "integrity check" in lib.notes[0] and library_mod.LIB_NAME in lib.notes[0] and said == list(lib.notes)
    again = get_library(find_tree(firmware_ready), machine_for_core("cortex-m4"), find_toolchain(), say=said.append,
                        cache_dir=private_cache.parent)
    assert not again.built_now and not again.notes and len(rebuilt) == 1


@pytest.mark.faults
def test_a_library_build_stopped_by_its_timeout_is_a_tool_failure_and_leaves_nothing(firmware_ready, tmp_path):
    from workbench.core.errors import ToolFailure
    from workbench.emulate.firmware import find_toolchain, find_tree, get_library, machine_for_core

    said: list[str] = []
    with pytest.raises(ToolFailure) as ei:
        get_library(find_tree(firmware_ready), machine_for_core("cortex-m4"), find_toolchain(), jobs=1, timeout=3,
                    cache_dir=tmp_path / "lib", say=said.append, route="full")
    assert ei.value.exit_code == 4 and "did not finish within 3 s" in ei.value.message
    assert said and said[0].startswith("Building the TFLite Micro library") and "objects" in said[0]
    assert list((tmp_path / "lib").iterdir()) == [] or all(p.name.endswith(".lock") for p in (tmp_path / "lib").iterdir())
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(tmp_path) not in ps  # make and its compilers were stopped with it


@pytest.mark.faults
def test_emulate_with_a_library_build_timeout_is_no_verdict_exit_4(firmware_ready, digits_tflite_int8, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("WORKBENCH_FIRMWARE_BUILD_TIMEOUT", "2")
    r, doc = _emulate_json(digits_tflite_int8)
    assert r.exit_code == 4, r.output
    assert doc["fits"] is None and "did not finish within 2 s" in doc["tool_failure"]
    assert doc["tool_failure_detail"]["kind"] == "tool_failure" and doc["method"] == "estimate"
    assert doc["flash_bytes"] > doc["model_bytes"] and doc["latency_ms"] > 0  # the known answers are kept
    assert doc["unsupported_ops"] == [] and not any("does not fit" in x.lower() for x in doc["reasons"])
    r = run_cli("emulate", digits_tflite_int8, "--target", TARGET)
    assert r.exit_code == 4 and "NO VERDICT" in r.stdout and "DOES NOT FIT" not in r.stdout


@pytest.mark.faults
def test_emulate_with_a_library_that_does_not_link_is_a_tool_failure(private_cache, digits_tflite_int8, tmp_path):
    """A library archive missing the interpreter (consistent digests, so it is served): the link fails,
    which says nothing about the model."""
    from workbench.emulate.firmware import find_toolchain
    from workbench.emulate.firmware import library as library_mod
    from workbench.emulate.firmware.cache import write_digests

    tc = find_toolchain()
    lib = private_cache / library_mod.LIB_NAME
    members = subprocess.run([str(tc.ar), "t", str(lib)], capture_output=True, text=True, check=True).stdout.split()
    victim = next(m for m in members if m == "micro_interpreter.o")
    subprocess.run([str(tc.ar), "d", str(lib), victim], check=True)
    write_digests(private_cache, library_mod.SERVED)
    r, doc = _emulate_json(digits_tflite_int8)
    assert r.exit_code == 4, r.output
    assert doc["fits"] is None and "Linking the firmware failed" in doc["tool_failure"]
    assert "undefined reference" in doc["tool_failure"]
    assert doc["flash_bytes"] is not None and doc["unsupported_ops"] == []
    # the export's fit check says the same: a tool failure (exit 4), not "does not fit" (exit 1)
    r = run_cli("export", digits_tflite_int8, "--format", "tflm", "--target", TARGET, "-o", tmp_path / "proj")
    assert r.exit_code == 4, r.output
    assert "could not be checked" in r.output and "does not fit" not in r.output.lower()
