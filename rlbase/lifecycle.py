"""The run lifecycle: every training run goes through here, whichever door it came in by (the
`rlbase` command, the Python API, scripts, benchmarks, sweep trials).

    plan:    resolve the config (dataclass defaults < env-family preset < env-id preset < the
             preset's values for the env's kind of observation < the named recipe of the user's
             `preset` value, if any < the user's values)
             -> validate -> build the env -> resolve the backbone and check transfer weights once
             -> check the agent can act in the env          (nothing written yet: a UsageError for
                                                              anything the user got wrong)
    execute: run dir + config.json -> logger -> the agent's loop, with rlbase.run.Run doing the
             bookkeeping and the callbacks (evaluation when --eval-freq) -> final checkpoint -> close

    p = plan("ppo", {"env_id": "rlbase/CartPole-v1", "seed": 1})
    try:
        metrics = execute(p)
    finally:
        p.close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

from rlbase.errors import UsageError

if TYPE_CHECKING:

    from rlbase.agents import Agent
    from rlbase.checkpoint import Checkpoint
    from rlbase.envs import TensorVecEnv
    from rlbase.transfer import BackboneSpec

NEW = "new"
"""`execute(run_dir=NEW)`: create a fresh run directory under the config's log_dir."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM: `signal` 15) during training, after the run's state was checkpointed
    (`step`, in `run_dir`)."""

    def __init__(self, run_dir: Path | None, step: int, signal: int = 2):
        super().__init__(f"interrupted at step {step}")
        self.run_dir, self.step, self.signal = run_dir, step, signal


class _Terminated(KeyboardInterrupt):
    """SIGTERM during training: handled like Ctrl-C (checkpoint, then stop)."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Any:
    """While training, SIGTERM (a job scheduler's or `kill`'s stop) interrupts like Ctrl-C does, so
    the run is checkpointed. Only the main thread can take signals: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Plan:
    """A training run, resolved and checked, ready to `execute`."""

    agent: Agent
    config: Any
    env: TensorVecEnv
    backbone: BackboneSpec
    owns_env: bool
    """Whether `close` closes the env (it was built here, not handed in)."""
    resume: Checkpoint | None = None
    """The state training continues from (a checkpoint, or a previous `learn()`)."""
    run_dir: Path | None = None
    """The run directory being resumed, if any."""
    make_eval_env: Callable[[int], TensorVecEnv] | None = None
    """`make_eval_env(num_envs)`: envs of the eval split, for evaluation during training."""
    changes: dict[str, list] = dataclasses.field(default_factory=dict)
    """Config fields a resume changed: field -> [old, new] (recorded in config.json)."""

    @property
    def start_step(self) -> int:
        return int(self.resume.state["counters"]["global_step"]) if self.resume is not None else 0

    def close(self) -> None:
        if self.owns_env:
            self.env.close()


def plan(algo: str, values: dict[str, Any], *, env: TensorVecEnv | None = None,
         make_eval_env: Callable[[int], TensorVecEnv] | None = None) -> Plan:
    """A fresh run of agent `algo` with the user's `values` (config field -> value) on top of the
    presets, exactly as `rlbase train` resolves them. `env` replaces the env built from the id
    (its id and number of envs then go into the config)."""
    from rlbase.agents import get_agent
    from rlbase.config import resolve_config

    agent = get_agent(algo)
    values = dict(values)
    if env is not None:
        values.setdefault("env_id", env.env_id)
        if env.env_kwargs:  # what it was made with, so evaluation envs are the same env
            values.setdefault("env_kwargs", dict(env.env_kwargs))
        if values.get("num_envs", env.num_envs) != env.num_envs:
            raise UsageError(f"num_envs={values['num_envs']} does not match the env handed in ({env.num_envs} envs)")
        values["num_envs"] = env.num_envs
    if not values.get("env_id"):
        raise UsageError(f"--env is required, e.g. rlbase train {algo} --env CartPole-v1")
    cfg = resolve_config(agent.Config, algo, values)
    agent.validate(cfg)
    return _complete(agent, cfg, env, make_eval_env, user_values=values)


def plan_config(cfg: Any, *, env: TensorVecEnv | None = None, resume: Checkpoint | None = None,
                run_dir: Path | None = None, make_eval_env: Callable[[int], TensorVecEnv] | None = None) -> Plan:
    """A run of a ready config (no presets applied): continuing from `resume` when given."""
    from rlbase.checkpoint import Checkpoint

    agent = agent_of(cfg)
    resume = Checkpoint(*resume) if resume is not None else None
    if env is not None and env.num_envs != cfg.num_envs:
        cfg = dataclasses.replace(cfg, num_envs=env.num_envs)
    agent.validate(cfg)
    return _complete(agent, cfg, env, make_eval_env, resume=resume, run_dir=run_dir)


RESUMABLE_CHANGES = frozenset({
    "total_timesteps", "log_interval", "checkpoint_interval", "eval_freq", "eval_episodes", "eval_epsilon",
    "eval_deterministic", "device", "torch_threads", "compile", "save_buffer", "check_env_values", "log_dir",
    "run_name", "learning_rate", "lr_restart_step", "split_envs"})
"""Config fields `--resume` may change: the schedule (total steps, stretching the lr and exploration
schedules with it; the learning rate and where its annealing starts), the log, checkpoint and
evaluation cadences, and where and how it computes.
Every other field shapes the networks, the optimiser, the replay or rollout layout, the env batch
or the data, and is refused with one line naming it."""


class RunFinished(UsageError):
    """`--resume` of a run whose newest checkpoint already holds all of its `total_timesteps`."""

    def __init__(self, run_dir: Path, step: int):
        super().__init__(f"{run_dir} already reached {step} steps; pass a larger --total-timesteps to continue")
        self.step = step


def plan_resume(run_dir: str | Path, algo: str, values: dict[str, Any]) -> Plan:
    """Continue the run in `run_dir` from its newest complete checkpoint; `values` may change the
    fields in RESUMABLE_CHANGES (the changes are recorded in config.json once the checkpoint has
    loaded into the networks). Nothing in the run directory is written here."""
    from rlbase.checkpoint import load_checkpoint
    from rlbase.config import flag_name, from_dict, saved_config
    from rlbase.run import CONFIG_FILE, read_config
    from rlbase.utils import resolve_device

    run_dir = Path(run_dir)
    saved_algo, saved = read_config(run_dir)
    if saved_algo != algo:
        raise UsageError(f"{run_dir} is a {saved_algo} run, not {algo}")
    source = str(run_dir / CONFIG_FILE)
    agent, saved_cfg = saved_config(algo, saved, source)
    cfg = from_dict(agent.Config, {**saved, **values}, "--resume")
    changed = {f: (getattr(saved_cfg, f), getattr(cfg, f)) for f in values
               if getattr(cfg, f) != getattr(saved_cfg, f)}
    for field, (old, new) in changed.items():
        if field not in RESUMABLE_CHANGES:
            raise UsageError(f"{flag_name(field)} cannot change when resuming ({_shown(old)} in {source}, "
                             f"{_shown(new)} given): it shapes the networks, optimiser, replay or envs of the run; "
                             "start a new run instead")
    agent.validate(cfg)
    resume = load_checkpoint(run_dir, resolve_device(cfg.device), with_buffer=True)
    step = resume.state["step"]
    if step >= cfg.total_timesteps:
        raise RunFinished(run_dir, step)
    p = _complete(agent, cfg, None, None, resume=resume, run_dir=run_dir)
    p.changes = {field: list(pair) for field, pair in changed.items()}
    return p


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value) if value != "" else "none"


def agent_of(cfg: Any) -> Agent:
    """The agent whose Config `cfg` is."""
    from rlbase.agents import ALGORITHMS, get_agent

    for name in ALGORITHMS:
        agent = get_agent(name)
        if type(cfg) is agent.Config:
            return agent
    raise TypeError(f"{type(cfg).__name__} is not the Config of a registered agent")


def _complete(agent: Agent, cfg: Any, env: TensorVecEnv | None, make_eval_env: Callable[[int], TensorVecEnv] | None,
              *, resume: Checkpoint | None = None, run_dir: Path | None = None,
              user_values: dict[str, Any] | None = None) -> Plan:
    """Build the env (unless given), apply the preset's values for its kind of observation (fresh
    runs from values), resolve the backbone, and check that the agent can act in the env."""
    from rlbase import transfer
    from rlbase.backbones import observation_kind
    from rlbase.config import load_preset, make_env, resolve_config
    from rlbase.utils import resolve_device

    owns_env = env is None
    if env is None:
        env = make_env(cfg, cfg.num_envs, resolve_device(cfg.device))
    elif getattr(cfg, "split_envs", False) and getattr(env, "groups", None) is None:
        raise UsageError("split_envs=True needs the env in two halves: pass a rlbase.envs.SplitVecEnv, "
                         "or let rlbase build the env")
    try:
        space = env.single_observation_space
        if user_values is not None:
            kind = observation_kind(space)
            if load_preset(agent.name, cfg.env_id, kind) != load_preset(agent.name, cfg.env_id):
                cfg = resolve_config(agent.Config, agent.name, user_values, kind)
                agent.validate(cfg)
            if cfg.backbone_weights and "backbone" not in user_values:
                cfg = dataclasses.replace(cfg, backbone="auto")  # the artifact's backbone, not the preset's
        agent.check_env(cfg, env)  # before a backbone is fitted to observations the agent may not take
        if resume is None:
            cfg, backbone = transfer.resolve(cfg, space)
        else:  # weights come from the checkpoint; the artifacts are not read again
            backbone = transfer.parse(cfg, space)
    except BaseException:
        if owns_env:
            env.close()
        raise
    if make_eval_env is None:
        device = env.device
        make_eval_env = lambda num_envs: make_env(cfg, num_envs, device, training=False)  # noqa: E731
    return Plan(agent, cfg, env, backbone, owns_env, resume, run_dir, make_eval_env)


def execute(plan: Plan, *, run_dir: Union[str, Path, None] = NEW, callbacks: Any = None,
            progress: bool | None = None, timer: Any = None,
            announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the planned training and return its metrics (`rlbase.run.Run.finish`), with `run_dir`.

    `run_dir`: NEW (a fresh directory under the config's log_dir; a resumed plan keeps its own), a
    path, or None for an in-memory run (no files). `callbacks`: see rlbase.callbacks; --eval-freq
    adds an EvalCallback. `progress`: the progress display (None: a bar on a terminal, status
    lines otherwise). `announce(line)` receives the start line. Ctrl-C checkpoints the run and
    raises `TrainingInterrupted`. The env is not closed here: `plan.close()` does.
    """
    from rlbase.callbacks import EvalCallback, as_callbacks
    from rlbase.config import to_json, training_threads
    from rlbase.logger import RunLogger
    from rlbase.run import NO_TIMER, Run, new_run_dir, write_config
    from rlbase.utils import intra_op_threads, seed_everything

    from rlbase.guards import CheckedEnv

    cfg, agent, env = plan.config, plan.agent, plan.env
    if cfg.check_env_values:
        env = CheckedEnv(env)
    callback_list = as_callbacks(callbacks)
    evaluation = EvalCallback(cfg.eval_freq, cfg.eval_episodes) if cfg.eval_freq > 0 else None
    if evaluation is not None:
        callback_list.insert(0, evaluation)
    if run_dir == NEW:
        run_dir = plan.run_dir or new_run_dir(cfg, agent.name)
    run_dir = Path(run_dir) if run_dir is not None else None
    logger = None
    resumed_here = plan.resume is not None and run_dir is not None and plan.run_dir is not None \
        and run_dir.resolve() == plan.run_dir.resolve()
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resumed_here:
            write_config(run_dir, agent.name, cfg)
        logger = RunLogger(run_dir, cfg.total_timesteps, start_step=plan.start_step,
                           hparams=json.loads(to_json(cfg)), progress=progress)
    # A resumed run's config.json is rewritten only once its checkpoint has loaded into the networks.
    on_restored = (lambda: write_config(run_dir, agent.name, cfg, resumed=(plan.start_step, plan.changes))) \
        if resumed_here else None
    run = Run(agent, cfg, env, plan.backbone, run_dir=run_dir, logger=logger, resume=plan.resume,
              callbacks=callback_list, timer=timer or NO_TIMER, make_eval_env=plan.make_eval_env,
              on_restored=on_restored)
    if announce is not None:
        announce(start_line(plan, run_dir))
    try:
        if logger is not None:
            logger.start_progress()
        seed_everything(cfg.seed)  # before the agent builds its networks: their initial weights
        with _sigterm_as_interrupt(), intra_op_threads(training_threads(cfg, plan.backbone.name, env.device.type)):
            metrics = agent.train(cfg, env, run)
    except KeyboardInterrupt as stop:
        run.save()
        raise TrainingInterrupted(run_dir, run.global_step, 15 if isinstance(stop, _Terminated) else 2) from None
    finally:
        for callback in callback_list:
            callback.close()
        if logger is not None:
            logger.close()
    metrics["run_dir"] = run_dir
    if evaluation is not None:
        metrics["evaluations"] = evaluation.history
        metrics["best_eval"] = {"step": evaluation.best_step, "mean_return": evaluation.best_mean}
    return metrics


def start_line(plan: Plan, run_dir: Path | None) -> str:
    """What a run says when it starts: agent, env, backbone, envs, device, steps and where it writes."""
    from rlbase.words import plural

    cfg = plan.config
    resumed = f" from step {plan.start_step:,}" if plan.resume is not None else ""
    evaluation = f", evaluating every {plural(cfg.eval_freq, 'step')}" if cfg.eval_freq else ""
    where = f"; run dir {run_dir}" if run_dir is not None else ""
    return (f"rlbase: training {plan.agent.name} on {cfg.env_id}: backbone {plan.backbone.name}, "
            f"{plural(cfg.num_envs, 'env')} on {plan.env.device}, {plural(cfg.total_timesteps, 'step')}"
            f"{resumed}{evaluation}{where}")


def train(algo: str, values: dict[str, Any], *, run_dir: Union[str, Path, None] = NEW, callbacks: Any = None,
          progress: bool | None = False, timer: Any = None, env: TensorVecEnv | None = None) -> dict[str, Any]:
    """Plan and execute a fresh run of `algo` with `values` (scripts, benchmarks, sweeps): the
    one-call form of `plan` + `execute`. Closes the env it built."""
    p = plan(algo, values, env=env)
    try:
        return execute(p, run_dir=run_dir, callbacks=callbacks, progress=progress, timer=timer)
    finally:
        p.close()


def train_config(cfg: Any, env: TensorVecEnv | None = None, *, run_dir: Union[str, Path, None] = None,
                 callbacks: Any = None, timer: Any = None, resume: Checkpoint | None = None) -> dict[str, Any]:
    """Train a ready config (no presets) on `env` (or the config's env): in memory unless `run_dir`
    is given. For tests, benchmarks and notebooks that build their own config."""
    p = plan_config(cfg, env=env, resume=resume)
    try:
        return execute(p, run_dir=run_dir, callbacks=callbacks, progress=False, timer=timer)
    finally:
        p.close()
