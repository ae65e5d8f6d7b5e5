"""Agents: one module per algorithm family. Each module ends with an `AGENT` record, the whole
contract between an algorithm and the rest of rlbase (the run lifecycle, `rlbase eval`, the
Python API): nothing is looked up by attribute name or probed with `hasattr`.

Adding an agent: write its config module (the config dataclass and its validation, free of torch,
ending with `SPECS = {NAME: AgentSpec(...)}`) and its module (network, loss, update, `train` loop
body, `load_policy`, ending with `AGENT = Agent(...)` built from that spec), and list them in
`CONFIG_MODULES` and `AGENT_MODULES`. What only reads or checks a config (the command line's flags,
`rlbase sweep`'s driver, `rlbase report`) asks for the spec (`get_spec`) and never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

from rlbase.errors import UsageError

if TYPE_CHECKING:
    import gymnasium as gym
    import torch

    from rlbase.envs import TensorVecEnv
    from rlbase.run import Run

Policy = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]
"""`policy(obs, generator) -> actions`: a batch of observations on the device to actions in the env's format."""


@dataclass(frozen=True)
class AgentSpec:
    """An algorithm's name, summary, config dataclass and validation: what its config module declares."""

    name: str
    """The command-line name (`rlbase train NAME`)."""
    summary: str
    """One line for `rlbase train --help`."""
    Config: type
    """Its config dataclass (a subclass of `rlbase.config.CommonConfig`)."""
    validate: Callable[[Any], None]
    """Raise a UsageError naming the flag of any invalid value (before anything is built)."""


@dataclass(frozen=True)
class Agent(AgentSpec):
    """What an algorithm provides to the run lifecycle: its spec, and the algorithm."""

    check_env: Callable[[Any, "TensorVecEnv"], None]
    """Raise a UsageError when the agent cannot act in the env (action or observation space)."""
    train: Callable[[Any, "TensorVecEnv", "Run"], dict[str, Any]]
    """The loop body: `train(cfg, env, run) -> metrics`; `run` does seeding, episode statistics,
    cadences, checkpoints, callbacks and evaluation (rlbase.run.Run)."""
    load_policy: Callable[[Any, dict[str, "torch.Tensor"], "gym.spaces.Space", "gym.spaces.Space", "torch.device"],
                          Policy]
    """`load_policy(cfg, tensors, observation_space, action_space, device)`: the evaluation policy of a
    checkpoint's tensors, acting as the config says (`exploration` below)."""
    acting_net: Callable[[Any, dict[str, "torch.Tensor"], "gym.spaces.Space", "gym.spaces.Space", "torch.device"],
                         "torch.nn.Module"]
    """`acting_net(cfg, tensors, observation_space, action_space, device)`: the checkpoint's whole
    greedy acting path as one `nn.Module` (what compression and export work on):
    `forward(obs) -> (outputs, actions)`. `obs` is what the env gives (uint8 frames, token ids, a
    dict for Dict observations): the module applies the agent's preprocessing (frozen observation
    normalisation) itself. `outputs` are the action-value or policy outputs (`ActingNet.kind`:
    "q" values, "categorical" / "multicategorical" logits, or the "gaussian" mean), `actions`
    what the env receives (argmax or distribution mode; Box actions clipped or squashed as in
    training)."""
    exploration: Literal["epsilon", "sample"]
    """How the evaluation policy explores: `epsilon` (value-based: greedy except with probability
    `cfg.eval_epsilon`) or `sample` (policy-gradient: the mode/mean action when
    `cfg.eval_deterministic`, else a sample of the policy)."""

    @classmethod
    def of(cls, spec: AgentSpec, **algorithm: Any) -> Agent:
        """The Agent of `spec` with the algorithm's parts (check_env, train, load_policy, ...)."""
        return cls(name=spec.name, summary=spec.summary, Config=spec.Config, validate=spec.validate, **algorithm)

    def describe_policy(self, cfg: Any) -> str:
        """How the evaluation policy acts, for reports: `deterministic`, `stochastic` or `epsilon-greedy E`."""
        if self.exploration == "epsilon":
            return f"epsilon-greedy {cfg.eval_epsilon}"
        return "deterministic" if cfg.eval_deterministic else "stochastic"


AGENT_MODULES = {"dqn": "rlbase.agents.dqn", "ppo": "rlbase.agents.ppo", "a2c": "rlbase.agents.a2c",
                 "reinforce": "rlbase.agents.reinforce", "pqn": "rlbase.agents.pqn"}
CONFIG_MODULES = {"dqn": "rlbase.agents.dqn_config", "ppo": "rlbase.agents.pg_config",
                  "a2c": "rlbase.agents.pg_config", "reinforce": "rlbase.agents.pg_config",
                  "pqn": "rlbase.agents.pqn_config"}
ALGORITHMS = tuple(AGENT_MODULES)


def get_spec(name: str) -> AgentSpec:
    """The `AgentSpec` of algorithm `name`, from its config module (which does not import torch)."""
    if name not in CONFIG_MODULES:
        raise UsageError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
    spec = importlib.import_module(CONFIG_MODULES[name]).SPECS[name]
    assert spec.name == name, f"{CONFIG_MODULES[name]} declares agent {spec.name!r} as {name!r}"
    return spec


def get_agent(name: str) -> Agent:
    """The `Agent` record of algorithm `name` (its module is imported on first use)."""
    if name not in AGENT_MODULES:
        raise UsageError(f"unknown algorithm {name!r}; available: {', '.join(ALGORITHMS)}")
    agent = importlib.import_module(AGENT_MODULES[name]).AGENT
    spec = get_spec(name)
    assert (agent.name, agent.Config, agent.validate) == (name, spec.Config, spec.validate), \
        f"{AGENT_MODULES[name]} declares agent {agent.name!r} apart from its spec"
    return agent
