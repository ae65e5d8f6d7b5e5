"""`rlbase ARGS` for the tests, in a fork of the test process when that is the same as a fresh one.

A fresh `rlbase` process spends 2-3 s of a 2-core machine importing torch, gymnasium and rlbase before
it reads its first flag, and the suite runs a few hundred commands. A fork of the test process, which
has imported them already, runs the console script's entry point (`rlbase.cli.run`) in a process of
its own, with its own argv, working directory, environment, standard streams (stdin from /dev/null,
stdout and stderr captured, not a terminal) and `sys.path` (the console script's, not pytest's), and
with the test process's pytest hooks undone (logging handlers, warning filters, fault handler): what
`subprocess.run` would give it, less the interpreter's start.

A fresh process is still used where a fork would differ from one:
- an environment that differs from the test process's in a variable read at start-up or import
  (PYTHON*, thread counts, CUDA, Ray, LD_*);
- `rlbase sweep` (Ray starts processes of its own, and is tested as a user runs it);
- `RLBASE_TESTS_FRESH_PROCESS=1`, or a platform without `os.fork`.
The start of the real console script has tests of its own (test_readme, test_layering, the tmux and
Ctrl-C tests, the sweeps).
"""

from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

RLBASE_EXE = Path(sys.executable).parent / "rlbase"
FRESH = os.environ.get("RLBASE_TESTS_FRESH_PROCESS") == "1" or not hasattr(os, "fork") or not RLBASE_EXE.exists()
IMPORT_TIME_PREFIXES = ("PYTHON", "OMP_", "MKL_", "KMP_", "OPENBLAS", "TORCH", "CUDA", "RAY_", "LD_", "GYM")
FRESH_COMMANDS = ("sweep",)
_console_path: list[str] | None = None


def run_console(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float,
                entry: Callable[[], object] | None = None) -> subprocess.CompletedProcess:
    """`rlbase ARGS` with `env` in `cwd`: its exit code, stdout and stderr, as `subprocess.run` returns them.
    `entry` replaces the console script's entry point in a fork (for the tests of this module)."""
    args = list(map(str, args))
    if not _forkable(args, env):
        return subprocess.run([*rlbase_command(), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    argv = [str(RLBASE_EXE), *args]
    path = _console_sys_path()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with warnings.catch_warnings():  # Python >= 3.12 warns of a fork beside threads (pytest-xdist's)
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(argv, Path(cwd), env, path, out.fileno(), err.fileno(), entry)
        status = _wait(pid, argv, timeout)
        out.seek(0)
        err.seek(0)
        # As subprocess's text mode reads them: universal newlines ("\r" of a progress bar included).
        stdout, stderr = (f.read().decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
                          for f in (out, err))
    return subprocess.CompletedProcess(argv, os.waitstatus_to_exitcode(status), stdout, stderr)


def rlbase_command() -> list[str]:
    """The console script a fresh process runs: the venv's, else the one on PATH, else `python -m rlbase`."""
    if RLBASE_EXE.exists():
        return [str(RLBASE_EXE)]
    found = shutil.which("rlbase")
    return [found] if found else [sys.executable, "-m", "rlbase"]


def _forkable(args: list[str], env: dict[str, str]) -> bool:
    if FRESH or (args and args[0] in FRESH_COMMANDS):
        return False
    changed = {k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)}
    return not any(k.startswith(IMPORT_TIME_PREFIXES) for k in changed)


def _console_sys_path() -> list[str]:
    """The console script's sys.path: its bin dir, then what the interpreter adds (PYTHONPATH, site)."""
    global _console_path
    if _console_path is None:
        out = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        _console_path = [str(RLBASE_EXE.parent), *json.loads(out)]
    return _console_path


def _wait(pid: int, argv: list[str], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(argv, timeout)
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def _child(argv: list[str], cwd: Path, env: dict[str, str], path: list[str], out_fd: int, err_fd: int,
           entry: Callable[[], object] | None) -> None:
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                      line_buffering=True)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = path
        sys.argv = list(argv)
        _undo_pytest()
        if entry is None:
            from rlbase.cli import run as entry
        entry()  # the console script's ends the process with os._exit
        code = 0
    except SystemExit as exc:  # argparse's usage errors (2) and --help (0), as the interpreter reports them
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the interpreter's own report of an uncaught exception
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _undo_pytest() -> None:
    """The hooks pytest installed in the test process, back to what a fresh interpreter has."""
    faulthandler.disable()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.excepthook = sys.__excepthook__
    sys.unraisablehook = sys.__unraisablehook__
    warnings.resetwarnings()  # a release build's default filters, added in reverse order
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    warnings.showwarning = warnings._showwarning_orig  # type: ignore[attr-defined]
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)
