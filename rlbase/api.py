"""The Python API, in the shape Stable-Baselines3 users know:

    from rlbase import PPO

    agent = PPO("rlbase/CartPole-v1", seed=0)     # the same preset as `rlbase train ppo --env ...`
    agent.learn()                                 # a run directory under runs/, as the CLI writes
    action, _ = agent.predict(obs)                # one observation or a batch, numpy or torch
    agent.save("ppo_cartpole")                    # the CLI's checkpoint: safetensors + JSON
    agent = PPO.load("ppo_cartpole")              # (or a run directory: its newest checkpoint)
    agent.evaluate(episodes=20)                   # the report of `rlbase eval`

Every run goes through the run lifecycle (rlbase.lifecycle), exactly as `rlbase train` does: the
keyword arguments are config fields (`PPO.Config`'s, shown by `rlbase train ppo --help` as
flags) applied on top of the env's preset. The env is an id, a ready `TensorVecEnv`, or a list of
functions that each make a Gymnasium env (with your own wrappers).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence, Union

import numpy as np
import torch

from rlbase.errors import RlbaseError, UsageError

if TYPE_CHECKING:
    from rlbase.envs import TensorVecEnv

EnvLike = Union[str, "TensorVecEnv", Sequence[Callable[[], Any]]]


class Algorithm:
    """An agent of one algorithm on one environment (subclasses: DQN, PPO, A2C, REINFORCE, PQN).

    `Algorithm(env, **config)`: `env` is an env id (`"CartPole-v1"`, `"ALE/Breakout-v5"`,
    `"mypkg.envs:MyEnv-v0"`), a `rlbase.envs.TensorVecEnv`, or a list of functions that each
    return a Gymnasium env (one per parallel env; your wrappers included). The keywords are the
    config's fields (`seed=1`, `learning_rate=3e-4`, `eval_freq=10_000`, ...), applied on top of
    the env's preset. `log_dir=None` keeps runs in memory (no run directory); `verbose=0` prints
    nothing (no start line, no progress display).
    """

    algo: ClassVar[str]

    def __init__(self, env: EnvLike, *, verbose: int = 1, **config: Any):
        from rlbase.lifecycle import plan

        self.verbose = verbose
        self._in_memory = "log_dir" in config and config["log_dir"] is None
        if self._in_memory:
            config.pop("log_dir")
        vec_env, make_eval_env = _vec_env(env, config)
        self._plan = plan(self.algo, config if vec_env is not None else {**config, "env_id": env},
                          env=vec_env, make_eval_env=make_eval_env)
        self._owns_env = self._plan.owns_env
        self._checkpoint = None  # the state after the last learn() / load
        self._policies: dict[bool, Callable] = {}
        self.run_dir: Path | None = None
        """The run directory of the last `learn()` (None before, or with log_dir=None)."""
        self.last_metrics: dict[str, Any] = {}
        """What the last `learn()` returned: steps, episodes, recent mean return, evaluations, ..."""

    # -- what it is ------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        """The resolved config (a `Config` dataclass: presets and your values applied)."""
        return self._plan.config

    @property
    def env(self) -> Any:
        """The training envs (a `TensorVecEnv`)."""
        return self._plan.env

    @property
    def num_timesteps(self) -> int:
        """Environment steps trained so far."""
        return int(self._checkpoint.state["counters"]["global_step"]) if self._checkpoint is not None else 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.env_id!r}, num_timesteps={self.num_timesteps})"

    # -- training --------------------------------------------------------------------------
    def learn(self, total_timesteps: int | None = None, callback: Any = None, progress_bar: bool | None = None
              ) -> Algorithm:
        """Train for `total_timesteps` env steps (default: the config's total_timesteps).

        A later call continues the same run: same run directory, counters and optimiser state,
        training `total_timesteps` more steps (schedules such as learning-rate annealing are spread
        over the new total). `callback`: a `rlbase.callbacks.Callback`, a function `f(run)` called
        after each iteration (return False to stop), or a list of them. `progress_bar`: None shows
        a bar on a terminal and status lines otherwise. Returns self.
        """
        from rlbase.lifecycle import NEW, execute, plan_config

        steps = self.config.total_timesteps if total_timesteps is None else int(total_timesteps)
        if steps <= 0:
            raise UsageError(f"total_timesteps must be positive, got {total_timesteps}")
        cfg = dataclasses.replace(self.config, total_timesteps=self.num_timesteps + steps)
        # The agent keeps its env across learn() calls (the plan does not own it); close() closes it.
        self._plan = plan_config(cfg, env=self.env, resume=self._checkpoint, run_dir=self.run_dir,
                                 make_eval_env=self._plan.make_eval_env)
        quiet = self.verbose <= 0
        metrics = execute(self._plan, run_dir=None if self._in_memory else (self.run_dir or NEW),
                          callbacks=callback, progress=False if quiet else progress_bar,
                          announce=None if quiet else _say)
        self._checkpoint, self.run_dir, self._policies = metrics["checkpoint"], metrics["run_dir"], {}
        self.last_metrics = {k: v for k, v in metrics.items() if k != "checkpoint"}
        return self

    # -- acting ----------------------------------------------------------------------------
    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = True) -> tuple[Any, None]:
        """`(actions, None)` for one observation or a batch, as numpy (torch when given torch).

        Observations are what the env returns (an array, a dict of arrays for Dict spaces, an int
        for a Discrete space); actions come back in the env's format, for `env.step`.
        `deterministic`: the greedy / mode / mean action; False acts as the evaluation policy
        explores (policy-gradient agents sample; DQN is epsilon-greedy at the config's eval_epsilon).
        `state` and `episode_start` exist for SB3 compatibility (no recurrent policies here).
        """
        policy = self._policy(deterministic)
        obs, single, as_torch = _batch(observation, self.env)
        generator = self._generator
        with torch.no_grad():
            actions = policy(obs, generator)
        if single:
            actions = actions[0]
        return (actions if as_torch else actions.cpu().numpy()), None

    def _policy(self, deterministic: bool) -> Callable:
        if self._checkpoint is None:
            raise RlbaseError(f"{type(self).__name__} has not been trained: call learn() (or load a checkpoint) first")
        if not self._policies:  # one sampling stream per trained state, shared by both policies
            self._generator = torch.Generator(device=self.env.device)
            self._generator.manual_seed(self.config.seed)
        if deterministic not in self._policies:
            agent, env = self._plan.agent, self.env
            cfg = _policy_config(agent, self.config, deterministic)
            devices = [env.device.index or 0] if env.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # building the network must not move torch's RNG
                try:
                    self._policies[deterministic] = agent.load_policy(
                        cfg, self._checkpoint.tensors, env.single_observation_space, env.single_action_space,
                        env.device)
                except (RuntimeError, KeyError, ValueError) as exc:
                    lines = str(exc).strip().splitlines() or [type(exc).__name__]
                    raise RlbaseError(f"the checkpoint does not fit this agent's networks ({lines[0]})") from None
        return self._policies[deterministic]

    def evaluate(self, episodes: int | None = None, deterministic: bool | None = None, seed: int = 0,
                 video_dir: str | Path | None = None, progress: bool | None = False) -> dict[str, Any]:
        """Play `episodes` episodes (default: the config's eval_episodes) of the eval split with
        the evaluation policy: the report of `rlbase eval` (mean_return, std_return, ci95_low/high,
        mean_length, outcomes, episodes, ...). `deterministic` overrides the config's choice for
        policy-gradient agents."""
        from rlbase.callbacks import check_same_spaces
        from rlbase.evaluate import evaluate_checkpoint, evaluation_config

        if self._checkpoint is None:
            raise RlbaseError(f"{type(self).__name__} has not been trained: call learn() (or load a checkpoint) first")
        if episodes is not None and episodes <= 0:
            raise UsageError(f"episodes must be positive, got {episodes}")
        agent = self._plan.agent
        cfg = evaluation_config(agent, self.config, deterministic=deterministic)
        episodes = episodes or cfg.eval_episodes
        eval_env = None
        if video_dir is None and self._plan.make_eval_env is not None:
            eval_env = self._plan.make_eval_env(min(episodes, 8))
            try:
                check_same_spaces(eval_env, self.env)
            except UsageError:
                eval_env.close()
                raise
        try:
            report = evaluate_checkpoint(agent, cfg, self._checkpoint.tensors, episodes=episodes, seed=seed,
                                         device=self.env.device, video_dir=video_dir, env=eval_env, progress=progress)
        finally:
            if eval_env is not None:
                eval_env.close()
        return {**report, "global_step": self.num_timesteps}

    # -- files -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the agent as a checkpoint folder at `path` (model.safetensors + state.json, the
        format `rlbase train` writes: `rlbase eval PATH` plays it). Returns the folder."""
        from rlbase.checkpoint import write_checkpoint

        if self._checkpoint is None:
            raise RlbaseError(f"{type(self).__name__} has not been trained: nothing to save yet")
        tensors, state, buffer = self._checkpoint
        state = {"algo": self.algo, "config": dataclasses.asdict(self.config), **state}
        return write_checkpoint(Path(path), self.num_timesteps, tensors, state,
                                buffer if self.config.save_buffer else None)

    @classmethod
    def load(cls, path: str | Path, env: EnvLike | None = None, *, verbose: int = 1, **config: Any) -> Algorithm:
        """The agent saved at `path` (a folder from `save`, a run directory: its newest checkpoint,
        or a checkpoint folder). `env` replaces the env rebuilt from the saved config (needed when
        it was made from your own factories); `config` overrides saved fields that do not shape the
        networks (total_timesteps, log_dir, eval_freq, ...)."""
        from rlbase.agents import get_agent
        from rlbase.checkpoint import load_checkpoint
        from rlbase.config import from_dict, saved_values
        from rlbase.lifecycle import plan_config
        from rlbase.run import CONFIG_FILE
        from rlbase.utils import resolve_device

        path = Path(path)
        checkpoint = load_checkpoint(path, "cpu", with_buffer=True)
        algo = checkpoint.state.get("algo")
        if algo != cls.algo:
            raise RlbaseError(f"{path} holds a {algo} agent, not {cls.algo}; use rlbase.load() or {str(algo).upper()}.load()")
        in_memory = "log_dir" in config and config["log_dir"] is None
        if in_memory:
            del config["log_dir"]
        shaping = sorted(set(config) & set(NETWORK_FIELDS))
        changed = [k for k in shaping if config[k] != checkpoint.state["config"].get(k) and
                   not (isinstance(config[k], tuple) and list(config[k]) == checkpoint.state["config"].get(k))]
        if changed:
            raise UsageError(f"{', '.join(changed)} shape the saved networks and cannot change when loading {path}")
        saved = saved_values(checkpoint.state["config"])
        cfg = from_dict(get_agent(algo).Config, {**saved, **config}, f"{path} config")
        vec_env, make_eval_env = _vec_env(env, {**config, "device": cfg.device}) if env is not None else (None, None)
        device = vec_env.device if vec_env is not None else resolve_device(cfg.device)
        if device.type != "cpu":
            checkpoint = load_checkpoint(path, device, with_buffer=True)
        self = cls.__new__(cls)
        self.verbose, self._in_memory, self.last_metrics = verbose, in_memory, {}
        self._plan = plan_config(cfg, env=vec_env, resume=checkpoint, make_eval_env=make_eval_env)
        self._owns_env = self._plan.owns_env
        self._checkpoint, self._policies = checkpoint, {}
        # Learning on continues the run a run directory holds; an agent saved elsewhere starts a new one.
        self.run_dir = path if (path / CONFIG_FILE).is_file() else None
        return self

    def close(self) -> None:
        """Close the envs (the agent's own, not ones handed in)."""
        if self._owns_env:
            self.env.close()
            self._owns_env = False


NETWORK_FIELDS = ("env_id", "env_kwargs", "gym_packages", "backbone", "hidden_sizes", "backbone_width", "activation",
                  "dueling", "shared_backbone", "normalize_obs", "normalize_reward", "action_bounds", "frame_stack",
                  "num_envs", "buffer_size", "n_step", "prioritized_replay")
"""Config fields a checkpoint's tensors depend on (networks, normalisation, replay layout, env batch)."""


def _say(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _policy_config(agent: Any, cfg: Any, deterministic: bool) -> Any:
    if agent.exploration == "sample":
        return dataclasses.replace(cfg, eval_deterministic=deterministic)
    return dataclasses.replace(cfg, eval_epsilon=0.0) if deterministic else cfg


def _vec_env(env: EnvLike, config: dict[str, Any]) -> tuple[Any, Callable[[int], Any] | None]:
    """(a TensorVecEnv or None for an env id, a maker of eval envs or None) for what the user handed in."""
    from rlbase.envs import TensorVecEnv
    from rlbase.envs.gym_adapter import GymVecEnv
    from rlbase.utils import resolve_device

    if isinstance(env, str):
        return None, None
    if isinstance(env, TensorVecEnv):
        return env, None
    if isinstance(env, Sequence) and env and all(callable(fn) for fn in env):
        fns = list(env)
        device = resolve_device(config.get("device", "auto"))
        probe = fns[0]()
        spec = getattr(probe, "spec", None)
        env_id = config.get("env_id") or (spec.id if spec is not None else type(probe.unwrapped).__name__)
        probe.close()
        make_eval = lambda n: GymVecEnv([fns[i % len(fns)] for i in range(n)], env_id, device)  # noqa: E731
        return GymVecEnv(fns, env_id, device), make_eval
    raise TypeError("env must be an env id, a rlbase.envs.TensorVecEnv, or a list of functions that each make a "
                    f"Gymnasium env (e.g. [lambda: MyWrapper(gym.make('CartPole-v1'))] * 4); got {type(env).__name__}")


def _batch(observation: Any, env: Any) -> tuple[Any, bool, bool]:
    """(observations as a batch of tensors on the env's device, whether one observation was given,
    whether it was given as torch)."""
    import gymnasium as gym

    space = env.single_observation_space
    converter = getattr(env, "convert_obs", None)
    raw_space = converter.raw_space if converter is not None else space
    as_torch = torch.is_tensor(observation) or (isinstance(observation, dict) and observation and
                                                 all(torch.is_tensor(v) for v in observation.values()))

    def to_numpy(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)

    if isinstance(raw_space, gym.spaces.Dict):
        if not isinstance(observation, dict):
            raise UsageError(f"this agent takes Dict observations with keys {', '.join(raw_space.spaces)}; "
                             f"got {type(observation).__name__}")
        missing = [key for key in raw_space.spaces if key not in observation]
        if missing:
            raise UsageError(f"observation is missing key(s) {', '.join(missing)}")
        arrays = {key: to_numpy(observation[key]) for key in raw_space.spaces}
        forms = {key: _is_single(arrays[key], raw_space.spaces[key], key) for key in arrays}
        if len(set(forms.values())) > 1:
            raise UsageError("observation mixes one observation and a batch across its keys: "
                             + ", ".join(f"{k} {'one' if one else 'batch'}" for k, one in forms.items()))
        single = next(iter(forms.values()))
        sizes = {key: len(value) for key, value in arrays.items()} if not single else {}
        if len(set(sizes.values())) > 1:
            raise UsageError("observation keys hold batches of different sizes: "
                             + ", ".join(f"{k} {n}" for k, n in sizes.items()))
        batch = {k: v[None] if single else v for k, v in arrays.items()}
    else:
        array = to_numpy(observation)
        single = _is_single(array, raw_space, None)
        batch = array[None] if single else array
    if converter is not None:
        batch = converter(batch)
    if isinstance(space, gym.spaces.Dict):
        tensors = {k: torch.as_tensor(np.asarray(v, dtype=space[k].dtype), device=env.device) for k, v in batch.items()}
    else:
        tensors = torch.as_tensor(np.asarray(batch, dtype=space.dtype), device=env.device)
    return tensors, single, as_torch


def _is_single(array: np.ndarray, space: Any, key: str | None) -> bool:
    shape = tuple(space.shape or ())
    where = f" for key {key!r}" if key else ""
    if array.shape == shape:
        return True
    if array.shape[1:] == shape:
        return False
    raise UsageError(f"observation{where} has shape {array.shape}; expected {shape} (one) or (batch, *{shape})")


class DQN(Algorithm):
    """Deep Q-Networks (double, dueling, n-step, prioritized replay): `DQN(env, **config)`."""

    algo = "dqn"


class PPO(Algorithm):
    """Proximal Policy Optimization: `PPO(env, **config)`."""

    algo = "ppo"


class A2C(Algorithm):
    """Advantage Actor-Critic (synchronous): `A2C(env, **config)`."""

    algo = "a2c"


class REINFORCE(Algorithm):
    """REINFORCE with a learned baseline: `REINFORCE(env, **config)`."""

    algo = "reinforce"


class PQN(Algorithm):
    """Parallelised Q-Networks (Q(lambda) over many envs, LayerNorm, no replay or target network): `PQN(env, **config)`."""

    algo = "pqn"


def algorithm_class(algo: str) -> type[Algorithm]:
    """The API class of any registered agent (the five above, and agents added later)."""
    from rlbase.agents import get_agent

    for cls in Algorithm.__subclasses__():
        if cls.algo == algo:
            return cls
    get_agent(algo)  # a UsageError for an unknown name
    return type(algo.upper(), (Algorithm,), {"algo": algo, "__doc__": f"{algo}: `{algo.upper()}(env, **config)`."})


def load(path: str | Path, env: EnvLike | None = None, **kwargs: Any) -> Algorithm:
    """The agent saved at `path`, whatever its algorithm."""
    import json

    from rlbase.checkpoint import find_checkpoint

    folder = find_checkpoint(path)
    try:
        algo = json.loads((folder / "state.json").read_text())["algo"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RlbaseError(f"{folder}/state.json is missing or corrupt: cannot tell which agent it holds") from None
    return algorithm_class(algo).load(path, env, **kwargs)

