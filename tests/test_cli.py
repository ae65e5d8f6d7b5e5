"""The `rlbase` console script, run as a user runs it: a process per command (tests/forkcli.py: a fork
of the test process where that is the same as a fresh one).

One trained run directory is shared by the tests of this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from rlbase.agents.dqn import DQNConfig
from rlbase.config import flag_name

from tests.forkcli import RLBASE_EXE, rlbase_command, run_console  # noqa: F401 - rlbase_command: for other tests



def run_cli(*args, cwd: Path, command: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), NO_COLOR="1")
    if command is None:
        return run_console(list(map(str, args)), cwd=cwd, env=env, timeout=timeout)
    return subprocess.run([*command, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    output = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == code, output
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, output
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one line on stderr\n{output}"
    assert lines[0].startswith("rlbase: error:") and len(lines[0]) > len("rlbase: error: "), output
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """`rlbase train dqn` on CartPole, through the console script's entry point (tests/forkcli.py)."""
    assert RLBASE_EXE.exists(), f"console script {RLBASE_EXE} is not installed"
    log_dir = tmp_path_factory.mktemp("cli_runs")
    proc = run_cli("train", "dqn", "--env", "CartPole-v1", "--total-timesteps", 1500, "--learning-starts", 200,
                   "--log-dir", log_dir, "--run-name", "r", cwd=log_dir, command=[str(RLBASE_EXE)])
    assert_ok(proc)
    return log_dir / "r"


def final_step_ok(step: int, run_dir: Path, total: int) -> bool:
    """Training stops at the first vector step that reaches `total` (a multiple of num_envs)."""
    num_envs = json.loads((run_dir / "config.json").read_text())["config"]["num_envs"]
    return total <= step < total + num_envs and step % num_envs == 0


def latest_checkpoint(run_dir: Path) -> Path:
    name = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
    return run_dir / "checkpoints" / name


# ---------------------------------------------------------------- train and eval


def test_train_writes_the_run_directory(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["algo"] == "dqn"
    assert config["config"]["env_id"] == "CartPole-v1" and config["config"]["total_timesteps"] == 1500
    assert config["config"]["learning_starts"] == 200
    checkpoint = latest_checkpoint(trained_run)
    assert (checkpoint / "model.safetensors").is_file()
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    assert final_step_ok(step, trained_run, 1500)
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert records and records[-1]["global_step"] == step
    assert list(trained_run.glob("events.out.tfevents.*"))


def test_eval_json(trained_run):
    proc = run_cli("eval", trained_run, "--episodes", 3, "--json", cwd=trained_run.parent)
    assert_ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    report = json.loads(lines[0])
    episodes = report["episodes"]
    assert len(episodes) == 3
    returns = [e["return"] for e in episodes]
    for e in episodes:
        assert e["length"] > 0
        assert e["return"] == e["length"]  # CartPole pays 1 per step
    assert report["mean_return"] == pytest.approx(statistics.mean(returns))
    assert report["std_return"] == pytest.approx(statistics.stdev(returns))
    assert report["ci95_low"] <= report["mean_return"] <= report["ci95_high"]


def test_eval_text(trained_run):
    proc = run_cli("eval", trained_run, "--episodes", 3, cwd=trained_run.parent)
    assert_ok(proc)
    out = proc.stdout
    for word in ("mean", "std", "min", "max", "95% CI"):
        assert word in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_tensorboard_events(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained_run))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("rollout/ep_rew_mean", "rollout/ep_len_mean", "rollout/exploration_rate", "train/loss",
                "train/q_values", "train/learning_rate", "time/fps"):
        assert tag in scalars, tag
    assert final_step_ok(acc.Scalars("train/learning_rate")[-1].step, trained_run, 1500)
    assert acc.Scalars("time/fps")[-1].value > 0
    text_tags = [t for t in acc.Tags()["tensors"] if t.startswith("hyperparameters")]
    assert text_tags
    text = acc.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert "learning_starts" in text and "CartPole-v1" in text


def test_resume_and_save_buffer(tmp_path):
    first = run_cli("train", "dqn", "--env", "CartPole-v1", "--total-timesteps", 1000, "--learning-starts", 200,
                    "--log-interval", 250, "--save-buffer", "--log-dir", tmp_path, "--run-name", "res", cwd=tmp_path)
    assert_ok(first)
    run_dir = tmp_path / "res"
    ckpt_1000 = latest_checkpoint(run_dir)
    assert (ckpt_1000 / "buffer.safetensors").is_file()
    state_1000 = json.loads((ckpt_1000 / "state.json").read_text())
    assert final_step_ok(state_1000["step"], run_dir, 1000)
    n_before = len((run_dir / "metrics.jsonl").read_text().splitlines())

    second = run_cli("train", "dqn", "--resume", run_dir, "--total-timesteps", 2000, cwd=tmp_path)
    assert_ok(second)
    ckpt = latest_checkpoint(run_dir)
    state = json.loads((ckpt / "state.json").read_text())
    assert final_step_ok(state["step"], run_dir, 2000)
    assert state["counters"]["num_updates"] > state_1000["counters"]["num_updates"]
    assert (ckpt / "buffer.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    after = records[n_before:]
    assert after, "the resumed run logged nothing"
    assert all(r["global_step"] > state_1000["step"] for r in after)
    assert after[-1]["global_step"] == state["step"]
    assert json.loads((run_dir / "config.json").read_text())["config"]["total_timesteps"] == 2000


def test_train_help_lists_every_flag(tmp_path):
    proc = run_cli("train", "dqn", "--help", cwd=tmp_path)
    assert_ok(proc)
    for field in dataclasses.fields(DQNConfig):
        assert flag_name(field.name) in proc.stdout, field.name
    assert "--resume" in proc.stdout
    assert proc.stdout.count("default") >= len(dataclasses.fields(DQNConfig))


def test_module_entry_point_and_console_script_agree(tmp_path):
    import rlbase

    by_module = run_cli("--version", cwd=tmp_path, command=[sys.executable, "-m", "rlbase"])
    by_script = run_cli("--version", cwd=tmp_path, command=[str(RLBASE_EXE)])
    assert_ok(by_module)
    assert_ok(by_script)
    assert by_module.stdout.strip() == by_script.stdout.strip() == f"rlbase {rlbase.__version__}"


# ---------------------------------------------------------------- bad input

TRAIN_ERRORS = {  # id: (args after `rlbase`, expected text in the message)
    "unknown_env": (["train", "dqn", "--env", "CartPol-v1"], ["CartPol-v1", "CartPole-v1"]),
    "unknown_algo": (["train", "foo", "--env", "CartPole-v1"], ["foo"]),
    "zero_steps": (["train", "dqn", "--env", "CartPole-v1", "--total-timesteps", "0"], ["--total-timesteps"]),
    "negative_steps": (["train", "dqn", "--env", "CartPole-v1", "--total-timesteps", "-5"], ["--total-timesteps"]),
    "eps_out_of_range": (["train", "dqn", "--env", "CartPole-v1", "--exploration-final-eps", "1.5"],
                         ["--exploration-final-eps"]),
    "cnn_on_vectors": (["train", "dqn", "--env", "CartPole-v1", "--backbone", "nature_cnn"], ["nature_cnn"]),
    "unknown_backbone": (["train", "dqn", "--env", "CartPole-v1", "--backbone", "nonsense"], ["nonsense"]),
    "bad_device": (["train", "dqn", "--env", "CartPole-v1", "--device", "tpu"], ["tpu"]),
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_train_usage_errors(tmp_path, case):
    args, expected = TRAIN_ERRORS[case]
    log_dir = tmp_path / "logs"
    proc = run_cli(*args, "--log-dir", log_dir, "--run-name", "bad", cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    for text in expected:
        assert text in line
    # A command that cannot train leaves no run directory behind (a re-run with the same name must work).
    assert not list(tmp_path.rglob("config.json"))


def test_atari_time_limit_is_named_for_atari_and_old_configs_still_load():
    """--max-episode-steps read like the native envs' keyword but set Atari's limit only: it is
    --atari-max-episode-steps; config.json files of older runs (max_episode_steps) still load."""
    from rlbase.config import from_dict

    assert flag_name("atari_max_episode_steps") == "--atari-max-episode-steps"
    assert not hasattr(DQNConfig(), "max_episode_steps")
    from rlbase.config import saved_values
    from rlbase.errors import UsageError

    old = from_dict(DQNConfig, saved_values({"env_id": "ALE/Pong-v5", "max_episode_steps": 500}), "config.json")
    assert old.atari_max_episode_steps == 500
    # Only saved run files are upgraded: a user's --config file or keyword takes today's name.
    with pytest.raises(UsageError, match="unknown option.*max_episode_steps"):
        from_dict(DQNConfig, {"env_id": "ALE/Pong-v5", "max_episode_steps": 500}, "--config x.yaml")


def test_preset_families_are_named_for_what_they_cover():
    from rlbase.config import PRESET_FAMILIES, env_family

    assert [env_family(i) for i in ("ALE/Pong-v5", "rlbase/Driving-v0", "mymod:rlbase/MazeGoTo-v0",
                                    "CartPole-v1", "mymod:Thing-v0")] == \
        ["atari", "rlbase", "rlbase", "gymnasium", "gymnasium"]
    assert set(PRESET_FAMILIES) == {"atari", "rlbase", "gymnasium"}


def test_eval_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("eval", tmp_path / "empty", cwd=tmp_path), 1)


def test_eval_missing_path(tmp_path):
    line = assert_one_line_error(run_cli("eval", tmp_path / "missing", cwd=tmp_path), 1)
    assert "missing" in line


def test_resume_dir_without_config(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("train", "dqn", "--resume", tmp_path / "empty", cwd=tmp_path), 1)


def test_eval_corrupt_model(trained_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    model = latest_checkpoint(run_dir) / "model.safetensors"
    model.write_bytes(os.urandom(64) + b"this is not a safetensors file" * 10)
    line = assert_one_line_error(run_cli("eval", run_dir, "--episodes", 1, cwd=tmp_path), 1)
    assert "safetensors" in line


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_eval_pickled_model(trained_run, tmp_path):
    import torch

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    marker = tmp_path / "UNPICKLED"
    model = latest_checkpoint(run_dir) / "model.safetensors"
    torch.save({"q.head.weight": _Marker(marker)}, model)
    line = assert_one_line_error(run_cli("eval", run_dir, "--episodes", 1, cwd=tmp_path), 1)
    assert "pickle" in line
    assert not marker.exists()
    # The same with a raw pickle stream.
    model.write_bytes(pickle.dumps({"q.head.weight": _Marker(marker)}))
    line = assert_one_line_error(run_cli("eval", model, "--episodes", 1, cwd=tmp_path), 1)
    assert "pickle" in line
    assert not marker.exists()
