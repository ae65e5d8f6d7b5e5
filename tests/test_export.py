"""`rlbase export --format onnx` and `rlbase eval model.onnx`: parity of the ONNX graph with the torch
acting path (Discrete from DQN and PPO, Box with frozen observation normalisation and with squashed
actions, Dict observations), checked here independently of the command's own check, on other
observations and batch sizes; the file's metadata; eval through onnxruntime playing the same
episodes as `rlbase eval RUN`; bad inputs as one line.

The teachers are tiny and briefly trained (parity does not need a good policy), each once per module.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnxruntime as ort

from rlbase import export
from rlbase.cli import main
from rlbase.config import make_env
from rlbase.evaluate import load_trained
from rlbase.safefiles import is_pickle

CPU = torch.device("cpu")
SMALL = ["--num-envs", "8", "--num-steps", "32", "--hidden-sizes", "32,32", "--device", "cpu"]
TEACHERS = {
    "dqn-cartpole": ["dqn", "--env", "rlbase/CartPole-v1", "--total-timesteps", "1500", "--learning-starts", "500",
                     "--num-envs", "4", "--hidden-sizes", "32,32", "--device", "cpu"],
    "ppo-cartpole": ["ppo", "--env", "rlbase/CartPole-v1", "--total-timesteps", "2048", *SMALL],
    "ppo-pendulum-normalized": ["ppo", "--env", "rlbase/Pendulum-v1", "--normalize-obs", "--total-timesteps", "1024",
                                *SMALL],
    "ppo-pendulum-squashed": ["ppo", "--env", "rlbase/Pendulum-v1", "--action-bounds", "squash",
                              "--total-timesteps", "1024", *SMALL],
    "ppo-mazegoto": ["ppo", "--env", "rlbase/MazeGoTo-v0", "--env-kwargs", "size=7", "--backbone", "mlp",
                     "--total-timesteps", "512", *SMALL],
}
KINDS = {"dqn-cartpole": "q", "ppo-cartpole": "categorical", "ppo-pendulum-normalized": "gaussian",
         "ppo-pendulum-squashed": "gaussian", "ppo-mazegoto": "categorical"}


def one_line_error(capsys, argv: list[str], code: int | None = 1) -> str:
    """The one `rlbase: error:` line of a failing command (exit `code`, or any non-zero with None)."""
    rc = main(argv)
    assert rc == code if code is not None else rc != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlbase: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (run dir, export folder) of each teacher, exported with the command's defaults
    (1,000 parity samples) and 2 evaluation episodes."""
    root = tmp_path_factory.mktemp("export")
    done = {}
    for name, argv in TEACHERS.items():
        assert main(["train", *argv, "--log-dir", str(root), "--run-name", name]) == 0
        out = root / f"{name}.onnx-out"
        assert main(["export", str(root / name), "--out", str(out), "--episodes", "2"]) == 0
        done[name] = (root / name, out)
    return done


@pytest.mark.parametrize("name", list(TEACHERS))
def test_onnx_matches_the_torch_acting_path(exported, name):
    run_dir, out = exported[name]
    report = json.loads((out / "report.json").read_text())
    parity = report["parity"]
    assert parity["passed"] and parity["samples"] == 1000 and parity["max_abs_diff_outputs"] < 1e-4
    if KINDS[name] == "gaussian":
        assert parity["max_abs_diff_actions"] < 1e-4 and "identical_actions" not in parity
    else:
        assert parity["identical_actions"] == 1.0 and parity["max_abs_diff_actions"] == 0
    assert report["eval"]["onnx"]["mean_return"] == pytest.approx(report["eval"]["torch"]["mean_return"], rel=1e-4)
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json"]
    model = (out / "model.onnx").read_bytes()
    assert not is_pickle(model[:16]) and report["bytes"] == len(model)

    # Independently of the command's check: other observations (another seed), batches of 1 and 37.
    trained = load_trained(run_dir, CPU)
    env = make_env(trained.config, 37, CPU, training=False)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    try:
        net = trained.agent.acting_net(trained.config, trained.tensors, env.single_observation_space,
                                       env.single_action_space, CPU)
        names = [i.name for i in session.get_inputs()]
        assert all(i.shape[0] == "batch" for i in session.get_inputs())  # the batch dimension is dynamic
        obs, _ = env.reset(seed=123)
        for _ in range(5):
            with torch.no_grad():
                outputs, actions = net(obs)
            feeds = [{n: (obs[n] if isinstance(obs, dict) else obs)[rows].numpy() for n in names}
                     for rows in (slice(None), slice(3, 4))]
            for feed, rows in zip(feeds, (slice(None), slice(3, 4))):
                ort_outputs, ort_actions = session.run(["outputs", "actions"], feed)
                np.testing.assert_allclose(ort_outputs, outputs[rows].numpy(), atol=1e-5, rtol=1e-5)
                if KINDS[name] == "gaussian":
                    np.testing.assert_allclose(ort_actions, actions[rows].numpy(), atol=1e-5)
                else:
                    np.testing.assert_array_equal(ort_actions, actions[rows].numpy())
            obs, *_ = env.step(actions)
    finally:
        env.close()


def test_metadata_describes_the_policy(exported):
    _, out = exported["ppo-mazegoto"]
    assert json.loads((out / "report.json").read_text())["eval"]["onnx"]["policy"] == "stochastic"
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert [i.name for i in session.get_inputs()] == ["image", "mission"] == json.loads(meta["inputs"])
    assert [i.type for i in session.get_inputs()] == ["tensor(uint8)", "tensor(int64)"]
    assert meta["algo"] == "ppo" and meta["env_id"] == "rlbase/MazeGoTo-v0" and meta["kind"] == "categorical"
    assert json.loads(meta["env_kwargs"]) == {"size": 7} and json.loads(meta["config"])["env_kwargs"] == {"size": 7}
    space = json.loads(meta["observation_space"])
    assert space["type"] == "Dict" and space["spaces"]["image"]["dtype"] == "uint8"
    assert json.loads(meta["action_space"])["type"] == "Discrete"

    def described(name: str) -> dict:
        return json.loads(ort.InferenceSession(str(exported[name][1] / "model.onnx"), providers=[
            "CPUExecutionProvider"]).get_modelmeta().custom_metadata_map["preprocessing"])

    assert "frozen normalisation" in described("ppo-pendulum-normalized")["inputs"]["obs"]
    assert "clipped" in described("ppo-pendulum-normalized")["actions"]
    assert "tanh" in described("ppo-pendulum-squashed")["actions"]
    assert "normalisation" not in described("ppo-pendulum-squashed")["inputs"]["obs"]


@pytest.mark.parametrize("name, extra", [("ppo-cartpole", []), ("dqn-cartpole", []),
                                         ("dqn-cartpole", ["--epsilon", "0.3"]), ("ppo-pendulum-squashed", []),
                                         ("ppo-pendulum-normalized", ["--no-deterministic"]),
                                         ("ppo-mazegoto", []),  # its preset evaluates stochastically
                                         ("ppo-mazegoto", ["--deterministic"])])
def test_eval_onnx_plays_the_same_episodes_as_eval_run(exported, capsys, name, extra):
    run_dir, out = exported[name]
    flags = ["--episodes", "3", "--seed", "5", "--num-envs", "2", "--json", *extra]
    assert main(["eval", str(run_dir), *flags]) == 0
    from_run = json.loads(capsys.readouterr().out)
    assert main(["eval", str(out / "model.onnx"), *flags]) == 0
    from_onnx = json.loads(capsys.readouterr().out)
    assert set(from_run) <= set(from_onnx)
    assert from_onnx["runtime"] == "onnxruntime" and from_onnx["policy"] == from_run["policy"]
    assert from_onnx["global_step"] == from_run["global_step"] and from_onnx["num_episodes"] == 3
    assert [e["length"] for e in from_onnx["episodes"]] == [e["length"] for e in from_run["episodes"]]
    assert from_onnx["mean_return"] == pytest.approx(from_run["mean_return"], rel=1e-4)
    assert (out / "eval_model.json").exists()


def test_eval_onnx_builds_no_torch_model(exported, capsys, monkeypatch):
    """No torch module is even constructed: onnxruntime plays (the export folder works as the path)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a torch module was built")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    assert main(["eval", str(exported["ppo-cartpole"][1]), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mean_return"] > 0


def test_a_disagreeing_export_fails_in_one_line_and_writes_no_model(exported, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(export, "OUTPUT_TOLERANCE", -1.0)  # no difference passes, not even 0
    line = one_line_error(capsys, ["export", str(exported["ppo-cartpole"][0]), "--out", str(tmp_path / "x"),
                                   "--parity-samples", "50", "--episodes", "0"])
    assert "onnxruntime disagrees with torch on 50 observations" in line
    assert not (tmp_path / "x" / "model.onnx").exists()
    assert json.loads((tmp_path / "x" / "report.json").read_text())["parity"]["passed"] is False


def test_bad_inputs_are_one_line(exported, capsys, tmp_path):
    run_dir, out = exported["ppo-cartpole"]
    assert "does not exist" in one_line_error(capsys, ["export", str(tmp_path / "nothing")])
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["export", str(tmp_path / "empty")])
    assert "torchscript" in one_line_error(capsys, ["export", str(run_dir), "--format", "torchscript"], 2)
    assert "unsupported --format" in one_line_error(capsys, ["export", str(run_dir), "--format", "tflite"], 2)
    assert "--opset" in one_line_error(capsys, ["export", str(run_dir), "--opset", "7"], 2)
    assert "--parity-samples" in one_line_error(capsys, ["export", str(run_dir), "--parity-samples", "-1"], 2)
    assert "already exists" in one_line_error(capsys, ["export", str(run_dir), "--out", str(out)], 2)
    assert "ONNX export already" in one_line_error(capsys, ["export", str(out / "model.onnx")], 2)

    # a teacher whose env cannot be built
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["config"]["env_id"] = "rlbase/NoSuchEnv-v0"
    (broken / "config.json").write_text(json.dumps(config))
    assert "NoSuchEnv" in one_line_error(capsys, ["export", str(broken)], None)

    # corrupt and hand-edited ONNX files
    (tmp_path / "junk.onnx").write_bytes(b"\x80\x04not a model at all")
    assert "not an ONNX model" in one_line_error(capsys, ["eval", str(tmp_path / "junk.onnx")])
    import onnx

    model = onnx.load(str(out / "model.onnx"))
    for key, value, message in [("config", "{not json", "not valid JSON"),
                                ("rlbase_format", "other/9", "not an rlbase"),
                                ("algo", "sarsa", "unknown algo"),
                                ("action_space", json.dumps({"type": "Discrete", "n": 3, "start": 0}), "action space")]:
        edited = onnx.ModelProto()
        edited.CopyFrom(model)
        next(p for p in edited.metadata_props if p.key == key).value = value
        onnx.save(edited, str(tmp_path / f"{key}.onnx"))
        assert message in one_line_error(capsys, ["eval", str(tmp_path / f"{key}.onnx"), "--episodes", "1"])
    pendulum = onnx.load(str(exported["ppo-pendulum-squashed"][1] / "model.onnx"))
    next(p for p in pendulum.metadata_props if p.key == "log_std").value = "[0.0, 1.0]"  # one action dimension
    onnx.save(pendulum, str(tmp_path / "log_std.onnx"))
    assert "log_std" in one_line_error(capsys, ["eval", str(tmp_path / "log_std.onnx"), "--episodes", "1"])
    del pendulum.metadata_props[[p.key for p in pendulum.metadata_props].index("log_std")]
    onnx.save(pendulum, str(tmp_path / "no_log_std.onnx"))  # plays its mean, cannot sample
    assert "--deterministic" in one_line_error(capsys, ["eval", str(tmp_path / "no_log_std.onnx"), "--episodes", "1",
                                                        "--no-deterministic"], 2)
    assert main(["eval", str(tmp_path / "no_log_std.onnx"), "--episodes", "1"]) == 0
    capsys.readouterr()
    assert "--best" in one_line_error(capsys, ["eval", str(out / "model.onnx"), "--best"], 2)


def test_without_the_deploy_extra_export_says_how_to_install(exported, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    assert "pip install 'rlbase[deploy]'" in one_line_error(capsys, ["export", str(exported["ppo-cartpole"][0])])
    assert "pip install 'rlbase[deploy]'" in one_line_error(
        capsys, ["eval", str(exported["ppo-cartpole"][1] / "model.onnx")])
