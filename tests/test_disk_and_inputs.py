"""Disk faults and bad input: one line naming the path (or flag) and the cause, a non-zero exit,
nothing lost, nothing half-written left behind.

Full and read-only disks are simulated in-process by writers that raise the OSError the kernel
would (ENOSPC, EROFS), at start, mid-run and at a checkpoint; where this machine lets the tests
mount a tiny tmpfs (root with CAP_SYS_ADMIN), the same cases also run against a real full and a
real read-only filesystem. Signals are sent to the real console script."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlbase import checkpoint as ckpt
from rlbase import evaluate as evaluate_module
from rlbase import logger as logger_module
from rlbase import run as run_module
from rlbase.checkpoint import load_checkpoint
from rlbase.cli import main
from tests.forkcli import rlbase_command

FAST = ["--env", "rlbase/CartPole-v1", "--num-envs", "4", "--hidden-sizes", "16", "--learning-starts", "100",
        "--buffer-size", "2000"]


def cli(capsys, *args) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def one_error(code: int, lines: list[str], *fragments: str, exit_code: int = 1) -> str:
    errors = [line for line in lines if line.startswith("rlbase: error:")]
    assert code == exit_code and len(errors) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def no_temp_folders(run_dir: Path) -> bool:
    return not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


# --- full disk --------------------------------------------------------------------------------

def test_full_disk_at_start_is_one_line(capsys, tmp_path, monkeypatch):
    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(run_module, "atomic_write_text", full)
    one_error(*cli(capsys, "train", "dqn", *FAST, "--total-timesteps", "400", "--log-dir", tmp_path, "--run-name", "r"),
              "could not write the run's config", "config.json", "no space left on the device")


class FullAfter:
    """A metrics.jsonl that fills the disk after `lines` lines."""

    def __init__(self, file, lines: int):
        self.file, self.left = file, lines

    def write(self, text: str) -> int:
        if self.left <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= 1
        return self.file.write(text)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_full_disk_mid_run_stops_with_the_newest_checkpoint_intact(capsys, tmp_path, monkeypatch):
    real_open = open
    monkeypatch.setattr(logger_module, "open", lambda *a, **k: FullAfter(real_open(*a, **k), 3), raising=False)
    error = one_error(*cli(capsys, "train", "dqn", *FAST, "--total-timesteps", "4000", "--log-interval", "200",
                           "--checkpoint-interval", "200", "--log-dir", tmp_path, "--run-name", "r"),
                      "could not write the run's logs", "no space left on the device")
    assert str(tmp_path / "r") in error
    assert load_checkpoint(tmp_path / "r").state["step"] == 600  # saved before the 4th log line failed
    assert no_temp_folders(tmp_path / "r")


@pytest.mark.parametrize("failing_file, extra", [("model.safetensors", []),
                                                  ("buffer.safetensors", ["--save-buffer"])])
def test_full_disk_at_a_checkpoint_keeps_the_previous_one(capsys, tmp_path, monkeypatch, failing_file, extra):
    real = ckpt.save_safetensors
    calls = []

    def fill(tensors, path):
        calls.append(Path(path).name)
        if Path(path).name == failing_file and calls.count(failing_file) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(tensors, path)
    monkeypatch.setattr(ckpt, "save_safetensors", fill)
    one_error(*cli(capsys, "train", "dqn", *FAST, *extra, "--total-timesteps", "2000", "--checkpoint-interval", "400",
                   "--log-dir", tmp_path, "--run-name", "r"),
              "could not write checkpoint", "step_0000000800", "no space left on the device")
    run_dir = tmp_path / "r"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["latest.json", "step_0000000400"]
    monkeypatch.undo()
    code, _ = cli(capsys, "train", "dqn", "--resume", run_dir, "--total-timesteps", "2000")
    assert code == 0 and load_checkpoint(run_dir).state["step"] == 2000


def test_eval_on_a_read_only_run_prints_the_result_and_warns(capsys, tmp_path, monkeypatch):
    assert main(["train", "dqn", *FAST, "--total-timesteps", "400", "--log-dir", str(tmp_path), "--run-name", "r"]) == 0
    capsys.readouterr()

    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))
    monkeypatch.setattr(evaluate_module, "atomic_write_text", read_only)
    code = main(["eval", str(tmp_path / "r"), "--episodes", "2"])
    captured = capsys.readouterr()
    assert code == 0
    assert "mean return" in captured.out
    (warning,) = [line for line in captured.err.splitlines() if line.startswith("rlbase: warning:")]
    assert "could not write the evaluation report" in warning and "Read-only file system" in warning


# --- a real tmpfs, where the machine allows mounting one -------------------------------------

@pytest.fixture
def tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_real_full_disk(capsys, tmpfs):
    one_error(*cli(capsys, "train", "dqn", *FAST, "--total-timesteps", "20000", "--log-interval", "8",
                   "--checkpoint-interval", "0", "--log-dir", tmpfs, "--run-name", "r"),
              "no space left on the device")


def test_a_real_read_only_disk(capsys, tmpfs):
    assert main(["train", "dqn", *FAST, "--total-timesteps", "400", "--log-dir", str(tmpfs), "--run-name", "r"]) == 0
    capsys.readouterr()
    assert subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode == 0
    one_error(*cli(capsys, "train", "dqn", *FAST, "--log-dir", tmpfs, "--run-name", "r2"),
              "could not write the run directory", "Read-only file system")
    one_error(*cli(capsys, "train", "dqn", "--resume", tmpfs / "r", "--total-timesteps", "800"),
              "Read-only file system")
    code, lines = cli(capsys, "eval", tmpfs / "r", "--episodes", "1")
    assert code == 0 and any("rlbase: warning: could not write the evaluation report" in x for x in lines)


# --- inputs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["train", "dqn", "--env", "CartPole-v1", "--seed", "-1"], "invalid --seed"),
    (["train", "dqn", "--env", "CartPole-v1", "--seed", str(2**32)], "invalid --seed"),
    (["train", "dqn", "--env", "CartPole-v1", "--buffer-size", "1e13"], "of replay memory"),
    (["train", "dqn", "--env", "CartPole-v1", "--run-name", "../x"], "invalid --run-name"),
    (["train", "dqn", "--env", "CartPole-v1", "--run-name", "/abs/x"], "invalid --run-name"),
    (["train", "dqn", "--env", "CartPole-v1", "--run-name", ".."], "invalid --run-name"),
    (["train", "dqn", "--env", "CartPole-v1", "--env-kwargs", "x=.nan"], "invalid --env-kwargs"),
])
def test_bad_training_input_is_one_line_and_writes_nothing(capsys, tmp_path, args, message):
    one_error(*cli(capsys, *args, "--log-dir", tmp_path / "runs"), message, exit_code=2)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_log_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    one_error(*cli(capsys, "train", "dqn", *FAST, "--log-dir", tmp_path / "file"), "--log-dir", "is a file",
              exit_code=2)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_log_dir_without_write_permission(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    one_error(*cli(capsys, "train", "dqn", *FAST, "--total-timesteps", "400", "--log-dir", locked),
              "could not write the run directory")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("runs")
    assert main(["train", "dqn", *FAST, "--total-timesteps", "400", "--log-dir", str(log_dir), "--run-name", "r"]) == 0
    return log_dir / "r"


@pytest.mark.parametrize("args, message", [(["--seed", "-1"], "invalid --seed"),
                                           (["--seed", str(2**32)], "invalid --seed"),
                                           (["--video", "FILE"], "--video expects a folder")])
def test_bad_eval_input(capsys, tmp_path, small_run, args, message):
    (tmp_path / "FILE").write_text("")
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    one_error(*cli(capsys, "eval", small_run, *args), message, exit_code=2)


# --- signals, sent to the real console script -------------------------------------------------

def console(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*rlbase_command(), *args], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def wait_for(condition, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.02)


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    proc = console(tmp_path, "train", "dqn", *FAST, "--total-timesteps", "10000000", "--log-interval", "200",
                   "--log-dir", "runs", "--run-name", "r")
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0 or proc.poll() is not None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "terminated (SIGTERM) at step" in err
    step = load_checkpoint(tmp_path / "runs" / "r").state["step"]
    assert step >= 200 and f"at step {step:,}" in err


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch being loaded")
def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    """Ctrl-C while torch is being imported (after Python itself started): no traceback."""
    proc = console(tmp_path, "train", "dqn", *FAST, "--total-timesteps", "10000000", "--log-dir", "runs")

    def loading_torch() -> bool:
        try:
            return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
        except OSError:
            return proc.poll() is not None
    wait_for(loading_torch)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "rlbase: interrupted" in err
    runs = tmp_path / "runs"
    # Interrupted before training: no run dir; interrupted in training: a resumable checkpoint.
    for run_dir in runs.iterdir() if runs.exists() else []:
        json.loads((run_dir / "checkpoints" / "latest.json").read_text())


@pytest.mark.parametrize("how", ["console script", "python -m rlbase"])
def test_ctrl_c_while_rlbase_itself_is_imported_is_one_line(tmp_path, how):
    """Ctrl-C before the command line has installed its handler: during `import rlbase`, which
    imports gymnasium. A stand-in gymnasium sends the SIGINT from inside that import."""
    fake = tmp_path / "fake" / "gymnasium"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\n"
                                      "time.sleep(30)\nraise SystemExit('the SIGINT was not handled')\n")
    command = rlbase_command() if how == "console script" else [sys.executable, "-m", "rlbase"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    # A shell's background job (`cmd &`) inherits SIGINT ignored, and rlbase rightly leaves an
    # ignored SIGINT alone: the child gets the default disposition, as a command typed at a terminal.
    done = subprocess.run([*command, "eval", "no-such-run"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120, check=False,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert (done.returncode, done.stderr) == (130, "\nrlbase: interrupted\n")


def test_a_lost_ctrl_c_still_stops_training(tmp_path):
    """A Ctrl-C whose KeyboardInterrupt a finaliser swallowed still stops the run at the next step,
    with a checkpoint: the command line's SIGINT handler also sets rlbase.errors.INTERRUPT."""
    from rlbase.checkpoint import load_checkpoint
    from rlbase.errors import INTERRUPT
    from rlbase.lifecycle import TrainingInterrupted, train

    def lose_it(run) -> None:  # as if the handler had run and its exception had been dropped
        if run.global_step >= 400:
            INTERRUPT.requested = True

    values = {"env_id": "rlbase/CartPole-v1", "num_envs": 4, "hidden_sizes": (16,), "learning_starts": 100,
              "buffer_size": 2000, "total_timesteps": 1_000_000}
    try:
        with pytest.raises(TrainingInterrupted) as stop:
            train("dqn", values, run_dir=tmp_path / "r", callbacks=lose_it)
    finally:
        INTERRUPT.requested = False
    assert stop.value.step == 404 and stop.value.signal == 2
    _, state, _ = load_checkpoint(tmp_path / "r")
    assert state["step"] == 404
