"""Stage timings in the logs (--time-stages): each stage's share of the loop's wall time as time/<stage>
at every log point, on by default on CPU, off on CUDA; timing never changes what is trained."""

from __future__ import annotations

import json

import pytest
import torch

from rlbase.lifecycle import train
from rlbase.run import NO_TIMER, StageTimer, stage_timer
from tests.test_cli import assert_one_line_error, run_cli

STAGES = {"time/act", "time/learn", "time/env", "time/store"}  # DQN's and the PG loop's


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stage_values(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if k.startswith("time/") and k != "time/fps"}


def assert_shares(record: dict) -> None:
    shares = stage_values(record)
    # time/log (Run.advance's bookkeeping) is marked after the first log point's values are taken.
    assert STAGES <= set(shares) <= STAGES | {"time/log"}, record
    assert all(0.0 <= v <= 1.0 for v in shares.values()), shares
    assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)


def dqn_run(tmp_path, name: str, time_stages: str):
    values = {"env_id": "CartPole-v1", "total_timesteps": 1600, "learning_starts": 400, "log_interval": 400,
              "num_envs": 4, "time_stages": time_stages, "log_dir": str(tmp_path), "run_name": name}
    return train("dqn", values), tmp_path / name


def test_dqn_logs_stage_shares_and_timing_does_not_change_training(tmp_path):
    timed, timed_dir = dqn_run(tmp_path, "on", "on")
    untimed, untimed_dir = dqn_run(tmp_path, "off", "off")
    logged = records(timed_dir)
    assert [r["global_step"] for r in logged] == [400, 800, 1200, 1600]
    assert all("time/log" in r for r in logged[1:])
    for record in logged:
        assert_shares(record)
    # The updates run from step 400 on: from then on learning takes a share of the time.
    assert logged[-1]["time/learn"] > 0
    assert all(not stage_values(r) for r in records(untimed_dir))
    # Same seed, same config but the flag: bit-identical training.
    assert timed["num_updates"] == untimed["num_updates"] > 0
    weights, other = timed["q_network"].state_dict(), untimed["q_network"].state_dict()
    assert all(torch.equal(weights[k], other[k]) for k in weights)
    assert [r.get("train/loss") for r in logged] == [r.get("train/loss") for r in records(untimed_dir)]


def test_ppo_logs_stage_shares_by_default_on_cpu(tmp_path):
    values = {"env_id": "CartPole-v1", "total_timesteps": 1024, "num_envs": 4, "num_steps": 128, "log_interval": 512,
              "device": "cpu", "log_dir": str(tmp_path), "run_name": "ppo"}  # the CPU default, also where CUDA is
    train("ppo", values)
    logged = records(tmp_path / "ppo")
    assert len(logged) == 2 and "time/log" in logged[1]
    for record in logged:
        assert_shares(record)


def test_stage_timer_setting():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object only: no GPU needed
    assert isinstance(stage_timer("auto", cpu), StageTimer)
    assert stage_timer("auto", cuda) is NO_TIMER  # a truthful split would synchronise the GPU at every mark
    assert isinstance(stage_timer("on", cuda), StageTimer)
    assert stage_timer("off", cpu) is NO_TIMER


def test_stage_shares_are_per_interval():
    timer = StageTimer(torch.device("cpu"))
    timer.seconds.update({"act": 1.0, "learn": 3.0})
    assert timer.stage_shares() == {"time/act": 0.25, "time/learn": 0.75}
    timer.seconds.update({"act": 3.0, "learn": 3.0, "env": 2.0})  # since then: act 2 s, env 2 s
    assert timer.stage_shares() == {"time/act": 0.5, "time/learn": 0.0, "time/env": 0.5}
    assert timer.stage_shares() == {}  # nothing timed since
    assert NO_TIMER.stage_shares() == {}


def test_bad_time_stages_value(tmp_path):
    proc = run_cli("train", "dqn", "--env", "CartPole-v1", "--time-stages", "sometimes", "--log-dir", tmp_path,
                   cwd=tmp_path)
    line = assert_one_line_error(proc, 2)
    assert "--time-stages" in line and "sometimes" in line
