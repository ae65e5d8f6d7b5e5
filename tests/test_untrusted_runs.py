"""Run files are input, not trusted: every file read from a run directory is checked, and a
hand-edited, planted or damaged one ends `rlbase eval` / `rlbase train --resume` with one line
naming the file and what is wrong (exit 1 or 2), never a traceback, and never reads outside the run.

The commands run in-process (`rlbase.cli.main`): the same code as the console script, without
paying the interpreter start for each of the many cases."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rlbase.cli import main

TRAIN = ["train", "dqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", "600", "--num-envs", "4",
         "--hidden-sizes", "16", "--learning-starts", "100", "--buffer-size", "1000", "--checkpoint-interval", "200",
         "--log-interval", "200", "--eval-episodes", "2"]


def cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `rlbase ARGS`."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("runs")
    assert main([*TRAIN, "--log-dir", str(log_dir), "--run-name", "run"]) == 0
    return log_dir / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def newest(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["path"]


def edit_json(file: Path, change) -> None:
    data = json.loads(file.read_text())
    data = change(data)
    file.write_text(json.dumps(data))


def set_config(field: str, value):
    def change(data):
        data["config"][field] = value
        return data
    return change


def one_error_line(code: int, lines: list[str], *fragments: str) -> None:
    assert code in (1, 2), lines
    errors = [line for line in lines if line.startswith("rlbase: error:")]
    assert len(errors) == 1 and not any("Traceback" in line for line in lines), lines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --- config.json and state.json: schema violations, table-driven ------------------------------

CONFIG_CASES = [
    ("env_id", 5, "field env_id must be a string"),
    ("hidden_sizes", "abc", "field hidden_sizes must be a list of integers"),
    ("hidden_sizes", [16, "x"], "field hidden_sizes must be a list of integers"),
    ("eval_episodes", 0, "invalid eval-episodes: must be positive"),
    ("learning_rate", "fast", "field learning_rate must be a number"),
    ("seed", -3, "invalid seed"),
    ("dueling", "yes", "field dueling must be true or false"),
    ("env_kwargs", [1, 2], "field env_kwargs must be an object"),
    ("no_such_field", 1, "unknown option(s) no_such_field"),
    ("backbone_width", -0.5, "invalid backbone-width: must be in (0, 16]"),
    ("backbone_width", "wide", "field backbone_width must be a number"),
]


@pytest.mark.parametrize("field, value, message", CONFIG_CASES)
def test_hand_edited_config_json_is_one_line_on_eval_and_resume(capsys, run, field, value, message):
    edit_json(run / "config.json", set_config(field, value))
    before = (run / "config.json").read_bytes()
    for args in (["eval", run], ["train", "dqn", "--resume", run, "--total-timesteps", "800"]):
        code, lines = cli(capsys, *args)
        one_error_line(code, lines, message)
    assert (run / "config.json").read_bytes() == before, "a failed resume rewrote config.json"


def test_a_config_json_from_before_a_field_existed_takes_its_default(capsys, run):
    """Runs written before backbone_width (or any later field) existed load with the default."""
    edit_json(run / "config.json", lambda data: {**data, "config": {k: v for k, v in data["config"].items()
                                                                     if k != "backbone_width"}})
    code, lines = cli(capsys, "eval", run, "--episodes", "1")
    assert code == 0, lines


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "fields algo and config are required"),
    ('{"algo": "dqn"}', "fields algo and config are required"),
    ('{"algo": 7, "config": {}}', "fields algo and config are required"),
    ("{nope", "is corrupt (not JSON"),
    ('{"algo": "dqn", "config": {"learning_rate": NaN}}', "NaN is not a JSON number"),
])
def test_malformed_config_json(capsys, run, content, message):
    (run / "config.json").write_text(content)
    one_error_line(*cli(capsys, "eval", run), "config.json", message)


@pytest.mark.parametrize("change, message", [
    (lambda s: [s], "not a JSON object"),
    (lambda s: {**s, "step": "many"}, "field step must be a non-negative integer"),
    (lambda s: {**s, "counters": {"global_step": -1}}, "field counters must be an object of non-negative integers"),
    (lambda s: {**s, "optimizer": {"param_groups": 3}}, "field optimizer.param_groups must be a list"),
    (lambda s: {k: v for k, v in s.items() if k != "counters"} | {"counters": {"global_step": 5}},
     "counters.global_step must be equal to step"),
])
def test_malformed_state_json_is_one_line(capsys, run, change, message):
    folder = newest(run)
    state = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps(change(state)))
    one_error_line(*cli(capsys, "eval", folder), "state.json", message)
    # In a run, a damaged checkpoint is not a complete one: the run resumes from the one before.
    code, lines = cli(capsys, "train", "dqn", "--resume", run, "--total-timesteps", "800")
    assert code == 0 and any("rlbase: warning:" in x and "which is incomplete" in x and message in x for x in lines)
    assert "from step 400" in "\n".join(lines)


# --- paths from run files stay inside the run -------------------------------------------------

@pytest.mark.parametrize("name", ["../../..", "/etc", "step_0000000600/../../x", "../run/checkpoints/step_0000000600"])
def test_latest_json_naming_a_path_out_of_the_run_is_refused(capsys, run, name):
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"path": name}))
    one_error_line(*cli(capsys, "eval", run), "latest.json", "refusing")


def test_a_checkpoint_folder_symlinked_out_of_the_run_is_not_read(capsys, run, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(newest(run), outside)
    (outside / "model.safetensors").write_bytes(b"planted")
    step = run / "checkpoints" / "step_0000000800"
    step.symlink_to(outside, target_is_directory=True)
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"path": step.name}))
    one_error_line(*cli(capsys, "eval", run), "refusing")
    (run / "checkpoints" / "latest.json").unlink()  # without the pointer, the symlink is not a checkpoint either
    code, lines = cli(capsys, "eval", run, "--episodes", "1")
    assert code == 0 and any("latest.json is missing; using" in line and "step_0000000600" in line for line in lines)


def test_a_fifo_latest_json_does_not_hang(capsys, run):
    latest = run / "checkpoints" / "latest.json"
    latest.unlink()
    os.mkfifo(latest)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=cli(capsys, "eval", run)), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "rlbase eval hung on a FIFO"
    one_error_line(*result["out"], "latest.json is not a regular file")


def test_latest_json_with_a_wrong_type_falls_back_to_the_newest_complete(capsys, run):
    (run / "checkpoints" / "latest.json").write_text('{"path": 5}')
    code, lines = cli(capsys, "eval", run, "--episodes", "1")
    assert code == 0 and any("rlbase: warning:" in line and "latest.json is unreadable" in line for line in lines)


# --- tensors: shapes, dtypes, values, truncation ----------------------------------------------

def rewrite_model(folder: Path, change) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    save_file(change(tensors), str(folder / "model.safetensors"))
    edit_json(folder / "state.json", lambda s: {**s, "files": {"model.safetensors": (folder / "model.safetensors")
                                                               .stat().st_size}})


def first_weight(tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.startswith("q.") and k.endswith("weight"))


@pytest.mark.parametrize("change, message", [
    (lambda t: {**t, first_weight(t): t[first_weight(t)].double()}, "is torch.float64; the network's is torch.float32"),
    (lambda t: {**t, first_weight(t): t[first_weight(t)][:-1]}, "has shape"),
    (lambda t: {k: v for k, v in t.items() if k != first_weight(t)}, "is missing"),
    (lambda t: {**t, "q.extra.weight": torch.ones(2)}, "is not part of the network"),
    (lambda t: {**t, first_weight(t): torch.full_like(t[first_weight(t)], float("nan"))}, "holds NaN or infinity"),
])
def test_checkpoint_tensors_that_do_not_fit_are_named(capsys, run, change, message):
    rewrite_model(newest(run), change)
    for args in (["eval", run], ["train", "dqn", "--resume", run, "--total-timesteps", "800"]):
        one_error_line(*cli(capsys, *args), message)


def test_a_truncated_model_file_is_reported_as_truncated(capsys, run):
    model = newest(run) / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])
    one_error_line(*cli(capsys, "eval", model), "is truncated")
    code, lines = cli(capsys, "eval", run, "--episodes", "1")  # the run falls back to the previous checkpoint
    assert code == 0 and any("which is incomplete" in line and "truncated" in line for line in lines)


# --- resume: fields that shape the run are refused, config.json is rewritten only after loading ---

@pytest.mark.parametrize("flag, value", [("--buffer-size", "2000"), ("--num-envs", "2"), ("--hidden-sizes", "32"),
                                         ("--activation", "tanh"), ("--seed", "3"), ("--dueling", None)])
def test_resume_refuses_a_field_that_shapes_the_run(capsys, run, flag, value):
    before = (run / "config.json").read_bytes()
    args = ["train", "dqn", "--resume", run, "--total-timesteps", "800", flag] + ([value] if value else [])
    one_error_line(*cli(capsys, *args), f"{flag} cannot change when resuming")
    assert (run / "config.json").read_bytes() == before
    assert cli(capsys, "eval", run, "--episodes", "1")[0] == 0, "the run no longer evaluates"


def test_resume_records_a_schedule_change(capsys, run):
    code, _ = cli(capsys, "train", "dqn", "--resume", run, "--total-timesteps", "800", "--log-interval", "100")
    assert code == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["total_timesteps"] == 800 and saved["config"]["log_interval"] == 100
    assert saved["resumes"] == [{"step": 600, "changed": {"total_timesteps": [600, 800], "log_interval": [200, 100]}}]
    assert json.loads((newest(run) / "state.json").read_text())["step"] == 800


def test_a_failed_resume_leaves_config_json_untouched(capsys, run):
    before = (run / "config.json").read_bytes()
    rewrite_model(newest(run), lambda t: {**t, first_weight(t): t[first_weight(t)][:-1]})
    one_error_line(*cli(capsys, "train", "dqn", "--resume", run, "--total-timesteps", "800"), "has shape")
    assert (run / "config.json").read_bytes() == before


def test_tampered_normalisation_statistics_and_replay_are_named(capsys, tmp_path):
    ppo = ["train", "ppo", "--env", "rlbase/CartPole-v1", "--total-timesteps", "512", "--num-envs", "4", "--num-steps",
           "32", "--hidden-sizes", "16", "--normalize-obs", "--log-dir", tmp_path, "--run-name", "ppo"]
    assert cli(capsys, *ppo)[0] == 0
    run = tmp_path / "ppo"
    folder = newest(run)
    original = (folder / "model.safetensors").read_bytes()
    for change, message in [(lambda t: {**t, "obs_rms.var": -t["obs_rms.var"] - 1}, "obs_rms.var must be >= 0"),
                            (lambda t: {**t, "obs_rms.mean": t["obs_rms.mean"][:2]}, "obs_rms.mean has shape"),
                            (lambda t: {**t, "obs_rms.count": t["obs_rms.count"] * float("nan")}, "finite")]:
        (folder / "model.safetensors").write_bytes(original)
        rewrite_model(folder, change)
        for args in (["eval", run], ["train", "ppo", "--resume", run, "--total-timesteps", "1024"]):
            one_error_line(*cli(capsys, *args), message)

    dqn = [*TRAIN, "--save-buffer", "--log-dir", tmp_path, "--run-name", "dqn"]
    assert cli(capsys, *dqn)[0] == 0
    buffer_file = newest(tmp_path / "dqn") / "buffer.safetensors"
    tensors = load_file(str(buffer_file))
    save_file({**tensors, "rewards": tensors["rewards"].double()}, str(buffer_file))
    edit_json(buffer_file.parent / "state.json", lambda s: {**s, "files": {**s["files"], "buffer.safetensors":
                                                                          buffer_file.stat().st_size}})
    one_error_line(*cli(capsys, "train", "dqn", "--resume", tmp_path / "dqn", "--total-timesteps", "800"),
                   "replay buffer field rewards is torch.float64")
