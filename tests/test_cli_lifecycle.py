"""A training run through the real `rlbase` console script: evaluation during training and the
best checkpoint, the start and done lines, and the progress display on a terminal (tmux) and off
one.

Each command is a process of its own (tests/forkcli.py), so budgets are tiny and the two trained
runs of `eval_runs` (with and without --eval-freq) are shared by every test here that reads them.
The rest of the lifecycle through the CLI: test_cli_checkpoints.py (checkpoint cadence),
test_cli_presets.py (--print-config, --help's presets) and test_cli_envs.py (user envs, Gymnasium's
Discrete and Tuple observations, eval --env-kwargs).
"""

from __future__ import annotations

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

from rlbase.utils import resolve_device

from tests.clihelpers import (DONE, START, STATUS, eval_json, latest_state, number, read_config, read_records,
                              run_cli, stderr_lines)
from tests.test_cli import RLBASE_EXE, assert_ok, assert_one_line_error

# A run with evaluation: rollouts of 64 envs x 16 steps (the rlbase/CartPole-v1 preset) end at
# 1,024, 2,048, ...; evaluations are due at 2,500 and 5,000 and at the end (step 6,144).
EVAL_TOTAL, EVAL_FREQ, EVAL_EPISODES = 6000, 2500, 10


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


TMUX_TOTAL = 100_000


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_progress_bar_of_the_real_cli_under_tmux(tmp_path):
    assert RLBASE_EXE.exists(), f"console script {RLBASE_EXE} is not installed"
    # A private tmux server (-L) without user config: the test neither sees nor disturbs the user's.
    tmux = ["tmux", "-L", f"rlbase-lifecycle-{os.getpid()}-{uuid.uuid4().hex[:6]}", "-f", os.devnull]
    env = {k: v for k, v in os.environ.items() if k != "TMUX"}
    env.update(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), NO_COLOR="1")
    command = " ".join(map(shlex.quote, [str(RLBASE_EXE), "train", "ppo", "--env", "rlbase/CartPole-v1",
                                          "--total-timesteps", str(TMUX_TOTAL), "--run-name", "x"])) + "; sleep 30"
    bar = re.compile(r"\s*(\d{1,3})%\|[^|]*\| [\d.]+k?/" + f"{TMUX_TOTAL // 1000}k"
                     + r" steps \[([\d,.]+|\?) steps/s(, return [\d.]+)?, ETA (\S+)\]")

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
            time.sleep(0.2)
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
