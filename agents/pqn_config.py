"""PQN's hyperparameters and their validation (agents/pqn.py is the algorithm); free of torch, as
agents/dqn_config.py explains."""

from __future__ import annotations

from dataclasses import dataclass

from rlbase.agents import AgentSpec
from rlbase.config import CommonConfig, check, validate_common
from rlbase.config_checks import validate_epsilon_greedy, validate_learner, validate_minibatches


@dataclass
class PQNConfig(CommonConfig):
    """PQN hyperparameters (defaults: CleanRL's pqn_atari_envpool values)."""

    num_envs: int = 8  # CommonConfig's field (documented there) with PQN's default

    learning_rate: float = 2.5e-4
    """Adam learning rate (annealed linearly to 0 with --anneal-lr)."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 over training."""
    lr_restart_step: int = 0
    """Environment step from which the learning-rate annealing runs from --learning-rate to 0 at
    --total-timesteps (0: the whole run). A resume may set it (with --learning-rate), e.g. to train on
    past the end of an annealed run: `rlbase prune` restarts the annealing at its fine-tuning."""
    adam_eps: float = 1e-5
    """Adam epsilon."""
    num_steps: int = 128
    """Steps per env in each rollout (a rollout is num_steps * num_envs transitions)."""
    gamma: float = 0.99
    """Discount factor."""
    q_lambda: float = 0.65
    """Lambda of the Q(lambda) targets: 0 gives 1-step Q-learning targets, 1 the discounted return
    bootstrapped only at the rollout's end (and at truncations)."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch (minibatch size = num_steps * num_envs / num_minibatches)."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip (0 disables it)."""
    exploration_fraction: float = 0.1
    """Fraction of total_timesteps over which epsilon decays linearly."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start of training."""
    exploration_final_eps: float = 0.01
    """Epsilon after the decay."""
    layer_norm: bool = True
    """LayerNorm before each hidden activation of the mlp and nature_cnn backbones (impala_cnn: before
    its last one): what keeps PQN stable without a target network. resnet, vit and text normalise already."""
    split_envs: bool = False
    """Step the training envs in two halves, alternately: one half's emulators run in their threads
    while the agent acts for the other (EnvPool's async mode). For envs that step in threads of their
    own (Atari ids); needs --num-envs >= 2."""


def validate(cfg: PQNConfig) -> None:
    validate_common(cfg)
    validate_learner(cfg)
    validate_minibatches(cfg)
    validate_epsilon_greedy(cfg)
    check(0.0 <= cfg.q_lambda <= 1.0, "q_lambda", f"must be in [0, 1], got {cfg.q_lambda}")
    check(not cfg.split_envs or cfg.num_envs >= 2, "split_envs", f"needs --num-envs >= 2, got {cfg.num_envs}")
    check(not (cfg.layer_norm and cfg.backbone_weights), "layer_norm",
          "pretrained backbones (--backbone-weights) have no LayerNorm layers; add --no-layer-norm")


SPECS = {"pqn": AgentSpec(
    name="pqn", summary="Parallelised Q-Networks (Q(lambda) over many envs, LayerNorm, no replay or target net)",
    Config=PQNConfig, validate=validate)}
