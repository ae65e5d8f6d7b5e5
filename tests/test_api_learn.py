"""The Python API (rlbase.api): `learn()` called again continues the same run (on disk, or in
memory writing nothing), and callbacks stop training (a function returning False, StopOnReturn,
EvalCallback keeping the best checkpoint).

Budgets are tiny (a PPO rollout of rlbase/CartPole-v1 is 64 envs x 16 steps) and every agent runs
on the CPU (see test_api_round_trip.py).
"""

from __future__ import annotations

import json

import pytest

from rlbase import DQN, PPO
from rlbase.callbacks import EvalCallback, StopOnReturn
from rlbase.evaluate import evaluate as rlbase_eval

from tests.apihelpers import CARTPOLE, CPU, ROLLOUT, cartpole_observations, checkpoint_steps, metrics_steps


# --------------------------------------------------------------------------------------------
# learn() twice continues the run
# --------------------------------------------------------------------------------------------
def test_learn_twice_continues_the_same_run_directory(tmp_path):
    agent = PPO(CARTPOLE, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=ROLLOUT,
                log_interval=ROLLOUT // 2)
    try:
        agent.learn()
        run_dir = agent.run_dir
        assert run_dir is not None and run_dir.parent == tmp_path and agent.num_timesteps == ROLLOUT
        first = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert metrics_steps(run_dir)[-1] == ROLLOUT

        agent.learn(2 * ROLLOUT)
        assert agent.run_dir == run_dir
        assert agent.num_timesteps == 3 * ROLLOUT
        assert [p for p in tmp_path.iterdir() if p.is_dir()] == [run_dir]  # no second run directory
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        assert len(lines) > len(first) and lines[:len(first)] == first
        steps = metrics_steps(run_dir)
        assert steps == sorted(steps) and steps[-1] == 3 * ROLLOUT and 2 * ROLLOUT in steps
        assert {ROLLOUT, 3 * ROLLOUT} <= set(checkpoint_steps(run_dir))
        latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
        assert latest == f"step_{3 * ROLLOUT:010d}"
        assert json.loads((run_dir / "config.json").read_text())["algo"] == "ppo"
    finally:
        agent.close()


@pytest.mark.parametrize("cls,steps", [(PPO, ROLLOUT), (DQN, 800)])
def test_in_memory_learn_twice_adds_up_and_writes_nothing(cls, steps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    agent = cls(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=steps)
    try:
        agent.learn()
        first = agent.predict(cartpole_observations())[0]
        agent.learn(steps)
        assert agent.num_timesteps == 2 * steps
        assert agent.run_dir is None and agent.last_metrics["global_step"] == 2 * steps
        assert list(tmp_path.iterdir()) == []
        assert agent.predict(cartpole_observations())[0].shape == first.shape
    finally:
        agent.close()


# --------------------------------------------------------------------------------------------
# Callbacks stop training
# --------------------------------------------------------------------------------------------
def test_function_callback_returning_false_stops_and_checkpoints(tmp_path):
    seen: list[int] = []

    def stop_after_three(run) -> bool:
        seen.append(run.global_step)
        return len(seen) < 3

    agent = PPO(CARTPOLE, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=8 * ROLLOUT)
    try:
        agent.learn(callback=stop_after_three)
        assert seen == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]  # after every iteration, never after the stop
        assert agent.num_timesteps == 3 * ROLLOUT < 8 * ROLLOUT
        reason = agent.last_metrics["stop_reason"]
        assert reason and f"step {3 * ROLLOUT}" in reason
        assert checkpoint_steps(agent.run_dir)[-1] == 3 * ROLLOUT  # checkpointed where it stopped
        assert metrics_steps(agent.run_dir)[-1] == 3 * ROLLOUT  # and logged there
    finally:
        agent.close()


def test_stop_reason_names_the_function(tmp_path):
    def stop_right_away(run) -> bool:
        return False

    agent = PPO(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=4 * ROLLOUT)
    try:
        agent.learn(callback=stop_right_away)
        assert "stop_right_away" in agent.last_metrics["stop_reason"]
    finally:
        agent.close()


def test_no_stop_runs_the_whole_budget_with_a_list_of_callbacks():
    calls = [0, 0]

    def count(i):
        def fn(run):
            calls[i] += 1
        return fn

    agent = PPO(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=2 * ROLLOUT)
    try:
        agent.learn(callback=[count(0), StopOnReturn(1e9, source="train"), count(1)])
        assert agent.num_timesteps == 2 * ROLLOUT
        assert agent.last_metrics["stop_reason"] is None
        assert calls == [2, 2]
    finally:
        agent.close()


def test_stop_on_training_return_stops_at_the_first_logged_point_past_the_threshold():
    threshold, budget = 30.0, 24 * ROLLOUT
    logged: list[tuple[int, float | None]] = []
    agent = PPO(CARTPOLE, verbose=0, log_dir=None, device="cpu", total_timesteps=budget, log_interval=ROLLOUT)
    try:
        def record(run) -> None:
            logged.append((run.global_step, run.last_scalars.get("rollout/ep_rew_mean")))

        agent.learn(callback=[StopOnReturn(threshold, source="train"), record])
        assert agent.num_timesteps < budget
        assert "StopOnReturn" in agent.last_metrics["stop_reason"]
        first_past = next(step for step, value in logged if value is not None and value >= threshold)
        assert agent.num_timesteps == first_past
        assert logged[0][1] is not None and logged[0][1] < threshold  # it did not stop at the start
        assert agent.last_metrics["ep_rew_mean"] >= threshold
    finally:
        agent.close()


def test_stop_on_return_rejects_an_unknown_source():
    with pytest.raises(ValueError, match="source"):
        StopOnReturn(10, source="test")


def test_eval_callback_logs_eval_reward_and_keeps_best(tmp_path):
    evaluation = EvalCallback(every=ROLLOUT, episodes=4)
    agent = PPO(CARTPOLE, seed=1, verbose=0, log_dir=str(tmp_path), device="cpu", total_timesteps=3 * ROLLOUT)
    try:
        agent.learn(callback=evaluation)
        run_dir = agent.run_dir
        assert [row["step"] for row in evaluation.history] == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        logged = [(row["global_step"], row["eval/mean_reward"]) for row in rows if "eval/mean_reward" in row]
        assert logged == [(row["step"], row["mean_return"]) for row in evaluation.history]
        assert all("eval/mean_ep_length" in row for row in rows if "eval/mean_reward" in row)

        best = max(evaluation.history, key=lambda row: row["mean_return"])
        assert evaluation.best_mean == best["mean_return"]
        assert checkpoint_steps(run_dir, "best") == [evaluation.best_step]
        # `rlbase eval RUN --best` plays that checkpoint, with the callback's episodes and seed.
        report = rlbase_eval(run_dir, best=True, episodes=4, seed=0, device=CPU)
        assert report["global_step"] == evaluation.best_step
        assert report["mean_return"] == evaluation.best_mean
    finally:
        agent.close()
