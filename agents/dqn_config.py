"""DQN's hyperparameters and their validation (agents/dqn.py is the algorithm).

Kept apart from the algorithm, and free of torch, so that what only reads or checks a config (the
command line's flags and --help, `rlbase sweep`'s driver, `rlbase report`) starts without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlbase.agents import AgentSpec
from rlbase.config import CommonConfig, check, validate_common
from rlbase.config_checks import validate_epsilon_greedy, validate_learner

HEADS = ("none", "c51", "qrdqn")
"""Value heads (--distributional): one Q-value per action, C51's categorical distribution, QR-DQN's quantiles."""


@dataclass
class DQNConfig(CommonConfig):
    """DQN hyperparameters (defaults: the Nature/CleanRL Atari values)."""

    learning_rate: float = 1e-4
    """Adam learning rate (annealed linearly to 0 with --anneal-lr)."""
    anneal_lr: bool = False
    """Anneal the learning rate linearly to 0 over training (Nature DQN keeps it constant). A
    Q-network that solved its task can still drift away from it late in a run; an annealed rate
    can settle it (on CartPole-v1: 17 of 20 seeds solve, 15 without; BENCHMARKS.md)."""
    lr_restart_step: int = 0
    """Environment step from which the learning-rate annealing runs from --learning-rate to 0 at
    --total-timesteps (0: the whole run). A resume may set it (with --learning-rate), e.g. to train on
    past the end of an annealed run: `rlbase prune` restarts the annealing at its fine-tuning."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions (split evenly over the parallel envs)."""
    batch_size: int = 32
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    learning_starts: int = 80_000
    """Transitions collected before learning starts."""
    train_freq: int = 4
    """Environment steps (over all envs) per `gradient_steps` updates, whatever --num-envs is."""
    gradient_steps: int = 1
    """Gradient steps every `train_freq` environment steps."""
    target_update_interval: int = 1_000
    """Environment steps between target-network updates."""
    tau: float = 1.0
    """Target update rate: 1.0 copies the online network (hard update), < 1 is Polyak averaging."""
    exploration_fraction: float = 0.1
    """Fraction of total_timesteps over which epsilon decays linearly."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start of training."""
    exploration_final_eps: float = 0.01
    """Epsilon after the decay."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip (0 disables it)."""
    double_q: bool = True
    """Double DQN targets: the online network picks the next action, the target network scores it."""
    dueling: bool = False
    """Dueling head: separate state-value and advantage streams."""
    n_step: int = 1
    """Steps of reward summed before bootstrapping (never across an episode end)."""
    prioritized_replay: bool = False
    """Proportional prioritized replay with importance-sampling weights."""
    per_alpha: float = 0.6
    """Priority exponent of prioritized replay."""
    per_beta: float = 0.4
    """Initial importance-sampling exponent, annealed to 1 over training."""
    per_eps: float = 1e-6
    """Added to |TD error| so no transition gets zero priority."""
    distributional: str = "none"
    """Value head: none (one Q-value per action), c51 (categorical distribution on --num-atoms atoms in
    [--v-min, --v-max], cross-entropy to the projected target) or qrdqn (--num-quantiles quantiles,
    quantile Huber loss). Acting uses the expected Q-values; prioritized replay, each sample's loss."""
    num_atoms: int = 51
    """c51: atoms of the return distribution."""
    v_min: float = -10.0
    """c51: the lowest atom (returns below it are clipped onto it)."""
    v_max: float = 10.0
    """c51: the highest atom (returns above it are clipped onto it)."""
    num_quantiles: int = 200
    """qrdqn: quantiles of the return distribution."""
    quantile_kappa: float = 1.0
    """qrdqn: threshold of the quantile Huber loss."""
    noisy: bool = False
    """Noisy head layers (factorised Gaussian, learned scales) for exploration; noise is resampled every
    acting step and every update, and evaluation acts with the mean weights. Usually with epsilon 0."""
    noisy_sigma0: float = 0.5
    """Initial noise scale of the noisy layers (sigma = sigma0 / sqrt(inputs))."""


def validate(cfg: DQNConfig) -> None:
    validate_common(cfg)
    validate_learner(cfg)
    validate_epsilon_greedy(cfg)
    check(cfg.buffer_size >= cfg.batch_size, "buffer_size", "must be at least --batch-size")
    check(cfg.batch_size > 0, "batch_size", f"must be positive, got {cfg.batch_size}")
    check(cfg.learning_starts >= 0, "learning_starts", f"must be >= 0, got {cfg.learning_starts}")
    check(cfg.train_freq > 0, "train_freq", f"must be positive, got {cfg.train_freq}")
    check(cfg.gradient_steps > 0, "gradient_steps", f"must be positive, got {cfg.gradient_steps}")
    check(cfg.target_update_interval > 0, "target_update_interval", "must be positive")
    check(0.0 < cfg.tau <= 1.0, "tau", f"must be in (0, 1], got {cfg.tau}")
    check(cfg.n_step >= 1, "n_step", f"must be >= 1, got {cfg.n_step}")
    check(cfg.per_alpha >= 0, "per_alpha", "must be >= 0")
    check(0.0 <= cfg.per_beta <= 1.0, "per_beta", "must be in [0, 1]")
    check(cfg.per_eps > 0, "per_eps", f"must be positive (a priority floor), got {cfg.per_eps}")
    check(cfg.distributional in HEADS, "distributional", f"choose from {', '.join(HEADS)}, got {cfg.distributional!r}")
    check(cfg.num_atoms >= 2, "num_atoms", f"must be at least 2, got {cfg.num_atoms}")
    check(cfg.v_min < cfg.v_max, "v_max", f"must be above --v-min, got {cfg.v_max} (--v-min {cfg.v_min})")
    check(cfg.num_quantiles >= 1, "num_quantiles", f"must be positive, got {cfg.num_quantiles}")
    check(cfg.quantile_kappa > 0, "quantile_kappa", f"must be positive, got {cfg.quantile_kappa}")
    check(cfg.noisy_sigma0 >= 0, "noisy_sigma0", f"must be >= 0, got {cfg.noisy_sigma0}")


SPECS = {"dqn": AgentSpec(
    name="dqn", summary="Deep Q-Networks (double, dueling, n-step, prioritized replay, C51, QR-DQN, noisy nets)",
    Config=DQNConfig, validate=validate)}
