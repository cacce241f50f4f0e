"""workbench profile --remote against a real OpenSSH server on 127.0.0.1.

The test starts its own sshd on a free high port of the loopback interface, with throwaway
host and user keys in a temporary folder, and its own known_hosts passed with --ssh-option:
host keys are checked as ssh always does. The "board" is this machine, with this test's
Python (numpy + LiteRT + ONNX Runtime) as --remote-python.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from workbench import profile as profiling
from workbench.cli import main
from workbench.core.errors import UnsupportedError

from test_profile import digits_onnx  # noqa: F401  (a fixture)

SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "workbench-test", "-f", str(path)], check=True)


class Board:
    def __init__(self, folder: Path, port: int, user: str):
        self.folder, self.port, self.user = folder, port, user
        self.known_hosts = folder / "known_hosts"
        self.key = folder / "user_key"

    @property
    def destination(self) -> str:
        return f"{self.user}@{LOOPBACK}"

    def options(self, known_hosts: Path | None = None, port: int | None = None) -> list[str]:
        return [f"UserKnownHostsFile={known_hosts or self.known_hosts}", "GlobalKnownHostsFile=/dev/null",
                f"IdentityFile={self.key}", "IdentitiesOnly=yes", f"Port={port or self.port}"]

    def cli_args(self, **kw) -> list[str]:
        args = ["--remote", self.destination, "--remote-python", sys.executable]
        for opt in self.options(**kw):
            args += ["--ssh-option", opt]
        return args


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not found: install Debian's openssh-server to run the remote profiling tests")
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip("ssh or ssh-keygen not found: install Debian's openssh-client")
    folder = tmp_path_factory.mktemp("sshd")
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = _free_port()
    (folder / "sshd_config").write_text(
        f"ListenAddress {LOOPBACK}\n"
        f"HostKey {folder / 'host_key'}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "StrictModes no\nUsePAM no\nLogLevel ERROR\n")
    host_pub = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[{LOOPBACK}]:{port} {host_pub[0]} {host_pub[1]}\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder (Debian)
    log = open(folder / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config"), "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {(folder / 'sshd.log').read_text()[-500:]}")
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.skip("sshd did not listen within 15 s")
            time.sleep(0.1)
    yield Board(folder, port, getpass.getuser())
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_remote_profile_with_hostile_file_name(board, digits_tflite_float, tmp_path):
    """Quotes, $(...), backticks and ; in the file name reach the board as a plain name, and run nothing."""
    tag = uuid.uuid4().hex[:8]
    marks = [f"wb-pwned-{tag}-{k}" for k in range(3)]
    name = f"a b'; touch {marks[0]}; echo \"$(touch {marks[1]})\" `touch {marks[2]}` -x.tflite"
    model = tmp_path / name
    shutil.copy(digits_tflite_float, model)
    res = _cli("profile", model, "--runs", 10, "--warmup", 1, "--json", *board.cli_args())
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["model"]["name"] == name and r["model"]["path"] == str(model)
    assert r["target"]["remote"] == board.destination and r["target"]["name"] == board.destination
    assert r["kind"] == "measurement" and r["latency"]["runs"] == 10 and r["latency_ms"] > 0
    assert r["runtime"]["module"] == "ai_edge_litert"
    assert [o["kind"] for o in r["ops"]][:1] == ["CONV_2D"]  # ops filled in from the local graph
    for folder in (Path.home(), Path.cwd(), tmp_path):
        assert not any((folder / m).exists() for m in marks)


def test_remote_onnx(board, digits_onnx):
    r = profiling.profile_remote(digits_onnx, board.destination, runs=10, warmup=1, ssh_options=board.options(),
                                 python=sys.executable)
    assert r["runtime"]["name"] == "ort" and r["per_op"]["available"] is True
    assert r["ops"] and all(o["latency_ms"] is not None for o in r["ops"])
    res = _cli("profile", digits_onnx, "--runs", 5, *board.cli_args())
    assert res.exit_code == 0, res.output
    assert board.destination in res.output and "per-op" in res.output


def test_remote_ctrl_c_returns_partial_report(board, digits_tflite_int8):
    seen = []

    def progress(ev):
        seen.append(ev)
        if ev.get("event") == "progress" and ev.get("stage") == "runs" and len(seen) < 1000:
            seen.extend([None] * 1000)  # interrupt once
            raise KeyboardInterrupt

    r = profiling.profile_remote(digits_tflite_int8, board.destination, runs=100_000_000, warmup=0, progress=progress,
                                 ssh_options=board.options(), python=sys.executable)
    assert r["interrupted"] is True and 1 <= r["latency"]["runs"] < 100_000_000
    assert r["inputs"][0]["dtype"] == "int8"


def test_unreachable_host(board, digits_tflite_float):
    res = _cli("profile", digits_tflite_float, *board.cli_args(port=_free_port()))
    assert res.exit_code == 2
    assert "Could not reach" in res.output and "Connection refused" in res.output


def test_unknown_host_key_is_refused(board, digits_tflite_float, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    res = _cli("profile", digits_tflite_float, *board.cli_args(known_hosts=empty))
    assert res.exit_code == 2
    assert "Host key verification failed" in res.output and "known_hosts" in res.output


def test_missing_runtime_on_board(board, digits_tflite_float, tmp_path):
    blockers = tmp_path / "blockers"
    for mod in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        (blockers / mod).mkdir(parents=True)
        (blockers / mod / "__init__.py").write_text("raise ImportError('not on this board')\n")
    fake = tmp_path / "python-without-litert"
    fake.write_text(f"#!/bin/sh\nPYTHONPATH='{blockers}' exec '{sys.executable}' \"$@\"\n")
    fake.chmod(0o755)
    args = [a if a != sys.executable else str(fake) for a in board.cli_args()]
    res = _cli("profile", digits_tflite_float, *args)
    assert res.exit_code == 3, res.output
    assert "No TFLite runtime" in res.output and "pip install ai-edge-litert" in res.output


def test_missing_python_on_board(board, digits_tflite_float, tmp_path):
    args = [a if a != sys.executable else str(tmp_path / "no-such-python3") for a in board.cli_args()]
    res = _cli("profile", digits_tflite_float, *args)
    assert res.exit_code == 3 and "was not found" in res.output


def test_model_the_board_cannot_load(board, digits_tflite_float, tmp_path):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(digits_tflite_float.read_bytes()[:3000])
    res = _cli("profile", cut, *board.cli_args())
    assert res.exit_code == 2 and "could not load" in res.output and board.destination in res.output


def test_external_data_onnx_refused_before_connecting(tmp_path):
    model = tmp_path / "ext.onnx"
    # ir_version 8, then an initializer entry {"location": "ext.onnx.data"}
    model.write_bytes(b"\x08\x08" + b"\x0a\x08location\x12\x0dext.onnx.data")
    with pytest.raises(UnsupportedError, match="external-data"):
        profiling.profile_remote(model, "pi@board.invalid")
