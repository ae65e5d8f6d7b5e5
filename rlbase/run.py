"""One training run's bookkeeping, written once for every agent: run directories and config.json,
seeding of the action generator, episode statistics, the log and checkpoint cadences, checkpoint
contents (weights, optimiser, RNG, counters) for saving and exact resume, and callbacks.

An agent's `train(cfg, env, run)` owns only its algorithm. Its loop talks to the `Run` in five calls:

    counters = run.restore(modules={"model": model}, optimizer=optimizer, counters={"rollouts": 0})
    obs = run.start()                          # seeded reset; resumes count from the checkpoint's step
    while ...:
        ...  env.step ...
        run.record_episodes(info, dones)       # episode returns/lengths, on the device
        if not run.advance(steps, scalars):    # count steps; log, checkpoint, callbacks when due
            break
    return run.finish(model=model)             # final checkpoint (never twice for one step)

`restore` registers what a checkpoint holds and, when resuming, loads it back. Nothing here
reads values from the device except at log intervals, checkpoints and evaluations.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import torch
from torch import nn

from rlbase.checkpoint import (CHECKPOINTS, Checkpoint, atomic_write_text, load_module, optimizer_from_tensors,
                               optimizer_to_tensors, save_checkpoint)
from rlbase.errors import INTERRUPT, RlbaseError, UsageError
from rlbase.safefiles import disk_error
from rlbase.guards import CheckedEnv, NonFiniteError, first_nonfinite_tensor, first_nonfinite_value
from rlbase.stats import RecentEpisodes

if TYPE_CHECKING:
    from rlbase.agents import Agent
    from rlbase.callbacks import Callback
    from rlbase.envs import TensorVecEnv
    from rlbase.logger import RunLogger
    from rlbase.transfer import BackboneSpec

CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------------------------
# Run directories
# --------------------------------------------------------------------------------------------
def new_run_dir(config: Any, algo: str) -> Path:
    """Create `<log_dir>/<run_name>` (a fresh, unique name unless --run-name was given)."""
    name = config.run_name or f"{config.env_id.replace('/', '-').replace(':', '-')}__{algo}__{config.seed}__" \
                              f"{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir = Path(config.log_dir)
    if log_dir.exists() and not log_dir.is_dir():
        raise UsageError(f"invalid --log-dir: {log_dir} is a file, not a folder")
    run_dir = log_dir / name
    suffix = 1
    while (run_dir / CONFIG_FILE).exists():
        if config.run_name:
            raise RlbaseError(f"run directory {run_dir} already exists; use --resume {run_dir} to continue it")
        suffix += 1
        run_dir = log_dir / f"{name}-{suffix}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise disk_error(exc, "the run directory", run_dir) from None
    return run_dir


def write_config(run_dir: Path, algo: str, config: Any, resumed: tuple[int, dict[str, list]] | None = None) -> None:
    """Write config.json (atomically). `resumed` = (step, {field: [old, new]}): a resume at `step`,
    appended to the file's `resumes` record (with the fields it changed)."""
    from rlbase.safefiles import disk_error, read_json

    payload: dict[str, Any] = {"algo": algo, "config": dataclasses.asdict(config)}
    file = run_dir / CONFIG_FILE
    if resumed is not None:
        history = read_json(file).get("resumes", []) if file.exists() else []
        payload["resumes"] = [*(history if isinstance(history, list) else []),
                              {"step": resumed[0], "changed": resumed[1]}]
    try:
        atomic_write_text(file, json.dumps(payload, indent=2, sort_keys=True))
    except OSError as exc:
        raise disk_error(exc, "the run's config", file) from None


def read_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(algo, config values) from a run dir's config.json."""
    from rlbase.safefiles import read_json

    file = path / CONFIG_FILE
    if not file.exists():
        raise RlbaseError(f"{path} has no {CONFIG_FILE}: not an rlbase run directory")
    payload = read_json(file)
    algo, values = (payload.get("algo"), payload.get("config")) if isinstance(payload, dict) else (None, None)
    if not isinstance(algo, str) or not isinstance(values, dict):
        raise RlbaseError(f"{file} is corrupt (fields algo and config are required)")
    from rlbase.config import saved_values

    return algo, saved_values(values)


# --------------------------------------------------------------------------------------------
# Timing of the loop's stages (--time-stages, benchmarks)
# --------------------------------------------------------------------------------------------
class StageTimer:
    """Wall time per stage of a training loop (act, env, store, learn, and `Run.advance`'s log).

    Each `mark(stage)` adds the time since the previous mark to `stage`. On CPU a mark only reads
    the clock (under 1 us on a 2-core CPU, against ~2 ms per 8-env DQN step); on CUDA it
    synchronises the device first, so the split is truthful but the loop loses its overlap with
    the GPU: `--time-stages auto` (the default) times CPU runs only. `Run.log` logs the shares
    (`stage_shares`); benchmarks read `seconds` directly."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()
        self._logged: dict[str, float] = {}

    def restart(self) -> None:
        """Start the next stage now (time since the last mark is not counted: set-up, not the loop)."""
        self._last = time.perf_counter()

    def mark(self, stage: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def stage_shares(self) -> dict[str, float]:
        """`time/<stage>`: each stage's fraction of the timed wall time since the previous call
        (they sum to 1); empty when nothing was timed since."""
        delta = {stage: total - self._logged.get(stage, 0.0) for stage, total in self.seconds.items()}
        self._logged = dict(self.seconds)
        elapsed = sum(delta.values())
        if elapsed <= 0:
            return {}
        return {f"time/{stage}": seconds / elapsed for stage, seconds in delta.items()}


def env_seed(seed: int, step: int = 0) -> int:
    """The seed a run resets its envs with: a 30-bit hash of (run seed, env step) (so `+ i` stays a
    positive int32 for backends that take one, such as ale-py).

    Every backend seeds env `i` of a batch reset with `s` as `s + i` (Gymnasium's convention), so a
    reset seed of `seed + step` made adjacent run seeds replay each other's envs: seed 1's env `i`
    was seed 0's env `i + 1`, and "5 seeds" of a 64-env run trained on nearly the same levels and
    emulator streams. Hashed, the windows `[env_seed, env_seed + num_envs)` of different runs overlap
    only by chance (about 2 * num_envs / 2**30 for a pair)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0] >> 2)


class _NoTimer:
    def restart(self) -> None:
        pass

    def mark(self, stage: str) -> None:
        pass

    def stage_shares(self) -> dict[str, float]:
        return {}


NO_TIMER = _NoTimer()

def stage_timer(setting: str, device: torch.device) -> StageTimer | _NoTimer:
    """The timer `--time-stages setting` asks for on `device`: auto times CPU runs only (a mark there
    is a clock read; elsewhere it would synchronise the device)."""
    on = setting == "on" or (setting == "auto" and device.type == "cpu")
    return StageTimer(device) if on else NO_TIMER


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
class TensorState(Protocol):
    """Extra state saved with a checkpoint (running normalisation): tensors by name, and back."""

    def state(self) -> dict[str, torch.Tensor]: ...

    def load(self, tensors: dict[str, torch.Tensor]) -> None: ...


def _next_multiple(step: int, interval: int) -> int:
    return (step // interval + 1) * interval


class Run:
    """The bookkeeping of one training run (see the module docstring for how a loop uses it).

    `run_dir` None: an in-memory run (no files; benchmarks, tests, `learn()` continuations) whose
    final state is still returned by `finish` as a `Checkpoint`.
    """

    def __init__(self, agent: Agent, cfg: Any, env: TensorVecEnv, backbone: BackboneSpec, *,
                 run_dir: Path | None = None, logger: RunLogger | None = None, resume: Checkpoint | None = None,
                 callbacks: Iterable[Callback] = (), timer: Any = NO_TIMER,
                 make_eval_env: Callable[[int], TensorVecEnv] | None = None,
                 on_restored: Callable[[], None] | None = None):
        self.agent = agent
        self.on_restored = on_restored
        self.config = cfg
        self.env = env
        self.device = env.device
        self.backbone = backbone
        self.run_dir = run_dir
        self.logger = logger
        self.resume = resume
        self.callbacks = list(callbacks)
        # A benchmark's own timer, else the one --time-stages asks for; its shares are logged as time/*.
        self.timer = timer if timer is not NO_TIMER else stage_timer(cfg.time_stages, self.device)
        self.make_eval_env = make_eval_env
        # Actions are drawn from this generator, on the device; network initialisation from torch's
        # global RNG (seeded by the lifecycle before the agent builds its networks).
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        self.episodes = RecentEpisodes(100, self.device, env.num_envs)
        self.global_step = 0
        self.last_saved_step: int | None = None
        self.last_scalars: dict[str, float] = {}  # the newest logged values (host numbers)
        self.last_log_step: int | None = None  # the step they were logged at
        self.stop_reason: str | None = None  # set when a callback stops training early
        self._modules: dict[str, nn.Module] = {}
        self._optimizer: Any = None
        self._state: tuple[TensorState, ...] = ()
        self._buffer: Any = None
        self._counters: dict[str, int] = {}
        self._next_log = self._next_checkpoint = 0

    @property
    def resuming(self) -> bool:
        """True when training continues from a checkpoint (pretrained weights are then not reloaded)."""
        return self.resume is not None

    # -- what a checkpoint holds -------------------------------------------------------------
    def restore(self, *, modules: dict[str, nn.Module], optimizer: Any, counters: dict[str, int],
                state: Iterable[TensorState] = (), buffer: Any = None) -> dict[str, int]:
        """Register what a checkpoint holds; when resuming, load it back. Returns `counters` (the
        agent's own counters, which it updates in place), with their saved values when resuming.

        `modules` are saved as `<name>.<parameter>`; `buffer` (a replay buffer with
        `state_dict`/`load_state_dict`) goes to disk only with --save-buffer.
        """
        self._modules, self._optimizer, self._state = dict(modules), optimizer, tuple(state)
        self._buffer, self._counters = buffer, counters
        if self.resume is None:
            return counters
        tensors, saved, buffer_state = self.resume
        try:
            for name, module in self._modules.items():
                load_module(module, tensors, f"{name}.")
            optimizer_from_tensors(optimizer, tensors, saved["optimizer"])
            for item in self._state:
                item.load(tensors)
            self.episodes.load(tensors)
            torch.set_rng_state(tensors["rng.torch"].cpu())
            self.generator.set_state(tensors["rng.actions"].cpu())
            values = dict(saved["counters"])
            self.global_step = int(values.pop("global_step"))
            if buffer is not None and buffer_state is not None:
                buffer.load_state_dict(buffer_state)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            lines = [f"{exc.args[0]} is missing"] if isinstance(exc, KeyError) and exc.args else \
                str(exc).strip().splitlines() or [type(exc).__name__]
            raise RlbaseError(f"the checkpoint does not fit this run's networks ({lines[0]})") from None
        counters.update({k: v for k, v in values.items() if k in counters})
        self.last_saved_step = self.global_step  # resuming from it: already on disk
        if self.on_restored is not None:
            self.on_restored()
        return counters

    def tensors(self, weights_only: bool = False) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors (live references): module weights and extra state, plus the
        optimiser and RNG states unless `weights_only` (what a policy needs)."""
        tensors = {f"{name}.{k}": v for name, module in self._modules.items() for k, v in module.state_dict().items()}
        for item in self._state:
            tensors.update(item.state())
        if not weights_only:
            tensors.update(self.checkpoint().tensors)
        return tensors

    def checkpoint(self) -> Checkpoint:
        """The whole training state now: what `--resume` (or a `learn()` continuation) needs."""
        tensors = self.tensors(weights_only=True)
        optim_tensors, optim_meta = optimizer_to_tensors(self._optimizer)
        tensors.update(self.episodes.state())
        tensors.update(optim_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.actions"] = self.generator.get_state()
        state = {"counters": {"global_step": self.global_step, **self._counters}, "optimizer": optim_meta}
        return Checkpoint(tensors, state, self._buffer.state_dict() if self._buffer is not None else None)

    def save(self, kind: str = CHECKPOINTS, extra: dict[str, Any] | None = None) -> Path | None:
        """Write the current state as checkpoint `global_step` (of `kind`: checkpoints or best);
        `extra` (JSON values) goes into its state.json."""
        if self.run_dir is None or not self._modules:
            return None
        tensors, state, buffer = self.checkpoint()
        bad = first_nonfinite_tensor(tensors)
        self._check_finite(f"{bad} holds NaN or infinity" if bad else None)
        # The checkpoint carries its own config so it can be evaluated on its own.
        state = {"algo": self.agent.name, "config": dataclasses.asdict(self.config), **state, **(extra or {})}
        keep_buffer = buffer is not None and self.config.save_buffer and kind == CHECKPOINTS
        path = save_checkpoint(self.run_dir, self.global_step, tensors, state, buffer if keep_buffer else None,
                               keep_last=3 if kind == CHECKPOINTS else 1, folder=kind)
        if kind == CHECKPOINTS:
            self.last_saved_step = self.global_step
        if self.logger is not None:
            self.logger.flush()
        return path

    # -- the loop ----------------------------------------------------------------------------
    def start(self) -> Any:
        """Reset the envs (seeded by the config's seed and the step, so a resumed run starts fresh
        episodes: `env_seed`), begin the cadences and tell the callbacks; returns the first observations."""
        cfg = self.config
        if isinstance(self.env, CheckedEnv):
            self.env.step_offset = self.global_step
        obs, _ = self.env.reset(seed=env_seed(cfg.seed, self.global_step))
        self._next_log = _next_multiple(self.global_step, cfg.log_interval)
        self._next_checkpoint = _next_multiple(self.global_step, cfg.checkpoint_interval) \
            if cfg.checkpoint_interval else None
        for callback in self.callbacks:
            callback.on_start(self)
        self.timer.restart()  # the loop's first stage starts here, not at set-up
        return obs

    def record_episodes(self, info: dict[str, Any], dones: torch.Tensor, rows: slice | None = None) -> None:
        """Count the episodes that ended at this step (returns and lengths stay on the device);
        `rows`: the step was of those envs only (a half of a `SplitVecEnv`)."""
        self.episodes.add(info["episode_return"], info["episode_length"], dones, rows)

    @property
    def done(self) -> bool:
        return self.global_step >= self.config.total_timesteps or self.stop_reason is not None

    def advance(self, steps: int, scalars: Callable[[], dict[str, float]]) -> bool:
        """Count `steps` env steps; when due, log (`scalars()` gives the agent's own values, read
        from the device only then), run the callbacks and checkpoint. False: stop training."""
        self.global_step += steps
        if INTERRUPT.requested:  # a Ctrl-C whose KeyboardInterrupt was lost (rlbase.errors.INTERRUPT)
            raise KeyboardInterrupt
        cfg = self.config
        if self.logger is not None:
            self.logger.progress(self.global_step)
        logged = False
        if self.global_step >= self._next_log or self.global_step >= cfg.total_timesteps:
            self._next_log = _next_multiple(self.global_step, cfg.log_interval)
            self.log(scalars())
            logged = True
        for callback in self.callbacks:
            if callback.on_step(self) is False and self.stop_reason is None:
                self.stop_reason = f"stopped by {callback.name} at step {self.global_step}"
        if self.done and not logged:  # a stopped run logs where it stopped
            self.log(scalars())
        if self._next_checkpoint is not None and self.global_step >= self._next_checkpoint and not self.done:
            self._next_checkpoint = _next_multiple(self.global_step, cfg.checkpoint_interval)
            self.save()
        self.timer.mark("log")  # logging, callbacks (evaluations) and checkpoints
        return not self.done

    def episode_scalars(self) -> dict[str, float]:
        """`rollout/ep_rew_mean` and `rollout/ep_len_mean` over the last 100 episodes (one host sync)."""
        summary = self.episodes.summary()
        if not summary["episodes"]:
            return {}
        return {"rollout/ep_rew_mean": summary["ep_rew_mean"], "rollout/ep_len_mean": summary["ep_len_mean"]}

    def log(self, scalars: dict[str, float]) -> None:
        """Log the agent's values and the episode statistics at the current step; stop training
        (`NonFiniteError`) when one of them, or with --check-env-values the env's, is not finite."""
        values = {**scalars, **self.episode_scalars(), **self.timer.stage_shares()}
        self.last_scalars, self.last_log_step = values, self.global_step
        if self.logger is not None:
            self.logger.log(self.global_step, values)
        self._check_finite(first_nonfinite_value(values))

    def _check_finite(self, problem: str | None) -> None:
        """Raise NonFiniteError for `problem` (or the env's first non-finite value, which caused it)."""
        env_problem = self.env.problem() if isinstance(self.env, CheckedEnv) else None
        problem = env_problem or problem
        if problem is None:
            return
        kept = f"the newest checkpoint, step {self.last_saved_step:,}, is kept" if self.last_saved_step is not None \
            and self.run_dir is not None else "no checkpoint was written"
        hint = "" if env_problem else " (lower --learning-rate, or find a NaN from the env with --check-env-values)"
        raise NonFiniteError(f"training stopped at step {self.global_step:,}: {problem}; {kept}{hint}")

    def finish(self, **extra: Any) -> dict[str, Any]:
        """End of training: the final checkpoint (unless this step is already saved), the callbacks'
        `on_end`; returns the metrics (counters, recent episodes, the final `checkpoint`) and `extra`."""
        if self.last_saved_step != self.global_step:
            self.save()
        for callback in self.callbacks:
            callback.on_end(self)
        summary = self.episodes.summary()
        return {"global_step": self.global_step, **self._counters, "episodes": summary["episodes"],
                "ep_rew_mean": summary.get("ep_rew_mean"), "ep_len_mean": summary.get("ep_len_mean"),
                "stop_reason": self.stop_reason, "checkpoint": self.checkpoint(), **extra}

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, env: TensorVecEnv, episodes: int, seed: int) -> dict[str, Any]:
        """Play `episodes` episodes of the current policy (the config's evaluation policy) on `env`:
        the report of `rlbase eval`. The training envs, the action generator and torch's RNG are
        left exactly as they were, so evaluating does not change the training run."""
        from rlbase.evaluate import evaluate_policy

        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # building the policy's network draws init values
            policy = self.agent.load_policy(self.config, self.tensors(weights_only=True), env.single_observation_space,
                                            env.single_action_space, env.device)
            return evaluate_policy(env, policy, episodes, seed)
