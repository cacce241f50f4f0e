"""Where the TensorFlow Lite Micro source tree is, whether it is one, and which version it is.

Order of precedence: an explicit directory (``--tflm-dir``), the environment variable
``WORKBENCH_TFLM_DIR``, then the user cache clone made by :func:`setup`
(``$XDG_CACHE_HOME`` or ``~/.cache``, then ``workbench/tflite-micro``).

A tree is accepted when TFLM's Makefile, ``micro_interpreter.h`` and the third-party
downloads a Cortex-M build needs (flatbuffers, gemmlowp, ruy, CMSIS, CMSIS-NN) are in
place. The tree is only ever read: the library is built from a private copy of it (see
:func:`pristine_copy` and :mod:`workbench.emulate.firmware.library`).

The tree's version (``content_key``, part of every library cache key) must not change when
a build runs in it: TFLM's Makefile writes a C array (``<name>_model_data.cc/.h`` and the
like, by ``tools/generate_cc_arrays.py``) beside every model, image, sound and test-data
file of its examples and integration tests while it parses (834 files at the pinned
commit). A git checkout is named by its commit and its changes to tracked files (those
arrays are untracked); a tree without ``.git`` by a hash of its sources that leaves those
generated arrays out (:func:`is_generated`), so the key before and after any build is the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from workbench.core.errors import ConfigError, RuntimeFailure

ENV_VAR = "WORKBENCH_TFLM_DIR"
TFLM_REPO = "https://github.com/tensorflow/tflite-micro.git"
# The TFLM commit the harness, the tests and the CPI fit were made with.
PINNED_COMMIT = "90b983c2b3f1480642e040bbd2ddb37b998f3424"

MAKEFILE = "tensorflow/lite/micro/tools/make/Makefile"
DOWNLOADS = "tensorflow/lite/micro/tools/make/downloads"
# Relative path -> what it is, for the error message when it is missing.
REQUIRED = {
    MAKEFILE: "TFLM's Makefile",
    "tensorflow/lite/micro/micro_interpreter.h": "the TFLM interpreter header",
    "tensorflow/lite/micro/micro_profiler_interface.h": "the TFLM profiler interface",
    f"{DOWNLOADS}/flatbuffers/include/flatbuffers/flatbuffers.h": "the flatbuffers download",
    f"{DOWNLOADS}/gemmlowp/fixedpoint/fixedpoint.h": "the gemmlowp download",
    f"{DOWNLOADS}/ruy/ruy/profiler/instrumentation.h": "the ruy download",
    f"{DOWNLOADS}/cmsis/CMSIS/Core/Include/cmsis_compiler.h": "the CMSIS download",
    f"{DOWNLOADS}/cmsis_nn/Include/arm_nnfunctions.h": "the CMSIS-NN download",
}
# What the content hash covers when the tree has no .git (the tree's sources and downloads).
HASHED_DIRS = ("tensorflow/lite", "signal", "third_party", DOWNLOADS)
HASHED_SUFFIXES = (".cc", ".c", ".h", ".hpp", ".S", ".s", ".inc", ".py", ".sh", ".mk", ".patch", ".ld", "Makefile")
# Folders no build input lives in (VCS data, build output, Python's byte-code caches).
SKIPPED_DIRS = (".git", "gen", "__pycache__")
# What TFLM's generate_cc_arrays.py appends to a data file's name for the C array it writes beside it.
GENERATED_ARRAYS = {"_model_data": (".tflite",), "_image_data": (".bmp",), "_audio_data": (".wav",),
                    "_test_data": (".csv", ".npy")}


@dataclass(frozen=True)
class TflmTree:
    """A validated TFLM source tree."""

    root: Path
    source: str  # how it was found: "argument", "$WORKBENCH_TFLM_DIR", "user cache"
    commit: str | None  # git commit, when the tree is a git checkout
    content_key: str  # "git:<commit>[+dirty:<hash>]" or "content:<sha256 of the key files>"

    def to_dict(self) -> dict:
        return {"root": str(self.root), "source": self.source, "commit": self.commit, "content_key": self.content_key}


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/workbench`` or ``~/.cache/workbench``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workbench"


def default_clone_dir() -> Path:
    return cache_root() / "tflite-micro"


def missing_parts(root: Path) -> list[str]:
    """The required files of a TFLM tree that ``root`` lacks, as 'what (relative path)'."""
    return [f"{what} ({rel})" for rel, what in REQUIRED.items() if not (root / rel).is_file()]


def find_tree(tflm_dir: str | os.PathLike | None = None) -> TflmTree:
    """The TFLM tree to build with; ConfigError (exit 2) when none is found or it is not one."""
    if tflm_dir is not None:
        root, source = Path(tflm_dir), "argument"
    elif os.environ.get(ENV_VAR):
        root, source = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        root, source = default_clone_dir(), "user cache"
        if not root.exists():
            raise ConfigError(
                f"No TensorFlow Lite Micro source tree: no --tflm-dir given, ${ENV_VAR} is not set and the user "
                f"cache clone '{root}' does not exist.",
                hint="Run `workbench firmware setup` (clones tflite-micro at the pinned commit into the cache), or "
                     f"point --tflm-dir / ${ENV_VAR} at a tflite-micro checkout with its downloads in place.")
    return validate_tree(root, source)


def validate_tree(root: str | os.PathLike, source: str = "argument") -> TflmTree:
    root = Path(root).expanduser()
    where = f"'{root}' (from {source})"
    if not root.is_dir():
        raise ConfigError(f"TensorFlow Lite Micro tree {where} is not a folder.",
                          hint=f"Give the root of a tflite-micro checkout (it holds {MAKEFILE}).")
    missing = missing_parts(root)
    if missing:
        only_downloads = all("download" in m for m in missing)
        hint = ("Its third-party downloads are missing: run `workbench firmware setup` (or TFLM's "
                "`make -f tensorflow/lite/micro/tools/make/Makefile third_party_downloads` in a writable copy)."
                if only_downloads else
                f"Give the root of a tflite-micro checkout (the folder that holds {MAKEFILE}), with its downloads "
                "in place.")
        raise ConfigError(f"{where} is not a usable TensorFlow Lite Micro tree: missing {'; '.join(missing)}.",
                          hint=hint)
    root = root.resolve()
    commit, key = _tree_version(str(root))
    return TflmTree(root=root, source=source, commit=commit, content_key=key)


@lru_cache(maxsize=8)
def _tree_version(root: str) -> tuple[str | None, str]:
    """(commit or None, content key). A git checkout is named by its commit (plus a hash of its
    uncommitted changes); a tree without .git by a sha256 over its source files and downloads."""
    r = Path(root)
    if (r / ".git").exists() and shutil.which("git"):
        try:
            commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                    timeout=30, check=True).stdout.strip()
            diff = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                  capture_output=True, text=True, timeout=60, check=True).stdout
        except (subprocess.SubprocessError, OSError):
            commit = ""
        if commit:
            if diff.strip():
                return commit, f"git:{commit}+dirty:{hashlib.sha256(diff.encode()).hexdigest()[:16]}"
            return commit, f"git:{commit}"
    return None, f"content:{content_hash(r)}"


def is_generated(path: Path) -> bool:
    """True for a C array TFLM's Makefile writes beside a data file while it parses
    (``person_detect_model_data.cc`` beside ``person_detect.tflite``): build output, not a source."""
    if path.suffix not in (".cc", ".h"):
        return False
    stem = path.stem
    for tail, data_suffixes in GENERATED_ARRAYS.items():
        if stem.endswith(tail) and len(stem) > len(tail):
            base = path.with_name(stem[: -len(tail)])
            return any(base.with_name(base.name + suffix).is_file() for suffix in data_suffixes)
    return False


def content_hash(root: Path) -> str:
    """sha256 over (relative path, bytes) of every source file under HASHED_DIRS, in sorted order,
    leaving out what a build writes into the tree (:func:`is_generated`, SKIPPED_DIRS).

    About 45 MB for TFLM with its downloads: a fraction of a second; memoized per process.
    """
    h = hashlib.sha256()
    files: list[Path] = []
    for d in HASHED_DIRS:
        base = root / d
        if base.is_dir():
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(x for x in dirnames if x not in SKIPPED_DIRS)
                files += [Path(dirpath) / f for f in filenames
                          if f.endswith(HASHED_SUFFIXES) and not is_generated(Path(dirpath) / f)]
    for p in sorted(set(files)):
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"<unreadable>")
        h.update(b"\0")
    return h.hexdigest()[:32]


def pristine_copy(root: Path, dest: Path) -> Path:
    """A writable copy of the tree at ``dest`` without what builds wrote into it (SKIPPED_DIRS,
    generated arrays): the library is built there, so no build ever writes into the user's tree
    (which may be read-only) or changes its key. About 45 MB, a fraction of a second."""
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [x for x in dirnames if x not in SKIPPED_DIRS]
        rel = Path(dirpath).relative_to(root)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            src = Path(dirpath) / name
            if is_generated(src):
                continue
            out = dest / rel / name
            if src.is_symlink():
                out.symlink_to(os.readlink(src))
                continue
            shutil.copyfile(src, out)
            os.chmod(out, (src.stat().st_mode & 0o777) | 0o200)  # keep the scripts' execute bits, make it writable
    return dest


# --------------------------------------------------------------------------- setup (clone into the cache)


@dataclass(frozen=True)
class SetupResult:
    """What :func:`setup` did, for the CLI to print."""

    dest: Path
    commit: str
    actions: tuple[str, ...]  # one line per step: "cloned ... from ...", "downloaded ...", "already present ..."
    tree: TflmTree

    def to_dict(self) -> dict:
        return {"dest": str(self.dest), "commit": self.commit, "actions": list(self.actions), "tree": self.tree.to_dict()}


def setup(dest: str | os.PathLike | None = None, *, commit: str = PINNED_COMMIT, timeout: float = 1800.0) -> SetupResult:
    """Clone tflite-micro at ``commit`` into ``dest`` (default: the user cache) and fetch its downloads.

    No prompts. An existing valid tree at ``dest`` is left as it is. The clone is made in a
    temporary folder beside ``dest`` and renamed into place, so an interrupted setup leaves
    nothing half-made. The third-party downloads are fetched by TFLM's own Makefile
    (``third_party_downloads``), which prints each download and its URL; those lines are
    returned in ``actions``.
    """
    dest = Path(dest) if dest is not None else default_clone_dir()
    actions: list[str] = []
    if dest.exists():
        if not missing_parts(dest):
            tree = validate_tree(dest, "setup")
            return SetupResult(dest=dest, commit=tree.commit or commit, tree=tree,
                               actions=(f"already present: TFLM tree at {dest} ({tree.content_key})",))
        if any(dest.iterdir()) and not (dest / MAKEFILE).is_file():
            raise ConfigError(f"'{dest}' exists and is not a TensorFlow Lite Micro tree; refusing to write into it.",
                              hint="Remove it or pass another destination.")
    git = shutil.which("git")
    make = shutil.which("make")
    if git is None or make is None:
        from workbench.emulate.firmware.toolchain import ToolMissingError

        raise ToolMissingError("git" if git is None else "make", "apt-get install git make")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (dest / MAKEFILE).is_file():
        tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _run([git, "init", "-q", str(tmp)], timeout, "git init")
            _run([git, "-C", str(tmp), "remote", "add", "origin", TFLM_REPO], timeout, "git remote add")
            _run([git, "-C", str(tmp), "fetch", "-q", "--depth", "1", "origin", commit], timeout,
                 f"git fetch {TFLM_REPO} {commit}")
            _run([git, "-C", str(tmp), "checkout", "-q", "FETCH_HEAD"], timeout, "git checkout")
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        actions.append(f"cloned {TFLM_REPO} at {commit} into {dest}")
    out = _run([make, "-f", MAKEFILE, "third_party_downloads", "TARGET=cortex_m_generic", "TARGET_ARCH=cortex-m4+fp",
                "OPTIMIZED_KERNEL_DIR=cmsis_nn", "TOOLCHAIN=gcc", "TARGET_TOOLCHAIN_ROOT=/usr/bin/"], timeout,
               "TFLM's third_party_downloads", cwd=dest)
    actions += [line.strip() for line in out.splitlines() if line.strip()]
    tree = validate_tree(dest, "setup")
    return SetupResult(dest=dest, commit=tree.commit or commit, actions=tuple(actions), tree=tree)


def link(source: str | os.PathLike, dest: str | os.PathLike | None = None) -> SetupResult:
    """Use an existing TFLM tree (e.g. an offline copy with its downloads) as the user cache's:
    validated, then linked (a symlink) where :func:`find_tree` looks by default."""
    tree = validate_tree(source, "setup --link")
    dest = Path(dest) if dest is not None else default_clone_dir()
    if dest.is_symlink() and dest.resolve() == tree.root.resolve():
        return SetupResult(dest=dest, commit=tree.commit or "", tree=tree,
                           actions=(f"already linked: {dest} -> {tree.root} ({tree.content_key})",))
    if dest.is_symlink() and missing_parts(dest):  # a link of ours to a tree that moved or went: replace it
        dest.unlink()
    if dest.exists() or dest.is_symlink():
        if not missing_parts(dest):
            existing = validate_tree(dest, "setup")
            return SetupResult(dest=dest, commit=existing.commit or "", tree=existing,
                               actions=(f"already present: TFLM tree at {dest} ({existing.content_key}); not replaced",))
        raise ConfigError(f"'{dest}' exists and is not a TensorFlow Lite Micro tree; refusing to replace it.",
                          hint="Remove it and run the command again.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(tree.root.resolve(), target_is_directory=True)
    return SetupResult(dest=dest, commit=tree.commit or "", tree=tree,
                       actions=(f"linked {dest} -> {tree.root.resolve()} ({tree.content_key}); nothing downloaded",))


def _run(cmd: list[str], timeout: float, what: str, cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"{what} did not finish within {timeout:.0f} s.",
                             hint="Check the network connection and run `workbench firmware setup` again.") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip()[-800:]
        raise RuntimeFailure(f"{what} failed (exit {r.returncode}): {tail}",
                             hint="Check the network connection (github.com) and run `workbench firmware setup` "
                                  "again; nothing half-made was left behind.")
    return r.stdout + r.stderr
