"""The tests' forked `rlbase` (tests/forkcli.py) answers as the real console script in a fresh process does."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from tests import forkcli

pytestmark = pytest.mark.skipif(forkcli.FRESH, reason="commands run in fresh processes here")

COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["train", "dqn", "--env", "NoSuchEnv-v0"],  # a one-line error
    ["train", "dqn", "--total-timesteps", "lots"],  # argparse's usage error, exit 2
    ["eval", "no_such_run"],
    ["report", "no_such_run"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: "-".join(args)[:40])
def test_a_forked_command_answers_as_a_fresh_process(tmp_path, args):
    env = dict(os.environ, NO_COLOR="1")
    forked = forkcli.run_console(args, cwd=tmp_path, env=env, timeout=300)
    fresh = subprocess.run([str(forkcli.RLBASE_EXE), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert forked.stdout or forked.stderr


def test_a_fork_runs_in_its_own_directory_and_environment_and_leaves_the_tests_alone(tmp_path):
    # Test-process state a fork must not carry into the command: pytest's warning capture (always show),
    # the working directory and environment, sys.path; nor may the command change any of them here.
    before = (os.getcwd(), dict(os.environ), list(sys.path))
    warnings.simplefilter("always")
    proc = forkcli.run_console(["train", "ppo", "--env", "rlbase/CartPole-v1", "--num-envs", "8", "--num-steps", "16",
                                "--total-timesteps", "128", "--log-dir", "runs", "--run-name", "here"],
                               cwd=tmp_path, env=dict(os.environ, NO_COLOR="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "runs" / "here" / "config.json").is_file()  # written in the command's own cwd
    assert (os.getcwd(), dict(os.environ), list(sys.path)) == before


def _report_hooks() -> None:
    import faulthandler
    import logging

    warnings.warn("a library's deprecation", DeprecationWarning)  # hidden in a fresh process
    logging.getLogger("some.library").warning("a library's logged warning")  # Python's last-resort handler
    print(sys.path[0], faulthandler.is_enabled(), sys.stdout.isatty(), sys.stdin.read() == "")


def test_a_fork_undoes_pytests_hooks(tmp_path, caplog):
    # caplog: pytest's log capture is on in this process, and "always" shows every warning here.
    warnings.simplefilter("always")
    proc = forkcli.run_console([], cwd=tmp_path, env=dict(os.environ), timeout=60, entry=_report_hooks)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "a library's logged warning\n"
    assert proc.stdout == f"{forkcli.RLBASE_EXE.parent} False False True\n"


def test_a_command_that_hangs_is_killed_at_its_timeout(tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        forkcli.run_console(["train", "ppo", "--env", "rlbase/CartPole-v1", "--total-timesteps", "100000000"],
                            cwd=tmp_path, env=dict(os.environ), timeout=3)


@pytest.mark.parametrize("change,forked", [
    ({"NO_COLOR": "1"}, True),
    ({"COLUMNS": "40"}, True),
    ({"PYTHONPATH": "/elsewhere"}, False),  # read when the interpreter starts
    ({"OMP_NUM_THREADS": "2"}, False),  # read when torch is imported
    ({"RAY_ADDRESS": "127.0.0.1:1"}, False),
])
def test_an_environment_read_at_start_up_gets_a_fresh_process(change, forked):
    assert forkcli._forkable(["eval", "x"], dict(os.environ, **change)) is forked


def test_a_sweep_gets_a_fresh_process():
    assert not forkcli._forkable(["sweep", "ppo"], dict(os.environ))
