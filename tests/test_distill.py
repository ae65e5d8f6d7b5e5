"""`rlbase distill`: the loss against torch's own KL, a PPO and a DQN teacher on CartPole distilled
into a student of about a quarter of their acting parameters that plays as well, the output a run
that `rlbase eval` plays (and `--resume` continues), a Gaussian policy, and one-line errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from rlbase.cli import main
from rlbase.distill_dagger import discrete_kl, gaussian_kl
from tests.compresshelpers import eval_report, train_ppo_teacher


def test_discrete_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator) * 3
    for temperature in (1.0, 0.3):
        expected = torch.distributions.kl_divergence(torch.distributions.Categorical(logits=teacher / temperature),
                                                     torch.distributions.Categorical(logits=student / temperature))
        torch.testing.assert_close(discrete_kl(student, teacher, temperature), expected)
    # MultiDiscrete: the sum of the components' KLs
    parts = [torch.distributions.kl_divergence(torch.distributions.Categorical(logits=t),
                                               torch.distributions.Categorical(logits=s))
             for s, t in zip(student.split([3, 4], -1), teacher.split([3, 4], -1))]
    torch.testing.assert_close(discrete_kl(student, teacher, 1.0, [3, 4]), parts[0] + parts[1])
    assert float(discrete_kl(teacher, teacher, 0.01).abs().max()) < 1e-5


def test_gaussian_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(1)
    mean_s, mean_t = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    log_s, log_t = torch.randn(4, 3, generator=generator) * 0.5, torch.randn(4, 3, generator=generator) * 0.5
    Normal, Independent = torch.distributions.Normal, torch.distributions.Independent
    expected = torch.distributions.kl_divergence(Independent(Normal(mean_t, log_t.exp()), 1),
                                                 Independent(Normal(mean_s, log_s.exp()), 1))
    torch.testing.assert_close(gaussian_kl(mean_s, log_s, mean_t, log_t), expected)


@pytest.mark.parametrize("backbone, fraction", [("mlp", 0.25), ("mlp", 0.0625)])
def test_student_size_is_about_the_fraction_asked(backbone, fraction):
    """An mlp teacher's widths are scaled to about the size asked."""
    import argparse

    import gymnasium as gym
    from rlbase.agents import get_agent

    from rlbase.distill import student_config

    grid, actions = gym.spaces.Box(0, 255, (3, 11, 11), np.uint8), gym.spaces.Discrete(4)
    teacher = get_agent("ppo").Config(env_id="rlbase/Maze-v0", backbone=backbone, hidden_sizes=(256, 256))
    args = argparse.Namespace(backbone=None, hidden_sizes=None, width_fraction=fraction, seed=3)
    student, student_size, teacher_size = student_config("ppo", teacher, args, grid, actions)
    assert student.backbone == "mlp" and student.seed == 3 and student.backbone_weights == ""
    assert 0.8 * fraction <= student_size / teacher_size <= 1.2 * fraction
    assert student.hidden_sizes[0] == student.hidden_sizes[1] < 256


@pytest.mark.parametrize("algo, backbone, shape, fraction, expected", [
    ("ppo", "nature_cnn", (4, 84, 84), 0.5, "nature_cnn"), ("ppo", "nature_cnn", (4, 84, 84), 0.0625, "nature_cnn"),
    ("dqn", "nature_cnn", (4, 84, 84), 0.25, "nature_cnn"), ("ppo", "impala_cnn", (3, 11, 11), 0.25, "impala_cnn"),
    ("ppo", "resnet", (3, 11, 11), 0.25, "impala_cnn")])
def test_cnn_teacher_gets_a_narrower_cnn(algo, backbone, shape, fraction, expected):
    """nature_cnn and impala_cnn scale with --backbone-width: the student is the teacher's CNN at
    the multiplier (k/32) whose acting parameters come closest to the fraction; a CNN that does not
    scale (resnet) gets the scalable one that does. Sizes are counted on real networks here (the
    sizing counts them on the meta device)."""
    import argparse

    import gymnasium as gym
    from rlbase.agents import get_agent

    from rlbase.distill import student_config
    from rlbase.distill_student import acting_tensors, build_network

    space, actions = gym.spaces.Box(0, 255, shape, np.uint8), gym.spaces.Discrete(4)
    teacher = get_agent(algo).Config(env_id="rlbase/Maze-v0", backbone=backbone)
    args = argparse.Namespace(backbone=None, hidden_sizes=None, width_fraction=fraction, seed=1)
    student, student_size, teacher_size = student_config(algo, teacher, args, space, actions)
    assert student.backbone == expected and student.backbone_width < 1
    assert (student.backbone_width * 32).is_integer()
    real = sum(p.numel() for p in acting_tensors(algo, build_network(algo, student, space, actions)).values())
    assert real == student_size
    assert 0.8 * fraction <= student_size / teacher_size <= 1.25 * fraction
    # --backbone picks another CNN as it is, unless --width-fraction is also given
    other = "impala_cnn" if backbone == "nature_cnn" else "resnet"
    fixed, _, _ = student_config(algo, teacher, argparse.Namespace(backbone=other, hidden_sizes=None,
                                                                   width_fraction=None, seed=1), space, actions)
    assert fixed.backbone == other and fixed.backbone_width == 1.0


@pytest.fixture(scope="module")
def ppo_teacher(tmp_path_factory):
    return train_ppo_teacher(tmp_path_factory.mktemp("ppo"))


def test_ppo_student_of_a_quarter_the_size_plays_as_well_as_the_teacher(ppo_teacher, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["distill", str(ppo_teacher), "--out", str(out), "--steps", "30000", "--eval-episodes", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    teacher, student = report["teacher"], report["student"]
    assert report["algo"] == "ppo" and report["status"] == "done"
    assert 3.5 <= teacher["acting_parameters"] / student["acting_parameters"] <= 4.5
    assert report["bytes_ratio"] >= 3.5
    assert teacher["eval"]["mean_return"] >= 150, "the teacher itself did not learn: nothing to compare to"
    assert student["eval"]["mean_return"] >= 0.95 * teacher["eval"]["mean_return"], report

    # an ordinary ppo run: the student's config, played by `rlbase eval`
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "ppo" and config["config"]["hidden_sizes"] == student["hidden_sizes"]
    assert config["config"]["env_id"] == "rlbase/CartPole-v1"
    played = eval_report(out, capsys, episodes=10)
    assert played["algo"] == "ppo" and played["mean_return"] >= 0.95 * teacher["eval"]["mean_return"]
    assert json.loads((out / "distill.json").read_text())["temperature"] == 1.0
    tags = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("distill/policy_kl" in t and "rollout/ep_rew_mean" in t for t in tags)
    assert tags[-1]["distill/policy_kl"] < tags[0]["distill/policy_kl"]
    assert list(out.glob("events.out.tfevents.*"))

    # ... and RL training continues from it
    assert main(["train", "ppo", "--resume", str(out), "--total-timesteps", str(report["steps"] + 2048)]) == 0
    assert eval_report(out, capsys, episodes=2)["global_step"] > report["steps"]


def test_explicit_sizes_and_default_output_folder(ppo_teacher, capsys):
    assert main(["distill", str(ppo_teacher), "--hidden-sizes", "8", "--steps", "2048", "--eval-episodes", "2"]) == 0
    out = ppo_teacher.with_name("teacher-distill")
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["hidden_sizes"] == [8]
    assert report["student"]["acting_parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    shutil.rmtree(out)


def test_dqn_teacher_distils(tmp_path, capsys):
    assert main(["train", "dqn", "--env", "rlbase/CartPole-v1", "--log-dir", str(tmp_path), "--run-name", "dqn",
                 "--total-timesteps", "8000", "--learning-starts", "500", "--seed", "0"]) == 0
    out = tmp_path / "student"
    assert main(["distill", str(tmp_path / "dqn"), "--out", str(out), "--steps", "12000",
                 "--eval-episodes", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["temperature"] == 0.01 and report["parameter_ratio"] >= 3.5
    tensors_file = next((out / "checkpoints").glob("step_*/model.safetensors"))
    from safetensors.torch import load_file

    names = load_file(tensors_file)
    assert any(name.startswith("q.") for name in names) and not any(name.startswith("model.") for name in names)
    teacher, student = report["teacher"]["eval"]["mean_return"], report["student"]["eval"]["mean_return"]
    # A short DQN run is a mediocre, irregular teacher; the student must play about as well.
    assert student >= 0.8 * teacher, report
    assert eval_report(out, capsys, episodes=10)["algo"] == "dqn"


def test_pqn_teacher_distils_into_a_pqn_student(tmp_path, capsys):
    """A value-based teacher without a target network: the student is a PQN run (LayerNorm, no
    target tensors) that `rlbase eval` plays."""
    assert main(["train", "pqn", "--env", "rlbase/CartPole-v1", "--log-dir", str(tmp_path), "--run-name", "pqn",
                 "--total-timesteps", "8192", "--seed", "0"]) == 0
    out = tmp_path / "student"
    assert main(["distill", str(tmp_path / "pqn"), "--out", str(out), "--steps", "4000",
                 "--eval-episodes", "5"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["temperature"] == 0.01 and report["parameter_ratio"] >= 3
    from safetensors.torch import load_file

    names = load_file(next((out / "checkpoints").glob("step_*/model.safetensors")))
    assert any(name.startswith("q.") for name in names)
    assert not any(name.startswith(("target.", "model.")) for name in names)
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "pqn" and config["config"]["layer_norm"] is True
    # LayerNorm weights are the 1-d weights of the backbone (a Linear's are 2-d).
    assert any(name.startswith("q.backbone.") and name.endswith(".weight") and names[name].dim() == 1 for name in names)
    assert eval_report(out, capsys, episodes=5)["algo"] == "pqn"


def test_gaussian_policy_with_normalisation_and_squash(tmp_path, capsys):
    assert main(["train", "ppo", "--env", "rlbase/Pendulum-v1", "--log-dir", str(tmp_path), "--run-name", "t",
                 "--total-timesteps", "4096", "--action-bounds", "squash", "--normalize-obs"]) == 0
    out = tmp_path / "s"
    assert main(["distill", str(tmp_path / "t"), "--out", str(out), "--steps", "4096", "--eval-episodes", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert np.isfinite(report["student"]["eval"]["mean_return"])
    from safetensors.torch import load_file

    teacher = load_file(next((tmp_path / "t" / "checkpoints").glob("step_*/model.safetensors")))
    student = load_file(next((out / "checkpoints").glob("step_*/model.safetensors")))
    torch.testing.assert_close(student["obs_rms.mean"], teacher["obs_rms.mean"])  # the teacher's statistics
    assert "model.log_std" in student
    tags = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert tags[-1]["distill/policy_kl"] < tags[0]["distill/policy_kl"]
    assert eval_report(out, capsys, episodes=1)["policy"] == "deterministic"


def test_dict_observations(tmp_path, capsys):
    """MazeGoTo (an image and an instruction): its FiLM CNN has no width, so the student's backbone
    is chosen per key; an mlp on the image gets its widths fitted to the fraction."""
    assert main(["train", "ppo", "--env", "rlbase/MazeGoTo-v0", "--log-dir", str(tmp_path), "--run-name", "t",
                 "--total-timesteps", "512", "--num-envs", "8", "--num-steps", "64"]) == 0
    capsys.readouterr()
    assert main(["distill", str(tmp_path / "t"), "--steps", "256", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--backbone" in err[0] and not (tmp_path / "x").exists()
    out = tmp_path / "s"
    assert main(["distill", str(tmp_path / "t"), "--backbone", "image=mlp,mission=text", "--steps", "512",
                 "--eval-episodes", "2", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["backbone"] == "image=mlp,mission=text"
    assert 3.0 <= report["parameter_ratio"] <= 5.0
    assert eval_report(out, capsys, episodes=2)["env_id"] == "rlbase/MazeGoTo-v0"


@pytest.mark.parametrize("flags, code, words", [
    (["--width-fraction", "0"], 2, "--width-fraction"),
    (["--width-fraction", "1.5"], 2, "--width-fraction"),
    (["--temperature", "0"], 2, "--temperature"),
    (["--temperature", "nan"], 2, "--temperature"),
    (["--steps", "0"], 2, "--steps"),
    (["--beta-decay", "2"], 2, "--beta-decay"),
    (["--rollout-policy", "random"], 2, "--rollout-policy"),
])
def test_bad_flags_are_one_line(ppo_teacher, tmp_path, capsys, flags, code, words):
    capsys.readouterr()
    assert main(["distill", str(ppo_teacher), "--out", str(tmp_path / "o"), *flags]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlbase: error:") and words in err[0]
    assert not (tmp_path / "o").exists()


def test_bad_teachers_are_one_line(ppo_teacher, tmp_path, capsys):
    def error(args: list[str], code: int) -> str:
        capsys.readouterr()
        assert main(["distill", *args]) == code
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rlbase: error:"), lines
        return lines[0]

    (tmp_path / "empty").mkdir()
    assert "not a run directory" in error([str(tmp_path / "empty")], 1)
    assert "does not exist" in error([str(tmp_path / "missing")], 1)
    broken = tmp_path / "broken"
    shutil.copytree(ppo_teacher, broken)
    config = json.loads((broken / "config.json").read_text())
    config["config"]["env_id"] = "rlbase/NoSuchEnv-v0"
    (broken / "config.json").write_text(json.dumps(config))
    assert "NoSuchEnv" in error([str(broken), "--out", str(tmp_path / "o")], 2)
    assert not (tmp_path / "o").exists()
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "file").write_text("x")
    assert "--out" in error([str(ppo_teacher), "--out", str(occupied)], 2)


def test_rollouts_act_as_the_evaluation_does():
    """--rollout-policy eval (the default): a policy evaluated by sampling is rolled out sampling, a
    Q-network epsilon-greedy at the config's eval_epsilon; greedy: the greedy action."""
    import argparse

    import gymnasium as gym
    from rlbase.agents import get_agent

    from rlbase.distill import settings_from
    from rlbase.distill_dagger import PolicyView
    from rlbase.distill_student import build_network

    space, actions = gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3)

    def settings(algo, rollout_policy, **cfg):
        teacher = get_agent(algo).Config(env_id="rlbase/CartPole-v1", **cfg)
        args = argparse.Namespace(value_coef=None, buffer_size=None, hidden_sizes=None, width_fraction=None,
                                  backbone=None, steps=1000, rollout_steps=16, temperature=None, learning_rate=1e-3,
                                  batch_size=256, epochs=None, beta_decay=0.2, rollout_policy=rollout_policy,
                                  max_grad_norm=1.0, seed=0, eval_episodes=None, log_interval=None)
        return settings_from(args, algo, teacher, space, 8)

    assert settings("ppo", "eval", eval_deterministic=False).sample_actions
    assert not settings("ppo", "eval", eval_deterministic=True).sample_actions
    assert not settings("ppo", "greedy", eval_deterministic=False).sample_actions
    assert settings("dqn", "eval", eval_epsilon=0.05).epsilon == 0.05
    assert settings("dqn", "greedy", eval_epsilon=0.05).epsilon == 0.0

    cfg = get_agent("ppo").Config(env_id="rlbase/CartPole-v1")
    view = PolicyView("ppo", build_network("ppo", cfg, space, actions), actions, cfg.action_bounds)
    logits = torch.tensor([[0.0, 0.1, 0.0]]).repeat(3000, 1)
    generator = torch.Generator().manual_seed(0)
    sampled = view.act(logits, True, 0.0, generator)
    counts = torch.bincount(sampled, minlength=3).double() / 3000
    assert torch.allclose(counts, logits.softmax(-1)[0].double(), atol=0.03)
    assert (view.act(logits, False, 0.0, generator) == 1).all()
    q_cfg = get_agent("dqn").Config(env_id="rlbase/CartPole-v1")
    q_view = PolicyView("dqn", build_network("dqn", q_cfg, space, actions), actions, "clip")
    explored = q_view.act(logits, True, 0.3, generator)  # a Q-network never samples: greedy, or random at epsilon
    assert 0.15 < (explored != 1).double().mean() < 0.25  # 0.3 x 2/3 of random actions differ from the greedy one
