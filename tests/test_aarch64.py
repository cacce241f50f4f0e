"""Opt-in (``-m aarch64``, ``make test-aarch64``): the light install profiles models on arm64.

Builds an arm64 Debian bookworm userland with debootstrap, runs it under qemu user-mode
emulation (binfmt_misc + qemu-user-static) in a chroot, installs only the light
dependencies there (numpy, ai-edge-litert, onnxruntime, click, pyyaml) and workbench from
this repository without extras, then runs ``workbench profile`` and checks its JSON.

Needs root and Debian's qemu-user-static, binfmt-support and debootstrap, plus network
access to a Debian mirror and PyPI. The userland and its venv are cached outside the
repository (WORKBENCH_AARCH64_CACHE, default ~/.cache/workbench/aarch64-bookworm): the first
run takes 10-20 minutes, later runs a few.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.aarch64

CACHE = Path(os.environ.get("WORKBENCH_AARCH64_CACHE") or Path.home() / ".cache" / "workbench" / "aarch64-bookworm")
MIRROR = os.environ.get("WORKBENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")
LIGHT_DEPS = ["numpy", "ai-edge-litert", "onnxruntime", "click", "pyyaml"]
VENV = "/opt/wb-venv"
REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "workbench", "targets", "calibration", "models"]
CHROOT_ENV = ["/usr/bin/env", "-i", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8",
              "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_NO_CACHE_DIR=1"]


def _run(argv, timeout, what):
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, argv))}\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _binfmt_ready() -> bool:
    entry = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not entry.exists():
        if not os.path.ismount("/proc/sys/fs/binfmt_misc"):
            subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"], capture_output=True)
        if shutil.which("update-binfmts"):
            subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True)
    return entry.exists() and entry.read_text().startswith("enabled")


def _ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts, so pip inside the chroot trusts the same."""
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name) and Path(os.environ[name]).is_file():
            return Path(os.environ[name])
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


@pytest.fixture(scope="module")
def arm64_root():
    if os.geteuid() != 0:
        pytest.skip("the aarch64 test needs root (debootstrap, chroot, mount)")
    missing = [pkg for tool, pkg in (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static"))
               if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"install Debian's {' and '.join(missing)} (and binfmt-support) for the aarch64 test")
    if not _binfmt_ready():
        pytest.fail("binfmt_misc has no enabled qemu-aarch64 entry and it could not be registered: "
                    "install binfmt-support and run `update-binfmts --enable qemu-aarch64` (needs a kernel with binfmt_misc)")
    CACHE.mkdir(parents=True, exist_ok=True)
    root = CACHE / "rootfs"
    if not (root / ".workbench-complete").exists():
        partial = CACHE / "rootfs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _run(["debootstrap", "--arch=arm64", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
              "bookworm", partial, MIRROR], 3600, "debootstrap of arm64 bookworm")
        if os.path.ismount(root / "proc"):  # left by an interrupted run: never delete through a mount
            _run(["umount", root / "proc"], 60, "unmounting a stale /proc")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        (root / ".workbench-complete").write_text("debootstrap done\n")
    # Only /proc: with the host's /sys mounted, the cpuinfo library inside onnxruntime and
    # XNNPACK reads an x86 CPU topology under qemu-aarch64 and crashes (SIGSEGV); without it
    # cpuinfo reports "failed to parse" and carries on.
    mounted = []
    if not os.path.ismount(root / "proc"):
        _run(["mount", "-t", "proc", "proc", root / "proc"], 60, "mounting /proc in the arm64 root")
        mounted.append(root / "proc")
    try:
        shutil.copy("/etc/resolv.conf", root / "etc" / "resolv.conf")
        env = list(CHROOT_ENV)
        bundle = _ca_bundle()
        if bundle:
            shutil.copy(bundle, root / "etc" / "ssl" / "certs" / "host-ca-bundle.crt")
            env.append("PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt")
        chroot = ["chroot", root, *env]
        if not (root / VENV.lstrip("/") / ".light-deps").exists():
            _run([*chroot, "/usr/bin/python3", "-m", "venv", VENV], 600, "creating the venv")
            _run([*chroot, f"{VENV}/bin/pip", "install", *LIGHT_DEPS], 3600, "pip install of the light dependencies")
            (root / VENV.lstrip("/") / ".light-deps").write_text(" ".join(LIGHT_DEPS) + "\n")
        src = root / "opt" / "wb-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for name in SOURCES:
            p = REPO / name
            if p.is_dir():
                shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
            elif p.exists():
                shutil.copy(p, src / name)
        _run([*chroot, f"{VENV}/bin/pip", "install", "/opt/wb-src"], 3600, "pip install of workbench (no extras)")
        yield root, chroot
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", str(target)], capture_output=True)


def _profile(arm64_root, model: Path, *args) -> dict:
    root, chroot = arm64_root
    models = root / "tmp" / "wb-models"
    models.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, models / model.name)
    proc = _run([*chroot, f"{VENV}/bin/workbench", "profile", f"/tmp/wb-models/{model.name}", "--runs", "5",
                 "--warmup", "1", "--json", *args], 1800, "workbench profile on arm64")
    return json.loads(proc.stdout)


def test_light_install_has_no_heavy_framework(arm64_root):
    _, chroot = arm64_root
    code = ("import importlib.util as u, json, platform; print(json.dumps({'machine': platform.machine(), "
            "'heavy': [m for m in ('torch', 'tensorflow', 'keras', 'litert_torch', 'jax') if u.find_spec(m)]}))")
    out = json.loads(_run([*chroot, f"{VENV}/bin/python", "-c", code], 600, "checking the arm64 venv").stdout)
    assert out == {"machine": "aarch64", "heavy": []}


def test_profile_tflite_on_arm64(arm64_root, digits_tflite_float):
    r = _profile(arm64_root, digits_tflite_float)
    assert r["kind"] == "measurement" and r["target"]["system"]["machine"] == "aarch64"
    assert r["runtime"]["module"] == "ai_edge_litert" and r["latency"]["runs"] == 5 and r["latency_ms"] > 0
    assert r["ops"] and r["ops"][0]["kind"] == "CONV_2D"
    print(f"\narm64 (qemu) LiteRT digits float: load {r['load_ms']:.1f} ms, mean {r['latency_ms']:.3f} ms, "
          f"peak RSS {r['ram_bytes']:,} B")


def test_profile_onnx_on_arm64(arm64_root, digits_onnx):
    r = _profile(arm64_root, digits_onnx, "--threads", "1")
    assert r["target"]["system"]["machine"] == "aarch64" and r["runtime"]["module"] == "onnxruntime"
    assert r["per_op"]["available"] is True and r["ops"]
    print(f"\narm64 (qemu) ONNX Runtime digits: load {r['load_ms']:.1f} ms, mean {r['latency_ms']:.3f} ms")


from test_profile import digits_onnx  # noqa: E402,F401  (a fixture)
