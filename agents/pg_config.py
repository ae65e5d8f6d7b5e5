"""The policy-gradient agents' hyperparameters and their validation: what PPO, A2C and REINFORCE
share (`PGConfig`) and each one's own. The algorithms are agents/pg.py, ppo.py, a2c.py and
reinforce.py; this module is free of torch, as agents/dqn_config.py explains."""

from __future__ import annotations

from dataclasses import dataclass

from rlbase.agents import AgentSpec
from rlbase.config import CommonConfig, check, validate_common
from rlbase.config_checks import validate_learner, validate_minibatches


@dataclass
class PGConfig(CommonConfig):
    """Hyperparameters shared by the policy-gradient agents."""

    learning_rate: float = 2.5e-4
    """Optimiser learning rate (annealed linearly to 0 with --anneal-lr)."""
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
    gae_lambda: float = 0.95
    """GAE lambda (1.0: Monte Carlo returns bootstrapped at the rollout's end)."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value-loss coefficient."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip (0 disables it)."""
    shared_backbone: bool = False
    """One backbone for actor and critic (Atari); otherwise each has its own."""
    ortho_init: bool = True
    """Orthogonal initialisation (gain sqrt(2) for hidden layers, 0.01 for the policy head, 1 for the value head)."""
    log_std_init: float = 0.0
    """Initial log standard deviation of the Gaussian policy (Box actions)."""
    action_bounds: str = "clip"
    """Box actions: clip (sample a Gaussian, clip to the bounds in the env) or squash (tanh onto the bounds)."""
    normalize_obs: bool = False
    """Normalise observations with running mean/std on the device (saved in checkpoints, used by eval)."""
    normalize_reward: bool = False
    """Scale rewards by the running std of the discounted return."""
    clip_obs: float = 10.0
    """Normalised observations are clipped to [-clip_obs, clip_obs]."""
    clip_reward: float = 10.0
    """Normalised rewards are clipped to [-clip_reward, clip_reward]."""
    eval_deterministic: bool = True
    """`rlbase eval` plays the mode (discrete) or mean (continuous) action instead of sampling."""
    split_envs: bool = False
    """Step the training envs in two halves, alternately: one half's emulators run in their threads
    while the agent acts for the other (EnvPool's async mode). For envs that step in threads of their
    own (Atari ids); needs --num-envs >= 2."""


def validate_pg(cfg: PGConfig) -> None:
    validate_common(cfg)
    validate_learner(cfg)
    check(cfg.num_steps > 0, "num_steps", f"must be positive, got {cfg.num_steps}")
    check(0.0 <= cfg.gae_lambda <= 1.0, "gae_lambda", f"must be in [0, 1], got {cfg.gae_lambda}")
    check(cfg.ent_coef >= 0, "ent_coef", "must be >= 0")
    check(cfg.vf_coef >= 0, "vf_coef", "must be >= 0")
    check(cfg.action_bounds in ("clip", "squash"), "action_bounds", f"use clip or squash, got {cfg.action_bounds!r}")
    check(cfg.clip_obs > 0, "clip_obs", "must be positive")
    check(cfg.clip_reward > 0, "clip_reward", "must be positive")
    check(not cfg.split_envs or cfg.num_envs >= 2, "split_envs", f"needs --num-envs >= 2, got {cfg.num_envs}")
    check(abs(cfg.log_std_init) <= 20, "log_std_init", f"must be in [-20, 20] (a std of e^x), got {cfg.log_std_init}")


@dataclass
class PPOConfig(PGConfig):
    """PPO hyperparameters (defaults: the standard Atari values of Schulman et al. / CleanRL)."""

    num_envs: int = 8  # PGConfig's field (documented there) with PPO's default

    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per epoch (minibatch size = num_steps * num_envs / num_minibatches)."""
    clip_coef: float = 0.1
    """Surrogate clipping range epsilon."""
    clip_vloss: bool = True
    """Clip the value update around the old values with the same range."""
    norm_adv: bool = True
    """Normalise advantages within each minibatch."""
    target_kl: float = 0.0
    """Stop the epochs of an update early once the approximate KL exceeds this (0: never)."""


def validate_ppo(cfg: PPOConfig) -> None:
    validate_pg(cfg)
    validate_minibatches(cfg)
    check(cfg.clip_coef > 0, "clip_coef", f"must be positive, got {cfg.clip_coef}")
    check(cfg.target_kl >= 0, "target_kl", "must be >= 0")


@dataclass
class A2CConfig(PGConfig):
    """A2C hyperparameters (defaults: the Stable-Baselines3 / Baselines values)."""

    # PGConfig's fields with A2C's defaults (documented there, shown by --help).
    num_envs: int = 16
    num_steps: int = 5
    learning_rate: float = 7e-4
    anneal_lr: bool = False
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5

    gae_lambda: float = 1.0
    """GAE lambda (1.0: n-step returns bootstrapped at the rollout's end, the classic A2C target)."""
    optimizer: str = "rmsprop"
    """rmsprop (alpha 0.99, as in the paper and SB3) or adam."""
    rms_alpha: float = 0.99
    """RMSprop smoothing constant."""
    rmsprop_eps: float = 1e-5
    """RMSprop epsilon (--adam-eps is Adam's, used with --optimizer adam)."""
    norm_adv: bool = False
    """Normalise advantages over the rollout."""


def validate_a2c(cfg: A2CConfig) -> None:
    validate_pg(cfg)
    check(cfg.optimizer in ("rmsprop", "adam"), "optimizer", f"use rmsprop or adam, got {cfg.optimizer!r}")
    check(0.0 < cfg.rms_alpha < 1.0, "rms_alpha", f"must be in (0, 1), got {cfg.rms_alpha}")
    check(cfg.rmsprop_eps > 0, "rmsprop_eps", f"must be positive, got {cfg.rmsprop_eps}")


@dataclass
class ReinforceConfig(PGConfig):
    """REINFORCE hyperparameters."""

    # PGConfig's fields with REINFORCE's defaults (documented there, shown by --help).
    num_envs: int = 8
    num_steps: int = 500
    learning_rate: float = 1e-3
    anneal_lr: bool = False
    ent_coef: float = 0.0

    gae_lambda: float = 1.0
    """Must stay 1.0: REINFORCE uses Monte Carlo returns (bootstrapped only at the rollout's end)."""
    norm_adv: bool = True
    """Normalise the return-minus-baseline weights over the rollout (reduces variance)."""


def validate_reinforce(cfg: ReinforceConfig) -> None:
    validate_pg(cfg)
    check(cfg.gae_lambda == 1.0, "gae_lambda", "REINFORCE uses Monte Carlo returns; use a2c or ppo for lambda < 1")


SPECS = {
    "ppo": AgentSpec(name="ppo", summary="Proximal Policy Optimization (clipped surrogate, GAE)", Config=PPOConfig,
                     validate=validate_ppo),
    "a2c": AgentSpec(name="a2c", summary="Advantage Actor-Critic (synchronous A2C)", Config=A2CConfig,
                     validate=validate_a2c),
    "reinforce": AgentSpec(name="reinforce", summary="REINFORCE with a learned baseline", Config=ReinforceConfig,
                           validate=validate_reinforce),
}
