"""Profile a model where it runs: on this machine, or on a board reached over ssh.

    report = profile("model.tflite", runtime="litert", threads=4, runs=100, warmup=10)
    report = profile_remote("model.tflite", "pi@raspberrypi.local", runs=50)
    diff = compare_reports(estimate, report)   # workbench.profile.reports

The measuring is done by :mod:`workbench.profile.device_script`, a file that is also a
self-contained script: for a remote board it is streamed over ssh and run by the board's
``python3``, so the board needs only numpy and a runtime, not workbench. Over the same
connection the model follows the script on stdin, and stdin then stays open as a control
channel: Ctrl-C here sends "stop" and the board answers with the partial report.

Reports are JSON-ready dicts shared with ``workbench emulate``: ``kind`` ("measurement"
here, "estimate" there), ``target``, ``model``, ``latency_ms``, ``ram_bytes`` and ``ops``
(``index``, ``name``, ``kind``, ``latency_ms``), plus the details of each.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from workbench.core.errors import (
    ConfigError,
    InputFileError,
    ModelFormatError,
    ProfilerDependencyError,
    RemoteConnectionError,
    RuntimeFailure,
    UnsupportedError,
    WorkbenchError,
)
from workbench.core.files import check_input_file, sha256_file
from workbench.profile import device_script as profiler

__all__ = ["ProfileSettings", "RemoteTarget", "profile", "profile_remote",
           "RemoteConnectionError", "ProfilerDependencyError"]

Progress = Callable[[dict], None]

# The runtime a model format is profiled in when none is named.
RUNTIME_FOR_FORMAT = {"tflite": "litert", "onnx": "ort", "ort": "ort", "pte": "executorch"}
FORMATS_FOR_RUNTIME = {"litert": ("tflite",), "ort": ("onnx", "ort"), "executorch": ("pte",)}


@dataclass(frozen=True)
class ProfileSettings:
    runtime: str | None = None  # litert | ort | executorch; None: from the model's format
    threads: int | None = None  # None: every core of the machine that runs the profile
    runs: int = 100
    warmup: int = 10
    per_op: bool = True
    per_op_runs: int = 20
    seed: int = 0
    input_shape: tuple[int, ...] | None = None  # the first input's shape, batch first: fills its dynamic dims

    def __post_init__(self):
        if self.runtime is not None and self.runtime not in FORMATS_FOR_RUNTIME:
            raise ConfigError(f"Unknown runtime '{self.runtime}'. Valid: {', '.join(FORMATS_FOR_RUNTIME)}.")
        if self.runs < 1:
            raise ConfigError(f"--runs must be at least 1, got {self.runs}.")
        if self.warmup < 0:
            raise ConfigError(f"--warmup must be 0 or more, got {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {self.threads}.", hint="Leave it out to use every core.")
        if self.per_op_runs < 1:
            raise ConfigError(f"per_op_runs must be at least 1, got {self.per_op_runs}.")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ConfigError(f"--input-shape {self.input_shape} is not a shape of positive integers.")

    def script_args(self) -> list[str]:
        args = ["--runs", str(self.runs), "--warmup", str(self.warmup), "--seed", str(self.seed)]
        if self.threads:
            args += ["--threads", str(self.threads)]
        if not self.per_op:
            args.append("--no-per-op")
        if self.input_shape:
            args += ["--input-shape", ",".join(str(d) for d in self.input_shape)]
        return args


# A destination ssh accepts: [user@]host or ssh://[user@]host[:port]; never an option.
_DESTINATION = re.compile(r"^(ssh://)?([A-Za-z0-9._+-]+@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:\d+)?$")
# ssh -o takes "Key=Value" or "Key Value".
_SSH_OPTION = re.compile(r"^[A-Za-z][A-Za-z0-9]*(=|\s+)\S.*$", re.S)


@dataclass(frozen=True)
class RemoteTarget:
    """A board reached with the user's own ssh: host keys are checked as ssh does, and
    BatchMode keeps ssh from prompting (set up key-based login first)."""

    destination: str  # user@host
    ssh_options: tuple[str, ...] = ()  # each passed as ``-o OPT``; they come first, so they win over ours
    python: str = "python3"  # the board's interpreter (e.g. a venv: /home/pi/venv/bin/python3)
    connect_timeout: int = 10

    def __post_init__(self):
        m = _DESTINATION.match(self.destination or "")
        if m and m.group(4) and not m.group(1):
            raise ConfigError(f"--remote '{self.destination}': ssh takes a port only in the ssh://user@host:PORT form.",
                              hint="Write ssh://user@host:2222, or pass --ssh-option Port=2222.")
        if not m:
            raise ConfigError(f"--remote '{self.destination}' is not an ssh destination.",
                              hint="Write it as user@host (or user@host:port as ssh://user@host:2222).")
        for opt in self.ssh_options:
            if not _SSH_OPTION.match(opt):
                raise ConfigError(f"--ssh-option '{opt}' is not an ssh option.",
                                  hint="Write it as ssh's -o takes it, e.g. --ssh-option Port=2222 "
                                       "--ssh-option UserKnownHostsFile=~/.ssh/pi_known_hosts.")
        if not self.python or "\n" in self.python or "\0" in self.python:
            raise ConfigError(f"--remote-python '{self.python}' is not a program name.")
        if self.connect_timeout < 1:
            raise ConfigError(f"connect_timeout must be at least 1 second, got {self.connect_timeout}.")

    def ssh_argv(self, remote_args: list[str]) -> list[str]:
        argv = ["ssh"]
        for opt in self.ssh_options:
            argv += ["-o", opt]
        argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                 "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-T", "--", self.destination]
        # ssh hands the remote side one command line for its shell: quote every argument.
        argv.append(" ".join(shlex.quote(a) for a in remote_args))
        return argv


def _model_runtime(path: Path, runtime: str | None) -> tuple[str, str]:
    from workbench.frontends.detect import detect_format

    fmt = detect_format(path)
    if fmt not in RUNTIME_FOR_FORMAT:
        raise UnsupportedError(
            f"'{path}' is a {fmt} model; the profiler runs .tflite (LiteRT), .onnx/.ort (ONNX Runtime) and .pte "
            "(ExecuTorch) models.",
            hint="Export it first: workbench export MODEL --format tflite -o model.tflite")
    runtime = runtime or RUNTIME_FOR_FORMAT[fmt]
    if fmt not in FORMATS_FOR_RUNTIME[runtime]:
        raise UnsupportedError(f"Runtime '{runtime}' cannot run '{path}', which is a {fmt} model.",
                               hint=f"Use --runtime {RUNTIME_FOR_FORMAT[fmt]}, or leave --runtime out.")
    return fmt, runtime


def profile(model_path: str | os.PathLike, runtime: str | None = None, threads: int | None = None, runs: int = 100,
            warmup: int = 10, progress: Progress | None = None, *, per_op: bool = True, per_op_runs: int = 20,
            seed: int = 0, input_shape: tuple[int, ...] | None = None) -> dict:
    """Profile ``model_path`` on this machine. Ctrl-C during the runs returns the partial
    report with ``"interrupted": true``. ``input_shape`` (batch first) fills the first input's
    dynamic dims; a dynamic dim other than the batch without it is bad input (the report's
    ``inputs`` say which shapes were timed and where each came from)."""
    settings = ProfileSettings(runtime=runtime, threads=threads, runs=runs, warmup=warmup, per_op=per_op,
                               per_op_runs=per_op_runs, seed=seed, input_shape=_shape(input_shape))
    path = check_input_file(model_path)
    fmt, rt = _model_runtime(path, settings.runtime)
    check_input_shapes(path, fmt, settings.input_shape)
    try:
        report = profiler.profile_model(str(path), rt, settings.threads, settings.runs, settings.warmup,
                                        per_op=settings.per_op, per_op_runs=settings.per_op_runs, seed=settings.seed,
                                        progress=progress, model_name=path.name, input_shape=settings.input_shape)
    except profiler.ProfilerError as exc:
        raise _error_from(exc.to_dict(), path, where="this machine") from None
    return _finish(report, path, fmt, {"name": report["target"]["name"], "remote": None})


def profile_remote(model_path: str | os.PathLike, remote: str | RemoteTarget, runtime: str | None = None,
                   threads: int | None = None, runs: int = 100, warmup: int = 10, progress: Progress | None = None, *,
                   ssh_options: tuple[str, ...] | list[str] = (), python: str = "python3", per_op: bool = True,
                   per_op_runs: int = 20, seed: int = 0, connect_timeout: int = 10, stop_grace_s: float = 30.0,
                   input_shape: tuple[int, ...] | None = None) -> dict:
    """Profile ``model_path`` on a board over ssh; the board needs Python 3.7+, numpy and a runtime.

    One ssh connection: the remote command is ``python3 -c BOOTSTRAP ARGS`` (every argument
    quoted); stdin carries the profiler script, then the model's bytes, then stays open as
    the control channel. Nothing is left on the board: the script writes the model to a
    private temporary file there and deletes it."""
    settings = ProfileSettings(runtime=runtime, threads=threads, runs=runs, warmup=warmup, per_op=per_op,
                               per_op_runs=per_op_runs, seed=seed, input_shape=_shape(input_shape))
    target = remote if isinstance(remote, RemoteTarget) else RemoteTarget(
        remote, tuple(ssh_options), python, connect_timeout)
    path = check_input_file(model_path)
    if not path.is_file():
        raise InputFileError(f"'{path}' is not a file; remote profiling sends one model file.")
    fmt, rt = _model_runtime(path, settings.runtime)
    check_input_shapes(path, fmt, settings.input_shape)  # refused here, before connecting
    if fmt == "onnx" and _has_external_data(path):
        raise UnsupportedError(
            f"'{path}' keeps its weights in separate external-data files; remote profiling sends one model file.",
            hint="Save it as one file: onnx.save(onnx.load(PATH), OUT, save_as_external_data=False), "
                 "or export with torch.onnx.export(..., external_data=False).")
    if shutil.which("ssh") is None:
        raise ProfilerDependencyError("Remote profiling needs the ssh client, which is not on PATH.",
                                      hint="Install OpenSSH's client (Debian: apt install openssh-client).")
    script = Path(profiler.__file__).read_bytes()
    size = path.stat().st_size
    remote_args = [target.python, "-c", BOOTSTRAP, "--events", "--control-stdin", "--model-stdin", str(size),
                   "--model-name", path.name, "--runtime", rt, *settings.script_args()]
    result = _run_ssh(target.ssh_argv(remote_args), script, path, progress, stop_grace_s)
    report = _parse_remote(result, target, path)
    return _finish(report, path, fmt, {"name": target.destination, "remote": target.destination})


def _shape(shape) -> tuple[int, ...] | None:
    return None if shape is None else tuple(int(d) for d in shape)


def _declared_inputs(path: Path, fmt: str) -> list[tuple[str, tuple | None]]:
    """(name, shape with None for dynamic dims) of each model input, read from the file on this machine."""
    if fmt == "pte":
        from workbench.frontends.pte_reader import read_pte

        try:
            method = read_pte(path).method("forward")
        except WorkbenchError:
            return []
        return [(f"input_{i}", t.shape) for i, t in enumerate(method.inputs) if t is not None] if method else []
    if fmt == "tflite":
        from workbench.frontends.tflite_reader import read_tflite as read
    elif fmt == "ort":
        from workbench.frontends.ort_reader import read_ort as read
    else:
        from workbench.frontends.onnx_reader import read_onnx as read
    try:
        graph = read(path)
    except WorkbenchError:
        return []  # a file this side cannot read: the runtime where it runs says what is wrong with it
    return [(graph.tensors[i].name, graph.tensors[i].shape) for i in graph.inputs]


def check_input_shapes(path: Path, fmt: str, input_shape: tuple[int, ...] | None) -> None:
    """Refuse, before anything runs, an input with a dynamic dim besides the batch that --input-shape
    does not fill (the profiler would otherwise time a made-up size), or an --input-shape that does
    not fit the first input. The profiler checks the same again where it runs."""
    for k, (name, shape) in enumerate(_declared_inputs(path, fmt)):
        if shape is None:
            continue  # the file does not say: the runtime's own signature decides where it runs
        try:
            profiler.resolve_shape(name, list(shape), input_shape if k == 0 else None)
        except profiler.ProfilerError as exc:
            raise InputFileError(f"'{path.name}': {exc.message}", hint=exc.hint) from None


def _has_external_data(path: Path) -> bool:
    # An initializer stored outside the file carries a {"location": FILE} entry: the key is
    # serialized as field 1, length 8, "location". A false positive only costs an error message.
    marker = b"\x0a\x08location"
    with open(path, "rb") as fh:
        tail = b""
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            if marker in tail + chunk:
                return True
            tail = chunk[-len(marker):]
    return False


# Read by the board's python3 -c: the script's length, the script, then the script runs
# as __main__ and reads the model from the same stdin.
BOOTSTRAP = ("import sys;i=sys.stdin.buffer;n=int(i.readline());"
             "exec(compile(i.read(n),'workbench-profiler','exec'),{'__name__':'__main__'})")


@dataclass
class _SshResult:
    returncode: int
    stdout: bytes
    log: list[str] = field(default_factory=list)  # stderr lines that were not progress events
    interrupted: bool = False


def _run_ssh(argv: list[str], script: bytes, model: Path, progress: Progress | None, stop_grace_s: float) -> _SshResult:
    # A new session: the terminal's Ctrl-C reaches only us, and we ask the board to stop.
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    out_chunks: list[bytes] = []
    log: list[str] = []
    events: queue.Queue = queue.Queue()

    def read_stdout():
        for chunk in iter(lambda: proc.stdout.read(65536), b""):
            out_chunks.append(chunk)

    def read_stderr():
        for raw in iter(proc.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(profiler.EVENT_PREFIX):
                try:
                    events.put(json.loads(line[len(profiler.EVENT_PREFIX):]))
                except ValueError:
                    log.append(line)
            elif line.strip():
                log.append(line)

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    interrupted = False
    try:
        try:
            proc.stdin.write(b"%d\n" % len(script))
            proc.stdin.write(script)
            with open(model, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    proc.stdin.write(chunk)
            proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # ssh ended early (no connection, no python): its exit status and stderr say why
        deadline = None
        while True:
            try:
                _drain(events, progress)
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    break
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting for the board
                    proc.kill()
                    proc.wait()
                    raise
                interrupted = True
                deadline = time.monotonic() + stop_grace_s
                try:
                    proc.stdin.write(b"stop\n")
                    proc.stdin.flush()
                except (BrokenPipeError, ConnectionResetError, ValueError):
                    pass
    finally:
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(timeout=5)
    _drain(events, progress)
    return _SshResult(proc.returncode, b"".join(out_chunks), log, interrupted)


def _drain(events: queue.Queue, progress: Progress | None) -> None:
    while True:
        try:
            ev = events.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(ev)


# What ssh says when it cannot get to the board, and what to do about it.
SSH_FAILURES = [
    (re.compile(r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No \S+ host key is known", re.I),
     "The board's host key is not in known_hosts, or it changed. Connect once with plain ssh to check and "
     "accept its fingerprint, or point --ssh-option UserKnownHostsFile=FILE at a file that has it."),
    (re.compile(r"Permission denied|Too many authentication failures", re.I),
     "Key-based login failed (ssh runs in BatchMode: no password prompts). Copy your key with ssh-copy-id, "
     "or pass --ssh-option IdentityFile=KEY."),
    (re.compile(r"timed out|Connection refused|No route to host|Network is unreachable|Could not resolve hostname"
                r"|Name or service not known|Connection closed by|Connection reset", re.I),
     "Check that the board is on, on the network, that sshd runs there, and the host name and port "
     "(--ssh-option Port=N)."),
]


def _parse_remote(result: _SshResult, target: RemoteTarget, path: Path) -> dict:
    where = target.destination
    tail = "\n".join(result.log[-8:])
    if result.returncode == 255 and not result.stdout.strip():
        hint = next((h for rx, h in SSH_FAILURES if rx.search(tail)), "Run the same ssh command by hand to see why.")
        last = result.log[-1] if result.log else "ssh exited with status 255"
        raise RemoteConnectionError(f"Could not reach {where} over ssh: {last}", hint=hint)
    doc = _last_json(result.stdout)
    if doc is None:
        if result.returncode == 127 or re.search(r"(command )?not found|No such file or directory", tail):
            raise ProfilerDependencyError(
                f"'{target.python}' was not found on {where}: {result.log[-1] if result.log else 'exit status 127'}",
                hint="Install Python 3 there (Raspberry Pi OS: sudo apt install python3 python3-pip python3-numpy), "
                     "or pass --remote-python PATH.")
        if "SyntaxError" in tail:
            raise ProfilerDependencyError(f"The Python on {where} ('{target.python}') is too old for the profiler.",
                                          hint="It needs Python 3.7 or newer; pass --remote-python PATH to pick another.")
        if result.interrupted:
            raise KeyboardInterrupt
        raise RuntimeFailure(f"The profiler on {where} failed (exit status {result.returncode}) without a report.",
                             hint=("What it printed:\n" + tail) if tail else None)
    if "error" in doc:
        raise _error_from(doc["error"], path, where=where)
    local_sha = sha256_file(path)
    if doc.get("model", {}).get("sha256") != local_sha:
        raise RuntimeFailure(f"The model arrived changed on {where} (sha256 differs); nothing was measured.",
                             hint="Try again; if it persists, check the connection.")
    doc["interrupted"] = bool(doc.get("interrupted") or result.interrupted)
    return doc


def _last_json(data: bytes) -> dict | None:
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


# The profiler's error kinds, as workbench errors.
ERROR_TYPES: dict[str, type[WorkbenchError]] = {
    "missing_dependency": ProfilerDependencyError,
    "model_load": ModelFormatError,
    "bad_input": InputFileError,
    "run_failed": RuntimeFailure,
}


def _error_from(err: dict, path: Path, where: str) -> WorkbenchError:
    cls = ERROR_TYPES.get(err.get("kind"), RuntimeFailure)
    msg = err.get("message") or "the profiler failed"
    hint = err.get("hint")
    if err.get("kind") == "model_load":
        msg = f"'{path.name}' on {where}: {msg}"
    elif where != "this machine":
        msg = f"On {where}: {msg}"
    if err.get("pip"):
        extra = " (tflite-runtime also works; it needs numpy<2)" if err["pip"] == "ai-edge-litert" else ""
        hint = f"Install it on {where} for that Python: python3 -m pip install {err['pip']}{extra}"
    return cls(msg, hint=hint)


def _finish(report: dict, path: Path, fmt: str, target: dict) -> dict:
    """Add what only this side knows: the local path, the format, the graph's ops for LiteRT."""
    report["model"].update({"path": str(path), "format": fmt})
    report["target"].update({k: v for k, v in target.items() if v is not None or k == "remote"})
    if not report.get("ops") and fmt == "tflite":
        report["ops"] = _graph_ops(path)
    return report


def _graph_ops(path: Path) -> list[dict]:
    """The model's ops (index, name, kind) without times, so reports line up with estimates."""
    try:
        from workbench.frontends.tflite_reader import read_tflite

        graph = read_tflite(path)
    except WorkbenchError:
        return []
    return [{"index": op.index, "name": op.name, "kind": op.kind, "latency_ms": None} for op in graph.ops]
