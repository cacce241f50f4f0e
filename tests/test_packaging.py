"""`pip install .` must carry the package, the target profiles, the reference models and the calibration sets."""

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "workbench").rglob("__init__.py")}
    assert found <= listed, f"not in pyproject's package list: {sorted(found - listed)}"
    for pkg, folder in cfg["package-dir"].items():
        assert (ROOT / folder / "__init__.py").exists(), (pkg, folder)


def test_wheel_carries_data_and_runs_from_its_install(tmp_path):
    wheel_dir = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    whl = next(wheel_dir.glob("workbench-*.whl"))
    names = set(zipfile.ZipFile(whl).namelist())
    for needed in ["workbench/builtin/targets/stm32l4r5.yaml", "workbench/builtin/targets/raspberry-pi-4.yaml",
                   "workbench/builtin/models/digits_keras.keras", "workbench/builtin/models/fashion_torch.pt",
                   "workbench/builtin/models/demo.yaml", "workbench/builtin/models/reference.py",
                   "workbench/builtin/calibration/digits_calib.npz", "workbench/builtin/calibration/fashion-mnist.yaml",
                   "workbench/cli/__init__.py", "workbench/profile/device_script.py", "workbench/emulate/firmware/harness/wb_harness.cc", "workbench/runtimes/tflm_child.py",
                   "workbench/emulate/firmware/harness/wb_loads_plugin.c", "workbench/emulate/firmware/published_rows.yaml",
                   "workbench/emulate/firmware/heldout.json"]:
        assert needed in names, needed
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(whl)], check=True)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import workbench\n"
            "assert workbench.__file__.startswith(sys.argv[1]), workbench.__file__\n"
            "from workbench.cli import main\nmain(['targets', 'list'])")
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "stm32l4r5" in out.stdout and "raspberry-pi-4" in out.stdout
