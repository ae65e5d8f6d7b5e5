"""Callbacks: the hooks' order and counts, CheckpointEvery, StopOnReturn on evaluations, and the forms
`learn(callback=...)` accepts. Runs in memory or in tmp_path, on the batched CartPole (fast)."""

from __future__ import annotations

import json

import pytest

from rlbase.callbacks import (Callback, CheckpointEvery, EvalCallback, EveryNSteps, StopOnReturn, as_callbacks)
from rlbase.lifecycle import train

# 16 envs x 16 steps: one iteration (rollout + update) is 256 steps.
TINY = {"env_id": "rlbase/CartPole-v1", "num_envs": 16, "num_steps": 16, "update_epochs": 1, "num_minibatches": 1,
        "log_interval": 512}


class Recorder(Callback):
    """Records every hook with the run's step."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def on_start(self, run):
        self.calls.append(("start", run.global_step))

    def on_step(self, run):
        self.calls.append(("step", run.global_step))

    def on_eval(self, run, report):
        self.calls.append(("eval", run.global_step))

    def on_end(self, run):
        self.calls.append(("end", run.global_step))

    def close(self):
        self.calls.append(("close", -1))


def test_hooks_run_in_order_once_per_iteration():
    recorder = Recorder()
    metrics = train("ppo", {**TINY, "total_timesteps": 1024, "eval_freq": 512, "eval_episodes": 2},
                    run_dir=None, callbacks=recorder)
    kinds = [kind for kind, _ in recorder.calls]
    assert kinds[0] == "start" and kinds[-2:] == ["end", "close"]
    assert [step for kind, step in recorder.calls if kind == "step"] == [256, 512, 768, 1024]
    # --eval-freq's evaluations reach every callback's on_eval, at 512 and at the end.
    assert [step for kind, step in recorder.calls if kind == "eval"] == [512, 1024]
    assert metrics["global_step"] == 1024 and metrics["stop_reason"] is None


def test_checkpoint_every_saves_at_its_cadence(tmp_path):
    run_dir = tmp_path / "run"
    train("ppo", {**TINY, "total_timesteps": 2048, "checkpoint_interval": 0}, run_dir=run_dir,
          callbacks=CheckpointEvery(768))
    saved = sorted(int(p.name[len("step_"):]) for p in (run_dir / "checkpoints").glob("step_*"))
    # 768 -> first iteration at or past it (768), 1536, then the final 2048 by the run; the newest three kept.
    assert saved == [768, 1536, 2048]
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"] == "step_0000002048"


def test_stop_on_return_reacts_to_evaluations_only():
    metrics = train("ppo", {**TINY, "total_timesteps": 4096, "eval_freq": 1024, "eval_episodes": 2},
                    run_dir=None, callbacks=StopOnReturn(1.0))  # any evaluation reaches a return of 1
    assert metrics["global_step"] == 1024
    assert metrics["stop_reason"] == "stopped by StopOnReturn at step 1024"
    assert [e["step"] for e in metrics["evaluations"]] == [1024]
    # Without evaluations it never fires (source="eval" reads evaluation reports only).
    assert train("ppo", {**TINY, "total_timesteps": 1024}, run_dir=None,
                 callbacks=StopOnReturn(1.0))["stop_reason"] is None


def test_eval_callback_handed_to_learn_without_eval_freq():
    evaluation = EvalCallback(every=512, episodes=3, keep_best=False)
    metrics = train("ppo", {**TINY, "total_timesteps": 1024}, run_dir=None, callbacks=[evaluation])
    assert [row["step"] for row in evaluation.history] == [512, 1024]
    assert all(row["mean_return"] > 0 and row["seconds"] >= 0 for row in evaluation.history)
    assert evaluation.env is None  # its own envs were closed with the run
    assert "evaluations" not in metrics  # only --eval-freq's evaluation is reported in the metrics


def test_as_callbacks_accepts_the_documented_forms():
    recorder = Recorder()

    def fn(run):
        return None

    assert as_callbacks(None) == []
    assert as_callbacks(recorder) == [recorder]
    wrapped = as_callbacks([fn, [recorder]])
    assert len(wrapped) == 2 and wrapped[1] is recorder and wrapped[0].name.endswith("fn")
    with pytest.raises(TypeError, match="callback"):
        as_callbacks(42)


@pytest.mark.parametrize("every", [0, -5, 2.5])
def test_every_n_steps_needs_a_positive_integer(every):
    with pytest.raises(ValueError, match="every"):
        EveryNSteps(every)
