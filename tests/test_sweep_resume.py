"""Resuming `rlbase sweep`: after the driver is killed, after Ctrl-C, against runs whose config.json
holds their settings in canonical form, and refusing hand-edited sweep files in one line."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_cli import assert_ok, assert_one_line_error, rlbase_command, run_cli
from tests.test_sweep import TINY, metrics, run_without_ray, trials


def test_resume_matches_runs_that_wrote_their_backbone_settings_per_key(tmp_path):
    """A run on dict observations writes --backbone-weights DIR as "mission=DIR" and a backbone name as
    one per key in its config.json; a resume still matches those runs to their trials."""
    from rlbase.pretrain import PretrainConfig, pretrain

    text = tmp_path / "text"
    pretrain(PretrainConfig(task="goto-text", train_samples=256, val_samples=64, epochs=1, out=str(text),
                            device="cpu"), progress=False)
    (tmp_path / "arms.yaml").write_text(f"cases:\n  frozen: {{backbone_weights: {text}, freeze_backbone: true}}\n"
                                        "  named: {backbone: mission=text}\n")
    proc = run_cli("sweep", "ppo", "--env", "rlbase/MazeGoTo-v0", "--num-envs", "4", "--num-steps", "16",
                   "--update-epochs", "1", "--num-minibatches", "1", "--total-timesteps", "128", "--space", "arms.yaml",
                   "--log-dir", tmp_path, "--name", "arms", cwd=tmp_path, timeout=600)
    assert_ok(proc)
    saved = {e["case"]: json.loads((Path(e["run_dir"]) / "config.json").read_text())["config"]
             for e in trials(tmp_path / "arms").values()}
    assert saved["frozen"]["backbone_weights"] == f"mission={text}"
    assert saved["named"]["backbone"] != "mission=text" and "mission=text" in saved["named"]["backbone"]
    assert_ok(run_without_ray(tmp_path, "sweep", "--resume", tmp_path / "arms"))  # nothing left to do: no Ray


@pytest.mark.parametrize("field,saved,wanted,same", [
    ("backbone_weights", "mission=/a", "/a", True),
    ("backbone_weights", "mission=/a", "/b", False),
    ("backbone_weights", "image=/a,mission=/a", "/a", False),  # one DIR goes to one key
    ("backbone_weights", "mission=/a", "mission=/a", True),
    ("backbone_weights", "image=/b,mission=/a", "mission=/a", False),
    ("backbone", "image=film_cnn,mission=text", "text", True),
    ("backbone", "image=film_cnn,mission=text", "mission=text", True),
    ("backbone", "image=film_cnn,mission=text", "mission=mlp", False),
    ("backbone", "image=film_cnn,mission=text", "resnet", False),
    ("backbone", "nature_cnn", "impala_cnn", False),
    ("learning_rate", 0.001, 0.001, True),
    ("learning_rate", 0.001, 0.002, False),
    ("env_kwargs", {"a": 1, "b": 2}, {"b": 2, "a": 1}, True),
    ("freeze_backbone", "mission=x", "x", False),  # only the per-key fields are read per key
])
def test_same_setting(field, saved, wanted, same):
    from rlbase.sweep_runs import same_setting

    assert same_setting(field, saved, wanted) is same


def test_resume_after_the_driver_is_killed(tmp_path):
    """kill -9 of the driver once two trials finished and the others have a checkpoint; --resume keeps
    the finished ones (untouched) and continues the others from their own checkpoints."""
    cmd = [*rlbase_command(), "sweep", "ppo", *TINY, "--total-timesteps", "24576", "--checkpoint-interval", "4096",
           "--seeds", "0-3", "--log-dir", str(tmp_path), "--name", "k"]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep_dir = tmp_path / "k"
    killed_at = None
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.05)
            try:
                table = trials(sweep_dir)
            except (OSError, ValueError):
                continue
            done = [k for k, e in table.items() if e.get("status") == "TERMINATED"]
            running = [k for k, e in table.items() if e.get("status") == "RUNNING"
                       and (sweep_dir / "runs" / k / "checkpoints" / "latest.json").is_file()]
            if done and running:
                killed_at = {"done": done, "running": running}
                os.killpg(driver.pid, signal.SIGKILL)
                break
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    if killed_at is None:
        pytest.skip("the sweep finished before the driver could be killed mid-way (machine too fast or too slow)")
    time.sleep(2)  # Ray's own processes notice their driver is gone
    finished_files = {k: (sweep_dir / "runs" / k / "metrics.jsonl").stat().st_mtime for k in killed_at["done"]}
    resumed_from = {k: json.loads((sweep_dir / "runs" / k / "checkpoints" / "latest.json").read_text())["path"]
                    for k in killed_at["running"]}
    proc = run_cli("sweep", "--resume", sweep_dir, cwd=tmp_path, timeout=600)
    assert_ok(proc)
    table = trials(sweep_dir)
    assert {e["status"] for e in table.values()} == {"TERMINATED"} and len(table) == 4
    for key, mtime in finished_files.items():  # not redone
        assert (sweep_dir / "runs" / key / "metrics.jsonl").stat().st_mtime == mtime
    for key, checkpoint in resumed_from.items():  # continued from its checkpoint, to the end
        step = int(checkpoint[len("step_"):])
        records = metrics(sweep_dir / "runs" / key)
        assert records[-1]["global_step"] == 24576 and table[key]["steps"] == 24576
        # (a trial can finish its run in the moment before the kill, before Tune records it: not redone)
        assert any(r["global_step"] > step for r in records) or step == 24576
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    assert len(rows) == 4


def test_ctrl_c_stops_the_sweep_and_says_how_to_resume(tmp_path):
    """Ctrl-C (SIGINT to the command's process group, as a terminal sends it) once a trial has a
    checkpoint: Tune stops the trials and saves its state; rlbase says how far the sweep got and how to
    resume it (not Tune's Tuner.restore), exits 130, and --resume finishes the sweep."""
    cmd = [*rlbase_command(), "sweep", "ppo", *TINY, "--total-timesteps", "24576", "--checkpoint-interval", "4096",
           "--seeds", "0-1", "--log-dir", str(tmp_path), "--name", "c"]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    sweep_dir = tmp_path / "c"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.05)
            if any((sweep_dir / "runs" / f"t000{i}" / "checkpoints" / "latest.json").is_file() for i in range(2)):
                os.killpg(driver.pid, signal.SIGINT)
                break
        out, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    if "sweep done" in err:
        pytest.skip("the sweep finished before Ctrl-C (machine too fast or too slow)")
    assert driver.returncode == 130, err
    assert "Traceback" not in err and "Tuner.restore" not in err and "Failed to fetch" not in err, err
    assert "rlbase: interrupted: stopping the trials" in err
    assert f"of 2 trials finished; results so far in {sweep_dir}/results.csv" in err
    assert err.rstrip().endswith(f"resume with: rlbase sweep --resume {sweep_dir}")
    proc = run_cli("sweep", "--resume", sweep_dir, cwd=tmp_path, timeout=600)
    assert_ok(proc)
    assert "2 trials finished of 2" in proc.stderr
    table = trials(sweep_dir)
    assert {e["status"] for e in table.values()} == {"TERMINATED"} and {e["steps"] for e in table.values()} == {24576}


@pytest.mark.parametrize("sweep_json,trials_json,code,fragment", [
    (None, None, 2, "not a sweep directory"),
    ("{not json", None, 1, "sweep.json is corrupt"),
    ('{"algo": "ppo", "base": {}, "space": {}, "seeds": ["0"]}', None, 1, "sweep.json is corrupt"),
    ('{"algo": "ppo", "base": {}, "space": {}, "seeds": [0], "search": "bogus"}', None, 1, "sweep.json is corrupt"),
    ('{"algo": "ppo", "base": {}, "space": {}, "seeds": [0], "evil": 1}', None, 1, "sweep.json is corrupt"),
    ('{"algo": "ppo", "base": {"env_id": "rlbase/CartPole-v1"}, "space": {}, "seeds": [0]}', "[1, 2]", 1,
     "trials.json is corrupt"),
])
def test_hand_edited_sweep_files_are_one_line_errors(tmp_path, sweep_json, trials_json, code, fragment):
    """A sweep directory is input, not trust: what --resume reads back is checked first."""
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    if sweep_json is not None:
        (sweep_dir / "sweep.json").write_text(sweep_json)
    if trials_json is not None:
        (sweep_dir / "trials.json").write_text(trials_json)
    assert fragment in assert_one_line_error(run_cli("sweep", "--resume", sweep_dir, cwd=tmp_path), code)
