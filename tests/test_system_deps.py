"""scripts/system_deps.sh: what `make test` runs first on a fresh machine."""

import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "system_deps.sh"


def _fake_bin(tmp_path, installed: set[str], uid: int):
    b = tmp_path / "bin"
    b.mkdir()
    (b / "dpkg-query").write_text("#!/bin/sh\nfor p in " + " ".join(sorted(installed) or ["none"]) +
                                  '; do [ "$p" = "$3" ] && { printf "install ok installed"; exit 0; }; done\nexit 1\n')
    (b / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    for f in b.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{b}:/usr/bin:/bin"}


def test_missing_packages_without_root_stop_with_one_message(tmp_path):
    env = _fake_bin(tmp_path, {"g++", "make"}, uid=1000)
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 1
    assert "qemu-system-arm" in r.stderr and "gcc-arm-none-eabi" in r.stderr and "dataset-fashion-mnist" in r.stderr
    assert "sudo apt-get install" in r.stderr
    assert " g++" not in r.stderr.split("installed:")[1].split("\n")[0]  # installed ones are not named


def test_nothing_missing_is_silent_success(tmp_path):
    names = SCRIPT.read_text().split('PACKAGES="')[1].split('"')[0].split()
    env = _fake_bin(tmp_path, set(names), uid=1000)
    r = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)
    assert (r.returncode, r.stderr) == (0, "")
