"""The run lifecycle through the real `rlbase` console script: evaluation during training and the
best checkpoint, checkpoint cadence, --print-config, --help's presets, the start and done lines,
user envs (module:id, --gym-packages), Gymnasium's Discrete and Tuple observations, and the
progress display on a terminal (tmux) and off one.

Each subprocess pays the torch import (about two seconds), so budgets are tiny and trained runs are
shared by module-scoped fixtures.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from rlbase.agents.ppo import PPOConfig
from rlbase.utils import resolve_device

from tests.test_cli import RLBASE_EXE, assert_ok, assert_one_line_error, rlbase_command

PRESETS = Path(__file__).resolve().parent.parent / "rlbase" / "presets"

# A run with evaluation: rollouts of 64 envs x 16 steps (the rlbase/CartPole-v1 preset) end at
# 1,024, 2,048, ...; evaluations are due at 2,500 and 5,000 and at the end (step 6,144).
EVAL_TOTAL, EVAL_FREQ, EVAL_EPISODES = 6000, 2500, 10


def run_cli(*args, cwd: Path, env_extra: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """The console script as a user runs it (stdout and stderr captured: not a terminal)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), NO_COLOR="1")
    env.update(env_extra or {})
    return subprocess.run([*rlbase_command(), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def read_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def latest_state(run_dir: Path, kind: str = "checkpoints") -> dict:
    name = json.loads((run_dir / kind / "latest.json").read_text())["path"]
    return json.loads((run_dir / kind / name / "state.json").read_text())


def eval_json(run_dir: Path, *args, cwd: Path | None = None) -> dict:
    proc = run_cli("eval", run_dir, "--json", *args, cwd=cwd or run_dir.parent)
    assert_ok(proc)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def rollout_ends(cfg: dict) -> list[int]:
    """The global steps at which a policy-gradient run's iterations end: whole rollouts until the total."""
    batch = cfg["num_envs"] * cfg["num_steps"]
    return [batch * k for k in range(1, -(-cfg["total_timesteps"] // batch) + 1)]


def expected_eval_steps(iteration_ends: list[int], every: int) -> list[int]:
    """Evaluations run at the first iteration at or past each multiple of `every`, and at the end."""
    steps = set()
    for multiple in range(every, iteration_ends[-1] + 1, every):
        steps.add(min(s for s in iteration_ends if s >= multiple))
    steps.add(iteration_ends[-1])
    return sorted(steps)


def event_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


START = re.compile(r"rlbase: training (\w+) on (\S+): backbone (\S+), ([\d,]+) envs? on (\S+), ([\d,]+) steps?(.*)")
DONE = re.compile(r"rlbase: done(?: \(.*\))?: ([\d,]+) (steps?), ([\d,]+) (episodes?), recent mean return (\S+)\. "
                  r"Evaluate with: rlbase eval (\S+)")
STATUS = re.compile(r"rlbase: [\d,]+/[\d,]+ steps \(\d+%\), \S+ steps/s.*, ETA \S+")


def number(text: str) -> int:
    return int(text.replace(",", ""))


# ---------------------------------------------------------------- evaluation during training


@pytest.fixture(scope="module")
def eval_runs(tmp_path_factory) -> dict:
    """The same PPO run on rlbase/CartPole-v1 with and without --eval-freq."""
    log_dir = tmp_path_factory.mktemp("lifecycle_eval")
    common = ("train", "ppo", "--env", "rlbase/CartPole-v1", "--total-timesteps", EVAL_TOTAL, "--log-interval", 1024,
              "--log-dir", log_dir)
    with_eval = run_cli(*common, "--eval-freq", EVAL_FREQ, "--eval-episodes", EVAL_EPISODES, "--run-name", "with",
                        cwd=log_dir)
    assert_ok(with_eval)
    without = run_cli(*common, "--run-name", "without", cwd=log_dir)
    assert_ok(without)
    return {"with": log_dir / "with", "without": log_dir / "without", "with_proc": with_eval,
            "without_proc": without}


def eval_records(run_dir: Path) -> list[dict]:
    return [r for r in read_records(run_dir) if any(k.startswith("eval/") for k in r)]


def test_eval_is_logged_at_each_multiple_and_at_the_end(eval_runs):
    run_dir = eval_runs["with"]
    cfg = read_config(run_dir)["config"]
    assert cfg["eval_freq"] == EVAL_FREQ and cfg["eval_episodes"] == EVAL_EPISODES
    ends = rollout_ends(cfg)
    expected = expected_eval_steps(ends, EVAL_FREQ)
    assert expected[-1] == ends[-1] == latest_state(run_dir)["step"]
    assert len(expected) >= 3 and any(step % EVAL_FREQ for step in expected)  # the schedule is exercised

    records = eval_records(run_dir)
    assert [r["global_step"] for r in records] == expected  # once per due step, none twice at the end
    for r in records:
        assert set(r) == {"global_step", "time", "eval/mean_reward", "eval/mean_ep_length"}, r
        # CartPole pays 1 per step, and an evaluation plays full episodes: the mean return is the mean length.
        assert r["eval/mean_reward"] == pytest.approx(r["eval/mean_ep_length"])
        assert 1 <= r["eval/mean_ep_length"] <= 500

    scalars = event_scalars(run_dir)
    for tag in ("eval/mean_reward", "eval/mean_ep_length"):
        assert [step for step, _ in scalars[tag]] == expected, tag
        logged = [r[tag] for r in records]
        assert [value for _, value in scalars[tag]] == pytest.approx(logged, rel=1e-6), tag
    # An evaluation is not a training speed: time/fps is logged at training points only.
    assert {step for step, _ in scalars["time/fps"]} <= set(ends)


def test_best_checkpoint_is_the_first_maximum_and_eval_best_reproduces_it(eval_runs):
    run_dir = eval_runs["with"]
    records = eval_records(run_dir)
    means = [r["eval/mean_reward"] for r in records]
    best = records[means.index(max(means))]  # the first maximum: a later tie does not replace it
    best_step, best_mean = best["global_step"], best["eval/mean_reward"]

    assert json.loads((run_dir / "best" / "latest.json").read_text())["path"] == f"step_{best_step:010d}"
    assert sorted(p.name for p in (run_dir / "best").iterdir() if p.is_dir()) == [f"step_{best_step:010d}"]
    assert latest_state(run_dir, "best")["step"] == best_step

    # `rlbase eval --best` with the same episodes and seed 0 (and so min(E, 8) envs) replays the
    # in-training evaluation of that checkpoint exactly.
    report = eval_json(run_dir, "--best", "--episodes", EVAL_EPISODES, "--seed", 0)
    assert report["global_step"] == best_step
    assert report["num_episodes"] == EVAL_EPISODES and len(report["episodes"]) == EVAL_EPISODES
    assert report["mean_return"] == pytest.approx(best_mean, rel=1e-9)
    assert report["mean_length"] == pytest.approx(best["eval/mean_ep_length"], rel=1e-9)
    assert Path(report["checkpoint"]).parent.name == "best"


def test_evaluation_does_not_change_the_training_curve(eval_runs):
    def training_records(run_dir: Path) -> list[dict]:
        kept = []
        for record in read_records(run_dir):
            record = {k: v for k, v in record.items() if k != "time" and not k.startswith(("eval/", "time/"))}
            if set(record) != {"global_step"}:
                kept.append(record)
        return kept

    with_eval, without = training_records(eval_runs["with"]), training_records(eval_runs["without"])
    assert len(with_eval) >= 5 and all("train/value_loss" in r for r in with_eval)
    assert with_eval == without
    assert not eval_records(eval_runs["without"])
    assert not (eval_runs["without"] / "best").exists()


def test_done_line_names_the_best_evaluation(eval_runs):
    run_dir = eval_runs["with"]
    records = eval_records(run_dir)
    means = [r["eval/mean_reward"] for r in records]
    best = records[means.index(max(means))]
    lines = stderr_lines(eval_runs["with_proc"])
    assert f"evaluating every {EVAL_FREQ:,} steps" in lines[0]
    best_lines = [line for line in lines if "best evaluation" in line]
    assert len(best_lines) == 1 and best_lines[0] == lines[-1], lines
    assert f"mean return {best['eval/mean_reward']:.2f} at step {best['global_step']:,}" in best_lines[0]
    assert "--best" in best_lines[0]
    assert not any("best" in line for line in stderr_lines(eval_runs["without_proc"]))


def test_eval_best_without_eval_freq_is_a_one_line_error(eval_runs):
    run_dir = eval_runs["without"]
    line = assert_one_line_error(run_cli("eval", run_dir, "--best", cwd=run_dir.parent), 1)
    assert "no best checkpoint" in line and str(run_dir.name) in line


def test_resumed_run_keeps_the_best_checkpoint_of_the_whole_run(tmp_path):
    # The preset trains CartPole to the 500-step cap, so no evaluation after the resume can beat
    # the best before it: best/ must stay where it was.
    first = run_cli("train", "ppo", "--env", "rlbase/CartPole-v1", "--eval-freq", 15_000, "--eval-episodes", 4,
                    "--log-dir", tmp_path, "--run-name", "r", cwd=tmp_path)
    assert_ok(first)
    run_dir = tmp_path / "r"
    end = latest_state(run_dir)["step"]
    before = eval_records(run_dir)
    resumed = run_cli("train", "ppo", "--resume", run_dir, "--total-timesteps", end + 1, cwd=tmp_path)
    assert_ok(resumed)
    records = eval_records(run_dir)
    after = records[len(before):]
    assert after and all(r["global_step"] > end for r in after)
    if max(r["eval/mean_reward"] for r in after) > max(r["eval/mean_reward"] for r in before):
        pytest.skip("this run improved after the resume, so a forgotten best cannot be told apart")
    means = [r["eval/mean_reward"] for r in records]
    best = records[means.index(max(means))]["global_step"]
    assert best <= end
    assert json.loads((run_dir / "best" / "latest.json").read_text())["path"] == f"step_{best:010d}"
    assert f"at step {best:,}" in stderr_lines(resumed)[-1]


def test_eval_freq_on_the_maze_logs_success(tmp_path):
    episodes = 4
    proc = run_cli("train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7", "--num-envs", 8,
                   "--num-steps", 16, "--total-timesteps", 512, "--eval-freq", 256, "--eval-episodes", episodes,
                   "--log-dir", tmp_path, "--run-name", "maze", cwd=tmp_path)
    assert_ok(proc)
    run_dir = tmp_path / "maze"
    expected = expected_eval_steps(rollout_ends(read_config(run_dir)["config"]), 256)
    records = eval_records(run_dir)
    assert [r["global_step"] for r in records] == expected == [256, 512]
    for r in records:
        # success is the mean of `episodes` values in {0, 1}
        assert 0.0 <= r["eval/success"] <= 1.0
        assert (r["eval/success"] * episodes) == pytest.approx(round(r["eval/success"] * episodes))
    scalars = event_scalars(run_dir)
    assert [step for step, _ in scalars["eval/success"]] == expected
    assert [v for _, v in scalars["eval/success"]] == pytest.approx([r["eval/success"] for r in records])


# ---------------------------------------------------------------- checkpoints


RENAME_HOOK = '''
"""Test helper: log every os.rename/os.replace of this process (an audit hook) to a file."""
import os
import sys

_log = os.environ.get("RLBASE_TEST_RENAME_LOG")
if _log:
    def _hook(event, args):
        if event == "os.rename":
            with open(_log, "a") as f:
                f.write(os.fsdecode(args[0]) + "\\t" + os.fsdecode(args[1]) + "\\n")
    sys.addaudithook(_hook)
'''


@pytest.mark.parametrize("algo, args, total, interval", [
    ("dqn", ("--env", "CartPole-v1", "--num-envs", 8, "--learning-starts", 200), 1600, 800),
    ("ppo", ("--env", "rlbase/CartPole-v1", "--eval-freq", 2048, "--eval-episodes", 2), 4096, 2048),
], ids=["dqn", "ppo_with_eval"])
def test_final_checkpoint_is_written_once(tmp_path, algo, args, total, interval):
    """The total is a multiple of --checkpoint-interval: the periodic checkpoint and the final one
    fall on the same step, which must be written once. Every checkpoint folder is moved into place
    by one rename (rlbase.checkpoint), so an audit hook in the subprocess counts the saves."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(RENAME_HOOK)
    rename_log = tmp_path / "renames.tsv"
    proc = run_cli("train", algo, *args, "--total-timesteps", total, "--checkpoint-interval", interval,
                   "--log-dir", tmp_path, "--run-name", "ck", cwd=tmp_path,
                   env_extra={"PYTHONPATH": str(hook_dir), "RLBASE_TEST_RENAME_LOG": str(rename_log)})
    assert_ok(proc)
    run_dir = tmp_path / "ck"
    expected = list(range(interval, total + 1, interval))

    state = latest_state(run_dir)
    assert state["step"] == total
    assert read_records(run_dir)[-1]["global_step"] == total
    folders = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert folders == [f"step_{step:010d}" for step in expected]  # nothing left half-written either
    for step in expected:
        assert json.loads((run_dir / "checkpoints" / f"step_{step:010d}" / "state.json").read_text())["step"] == step

    saves = collections.Counter()
    for line in rename_log.read_text().splitlines():
        _, dst = line.split("\t")
        dst_path = Path(dst)
        if dst_path.parent.name == "checkpoints" and dst_path.name.startswith("step_"):
            saves[int(dst_path.name[len("step_"):])] += 1
    assert dict(saves) == {step: 1 for step in expected}


# ---------------------------------------------------------------- --print-config and --help


def ppo_preset(env_id: str) -> tuple[dict, dict]:
    """(rlbase family block, the env's block) of ppo.yaml for one of rlbase's envs, read here independently."""
    data = yaml.safe_load((PRESETS / "ppo.yaml").read_text())
    return dict(data["families"]["rlbase"]), dict(data["envs"][env_id])


def print_config(tmp_path: Path, *args) -> dict:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(exist_ok=True)
    proc = run_cli("train", "ppo", *args, "--print-config", "--log-dir", log_dir, "--run-name", "pc", cwd=tmp_path)
    assert_ok(proc)
    assert not any(log_dir.iterdir()), "--print-config created a run directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert "rlbase: training" not in proc.stderr
    return json.loads(proc.stdout)


def test_print_config_shows_the_resolved_preset_and_flags(tmp_path):
    printed = print_config(tmp_path, "--env", "rlbase/CartPole-v1", "--seed", 7, "--eval-freq", 999)
    assert printed["algo"] == "ppo" and set(printed) == {"algo", "config"}
    cfg = printed["config"]
    family, env_block = ppo_preset("rlbase/CartPole-v1")
    defaults = PPOConfig()
    # The preset's values, not the dataclass defaults.
    assert (env_block["num_envs"], env_block["total_timesteps"]) != (defaults.num_envs, defaults.total_timesteps)
    for key, value in {**family, **env_block}.items():
        assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["num_envs"] == 64 and cfg["total_timesteps"] == 45_000
    # The flags on top, and the resolved backbone (auto -> mlp for a vector observation).
    assert cfg["seed"] == 7 and cfg["eval_freq"] == 999 and cfg["env_id"] == "rlbase/CartPole-v1"
    assert cfg["backbone"] == "mlp"
    assert cfg["log_dir"] == str(tmp_path / "logs") and cfg["run_name"] == "pc"
    # A flag beats the preset.
    assert print_config(tmp_path, "--env", "rlbase/CartPole-v1", "--num-envs", 3)["config"]["num_envs"] == 3


def test_print_config_backbone_follows_the_maze_observations(tmp_path):
    family, env_block = ppo_preset("rlbase/Maze-v0")
    grid_only = env_block["observations"]["grid"]
    grid = print_config(tmp_path, "--env", "rlbase/Maze-v0")["config"]
    assert grid["backbone"] == grid_only["backbone"] == "mlp"
    assert grid["hidden_sizes"] == list(grid_only["hidden_sizes"]) and grid["activation"] == grid_only["activation"]
    pixels = print_config(tmp_path, "--env", "rlbase/Maze-v0", "--env-kwargs", "obs_mode=pixels")["config"]
    assert pixels["env_kwargs"] == {"obs_mode": "pixels"}
    assert pixels["backbone"] not in ("mlp", "auto")
    # The grid-only values do not leak into a pixel run: the family's MLP settings stay.
    assert pixels["activation"] == family["activation"] != grid_only["activation"]


def test_train_help_names_the_presets(tmp_path):
    for algo in ("ppo", "dqn"):
        proc = run_cli("train", algo, "--help", cwd=tmp_path)
        assert_ok(proc)
        assert "--print-config" in proc.stdout
        _, sep, presets = proc.stdout.partition("\npresets")
        assert sep, f"no presets section in `rlbase train {algo} --help`"
        assert f"presets/{algo}.yaml" in presets
        data = yaml.safe_load((PRESETS / f"{algo}.yaml").read_text())
        for family in data["families"]:
            assert re.search(rf"\b{family}\b", presets), (algo, family)
        for env_id in data["envs"]:  # one line per env id with its own preset
            assert len(re.findall(rf"^\s+{re.escape(env_id)}\s", presets, re.MULTILINE)) == 1, (algo, env_id)
        if algo == "ppo":
            assert all(f in presets for f in ("atari", "rlbase", "gymnasium")) and "rlbase/CartPole-v1" in presets
            maze = [line for line in presets.splitlines() if line.strip().startswith("rlbase/Maze-v0")]
            assert len(maze) == 1 and "mlp" in maze[0] and "grid observations" in maze[0], maze


# ---------------------------------------------------------------- start and done lines


def test_start_and_done_lines(eval_runs):
    run_dir = eval_runs["without"]
    cfg = read_config(run_dir)["config"]
    # Not a terminal: the start and done lines (and a status line only if the run took over 30 s).
    lines = [line for line in stderr_lines(eval_runs["without_proc"]) if not STATUS.fullmatch(line)]
    assert len(lines) == 2, lines
    start = START.fullmatch(lines[0])
    assert start, lines[0]
    algo, env_id, backbone, envs, device, steps, rest = start.groups()
    assert (algo, env_id, backbone) == ("ppo", "rlbase/CartPole-v1", cfg["backbone"])
    assert number(envs) == cfg["num_envs"] and number(steps) == cfg["total_timesteps"] == EVAL_TOTAL
    assert device.split(":")[0] == resolve_device(cfg["device"]).type
    assert rest == f"; run dir {run_dir}"
    done = DONE.fullmatch(lines[1])
    assert done, lines[1]
    assert number(done[1]) == latest_state(run_dir)["step"] == rollout_ends(cfg)[-1]
    assert done[2] == "steps" and done[4] == "episodes" and number(done[3]) > 1
    assert float(done[5]) == pytest.approx(read_records(run_dir)[-1]["rollout/ep_rew_mean"], abs=0.006)
    assert Path(done[6]) == run_dir


def test_singular_step_and_episode(tmp_path):
    one_step = run_cli("train", "dqn", "--env", "CartPole-v1", "--total-timesteps", 1, "--num-envs", 1,
                       "--log-dir", tmp_path, "--run-name", "one", cwd=tmp_path)
    assert_ok(one_step)
    done = DONE.fullmatch(stderr_lines(one_step)[-1])
    assert done and done.group(1, 2, 3, 4) == ("1", "step", "0", "episodes"), one_step.stderr
    for episodes, word in ((1, "episode"), (2, "episodes")):
        proc = run_cli("eval", tmp_path / "one", "--episodes", episodes, cwd=tmp_path)
        assert_ok(proc)
        assert proc.stdout.splitlines()[0].endswith(f": {episodes} {word}"), proc.stdout


def test_start_line_pluralises_one_env_and_one_step(tmp_path):
    proc = run_cli("train", "dqn", "--env", "CartPole-v1", "--total-timesteps", 1, "--num-envs", 1,
                   "--log-dir", tmp_path, "--run-name", "one", cwd=tmp_path)
    assert_ok(proc)
    start = stderr_lines(proc)[0]
    assert ", 1 env on " in start and ", 1 step;" in start, start


# ---------------------------------------------------------------- user envs: module:id and --gym-packages

EPISODE_LENGTH = 6

USER_ENV = f'''
"""A user's env module: registers its env on import. The constructor takes no render_mode."""
import gymnasium as gym
import numpy as np


class Walk(gym.Env):
    """Box(3) observations, two actions, reward = action, every episode lasts {EPISODE_LENGTH} steps."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self):
        return self.np_random.uniform(-1.0, 1.0, 3).astype(np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {{}}

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t >= {EPISODE_LENGTH}, False, {{}}


gym.register("{{env_name}}", entry_point=Walk)
'''


def completed_episodes(num_envs: int, steps: int) -> int:
    """Episodes a fixed-length env finishes in `steps` total steps, stepped evenly over `num_envs`."""
    return num_envs * (steps // num_envs // EPISODE_LENGTH)


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> dict:
    """A working directory holding a user's env module, and a PPO run on `module:MyEnv-v0` there,
    trained for 64 steps and then resumed to 128."""
    cwd = tmp_path_factory.mktemp("user_env")
    module = f"myenvs_{uuid.uuid4().hex[:8]}"
    (cwd / f"{module}.py").write_text(USER_ENV.replace("{env_name}", "MyEnv-v0"))
    env_id = f"{module}:MyEnv-v0"
    first = run_cli("train", "ppo", "--env", env_id, "--num-envs", 2, "--num-steps", 16, "--total-timesteps", 64,
                    "--run-name", "u", cwd=cwd)
    assert_ok(first)
    run_dir = cwd / "runs" / "u"
    first_config = read_config(run_dir)
    first_state = latest_state(run_dir)
    n_first = len(read_records(run_dir))
    resumed = run_cli("train", "ppo", "--resume", "runs/u", "--total-timesteps", 128, cwd=cwd)
    assert_ok(resumed)
    return {"cwd": cwd, "module": module, "env_id": env_id, "run_dir": run_dir, "first": first, "resumed": resumed,
            "first_config": first_config, "first_state": first_state, "n_first": n_first}


def test_user_module_env_trains_evaluates_and_resumes(user_env):
    cwd, run_dir, env_id = user_env["cwd"], user_env["run_dir"], user_env["env_id"]
    assert user_env["first_config"]["config"]["env_id"] == env_id
    assert user_env["first_state"]["step"] == 64
    done = DONE.fullmatch(stderr_lines(user_env["first"])[-1])
    assert done and number(done[1]) == 64 and number(done[3]) == completed_episodes(2, 64)

    assert "from step 64" in stderr_lines(user_env["resumed"])[0]
    assert latest_state(run_dir)["step"] == 128
    after = read_records(run_dir)[user_env["n_first"]:]
    assert after and all(r["global_step"] > 64 for r in after) and after[-1]["global_step"] == 128
    config = read_config(run_dir)["config"]
    assert config["env_id"] == env_id and config["total_timesteps"] == 128

    report = eval_json(Path("runs/u"), "--episodes", 3, cwd=cwd)
    assert report["env_id"] == env_id and report["global_step"] == 128
    for episode in report["episodes"]:  # the user's env: fixed length, reward = action
        assert episode["length"] == EPISODE_LENGTH and 0 <= episode["return"] <= EPISODE_LENGTH


def test_resumed_done_line_counts_all_episodes(user_env):
    done = DONE.fullmatch(stderr_lines(user_env["resumed"])[-1])
    assert done and number(done[1]) == 128
    # 64 steps before (2 envs: 5 episodes each), then fresh episodes for 64 more (5 each again).
    assert number(done[3]) == completed_episodes(2, 64) * 2


def test_one_episode_done_line_on_a_user_env(user_env, tmp_path):
    proc = run_cli("train", "dqn", "--env", user_env["env_id"], "--num-envs", 1, "--total-timesteps", EPISODE_LENGTH,
                   "--log-dir", tmp_path, "--run-name", "one", cwd=user_env["cwd"])
    assert_ok(proc)
    done = DONE.fullmatch(stderr_lines(proc)[-1])
    assert done and done.group(1, 2, 3, 4) == (str(EPISODE_LENGTH), "steps", "1", "episode"), proc.stderr


def test_missing_user_module_is_a_one_line_error(tmp_path):
    module = f"no_such_module_{uuid.uuid4().hex[:8]}"
    line = assert_one_line_error(run_cli("train", "ppo", "--env", f"{module}:MyEnv-v0", "--log-dir", tmp_path / "logs",
                                         cwd=tmp_path), 2)
    assert module in line and "--env" in line
    assert not (tmp_path / "logs").exists() and not (tmp_path / "runs").exists()


def test_gym_packages_registers_the_env(tmp_path):
    package = f"mypkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text(USER_ENV.replace("{env_name}", "PkgWalk-v0"))
    proc = run_cli("train", "ppo", "--env", "PkgWalk-v0", "--gym-packages", package, "--num-envs", 2,
                   "--num-steps", 16, "--total-timesteps", 32, "--run-name", "p", cwd=tmp_path)
    assert_ok(proc)
    config = read_config(tmp_path / "runs" / "p")["config"]
    assert config["gym_packages"] == [package] and config["env_id"] == "PkgWalk-v0"
    report = eval_json(Path("runs/p"), "--episodes", 2, cwd=tmp_path)
    assert report["env_id"] == "PkgWalk-v0"
    assert [e["length"] for e in report["episodes"]] == [EPISODE_LENGTH] * 2
    # Without the package the id is unknown: the flag is what registered it.
    line = assert_one_line_error(run_cli("train", "ppo", "--env", "PkgWalk-v0", "--log-dir", tmp_path / "other",
                                         cwd=tmp_path), 2)
    assert "PkgWalk-v0" in line


# ---------------------------------------------------------------- Gymnasium observation spaces


def test_discrete_observations_train_and_evaluate(tmp_path):
    import gymnasium as gym
    from safetensors.torch import load_file

    n_states = gym.make("FrozenLake-v1").observation_space.n
    proc = run_cli("train", "ppo", "--env", "FrozenLake-v1", "--num-envs", 4, "--num-steps", 32,
                   "--total-timesteps", 256, "--log-dir", tmp_path, "--run-name", "fl", cwd=tmp_path)
    assert_ok(proc)
    run_dir = tmp_path / "fl"
    assert latest_state(run_dir)["step"] == 256
    name = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
    tensors = load_file(str(run_dir / "checkpoints" / name / "model.safetensors"))
    in_widths = {t.shape[1] for k, t in tensors.items() if t.ndim == 2 and not k.startswith(("optim", "rng"))}
    # One-hot observations: the first layers read n_states inputs, not one integer.
    assert n_states in in_widths and 1 not in in_widths, in_widths
    report = eval_json(run_dir, "--episodes", 3)
    assert report["num_episodes"] == 3
    for episode in report["episodes"]:
        assert episode["length"] >= 1 and episode["return"] in (0.0, 1.0)


def test_tuple_observations_are_refused_in_one_line(tmp_path):
    line = assert_one_line_error(run_cli("train", "ppo", "--env", "Blackjack-v1", "--log-dir", tmp_path / "logs",
                                         cwd=tmp_path), 2)
    assert "Blackjack-v1" in line and "Tuple" in line and "FlattenObservation" in line
    assert not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- progress display


def test_no_bar_when_stderr_is_not_a_terminal(eval_runs, tmp_path):
    for proc in (eval_runs["with_proc"], eval_runs["without_proc"]):
        assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
        assert "%|" not in proc.stderr and "█" not in proc.stderr
        for line in stderr_lines(proc):
            assert START.fullmatch(line) or DONE.fullmatch(line) or STATUS.fullmatch(line) \
                or line.startswith("rlbase: best evaluation:"), line
        assert START.fullmatch(stderr_lines(proc)[0]) and DONE.search(proc.stderr)
    # A short evaluation prints no progress either.
    proc = run_cli("eval", eval_runs["without"], "--episodes", 3, cwd=tmp_path)
    assert_ok(proc)
    assert proc.stderr == ""


TMUX_TOTAL = 200_000


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_progress_bar_of_the_real_cli_under_tmux(tmp_path):
    assert RLBASE_EXE.exists(), f"console script {RLBASE_EXE} is not installed"
    # A private tmux server (-L) without user config: the test neither sees nor disturbs the user's.
    tmux = ["tmux", "-L", f"rlbase-lifecycle-{os.getpid()}-{uuid.uuid4().hex[:6]}", "-f", os.devnull]
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    env.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), NO_COLOR="1")
    command = " ".join(map(shlex.quote, [str(RLBASE_EXE), "train", "ppo", "--env", "rlbase/CartPole-v1",
                                          "--total-timesteps", str(TMUX_TOTAL), "--run-name", "x"])) + "; sleep 30"
    bar = re.compile(r"\s*(\d{1,3})%\|[^|]*\| [\d.]+k?/200k steps \[([\d,.]+|\?) steps/s(, return [\d.]+)?, "
                     r"ETA (\S+)\]")

    def capture() -> list[str]:
        # -J joins lines the 100-column pane wrapped (the start line is longer than that).
        proc = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-t", "s"], capture_output=True, env=env,
                              check=True, timeout=30)
        return [line.rstrip() for line in proc.stdout.decode("utf-8", "replace").splitlines() if line.strip()]

    screens: list[list[str]] = []
    subprocess.run([*tmux, "new-session", "-d", "-s", "s", "-x", "100", "-y", "20", "-c", str(tmp_path), command],
                   env=env, check=True, timeout=30)
    socket = None
    try:
        socket = subprocess.run([*tmux, "display-message", "-p", "#{socket_path}"], capture_output=True, text=True,
                                env=env, timeout=30, check=False).stdout.strip()
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            screens.append(capture())
            if any(DONE.fullmatch(line) for line in screens[-1]) \
                    or any("Traceback" in line or "error" in line for line in screens[-1]):
                break
            time.sleep(0.1)
        time.sleep(0.5)
        screens.append(capture())  # after the run: nothing drawn again under the done line
    finally:
        subprocess.run([*tmux, "kill-server"], env=env, capture_output=True, timeout=30, check=False)
        if socket:  # kill-server leaves the socket file behind
            Path(socket).unlink(missing_ok=True)

    final = screens[-1]
    shown = "\n".join(final)
    assert any(DONE.fullmatch(line) for line in final), shown
    for screen in screens:
        text = "\n".join(screen)
        if not screen:
            continue
        assert START.fullmatch(screen[0]), f"the start line is not the first line:\n{text}"
        bar_like = [i for i, line in enumerate(screen) if "steps/s" in line or "%|" in line]
        assert len(bar_like) <= 1, text
        for i in bar_like:
            assert bar.fullmatch(screen[i]) and i > 0, text  # one whole bar, under the start line
        for line in screen:
            assert "\x1b" not in line and "\r" not in line, text
    running = [screen[i] for screen in screens[:-1] for i, line in enumerate(screen)
               if bar.fullmatch(line) and not any(DONE.fullmatch(other) for other in screen)]
    assert running, "the bar was never seen while training"
    assert any(bar.fullmatch(line)[2] != "?" and bar.fullmatch(line)[4] != "?" for line in running), running
    assert any(bar.fullmatch(line)[3] for line in running), "the bar never showed the return"

    assert len(final) == 3, shown
    assert START.fullmatch(final[0]) and f"{TMUX_TOTAL:,} steps" in final[0], shown
    final_bar = bar.fullmatch(final[1])
    assert final_bar and final_bar[1] == "100", shown
    done = DONE.fullmatch(final[2])
    assert done and number(done[1]) >= TMUX_TOTAL, shown
    run_dir = tmp_path / "runs" / "x"
    assert latest_state(run_dir)["step"] == number(done[1])


def test_eval_env_kwargs_override_the_runs_env(tmp_path):
    """`rlbase eval --env-kwargs` plays another variant of the run's env (here: a 5-step time limit)."""
    assert_ok(run_cli("train", "ppo", "--env", "rlbase/Maze-v0", "--env-kwargs", "size=7", "--num-envs", "4",
                      "--num-steps", "8", "--total-timesteps", "64", "--log-dir", tmp_path, "--run-name", "m",
                      cwd=tmp_path))
    proc = run_cli("eval", tmp_path / "m", "--episodes", "4", "--json", "--env-kwargs", "max_episode_steps=5",
                   cwd=tmp_path)
    assert_ok(proc)
    report = json.loads(proc.stdout)
    assert report["env_kwargs"] == {"size": 7, "max_episode_steps": 5}
    assert all(episode["length"] <= 5 for episode in report["episodes"])
    assert (tmp_path / "m" / "eval_step_0000000064_max_episode_steps-5.json").is_file()
    plain = json.loads(run_cli("eval", tmp_path / "m", "--episodes", "4", "--json", cwd=tmp_path).stdout)
    assert "env_kwargs" not in plain and max(e["length"] for e in plain["episodes"]) > 5  # 4 * 7**2 steps otherwise
    assert "--env-kwargs" in assert_one_line_error(run_cli("eval", tmp_path / "m", "--env-kwargs", "oops",
                                                           cwd=tmp_path), 2)
