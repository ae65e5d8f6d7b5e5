"""Callbacks: hooks into a training run, and the ready ones (evaluation with a best checkpoint,
stop at a return, checkpoint every N steps).

A callback subclasses `Callback` and overrides what it needs. `on_step` runs after every loop
iteration (a rollout and its update for policy-gradient agents, one vector step for DQN): keep it
cheap, and read device values only when you act (`run.last_scalars` holds the newest logged ones
as host numbers). Returning False from `on_step` or `on_eval` stops training; the run then logs
and checkpoints where it stopped, and its metrics say why (`stop_reason`).

    from rlbase import PPO
    from rlbase.callbacks import EvalCallback, StopOnReturn

    PPO("rlbase/CartPole-v1").learn(callback=[EvalCallback(every=8_192, episodes=10), StopOnReturn(475)])
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Union

from rlbase.errors import RlbaseError, UsageError

if TYPE_CHECKING:
    from rlbase.envs import TensorVecEnv
    from rlbase.run import Run


class Callback:
    """Base class: every hook does nothing."""

    @property
    def name(self) -> str:
        """What the run calls this callback (in `stop_reason`)."""
        return type(self).__name__

    def on_start(self, run: Run) -> None:
        """Before the first step (after a resume has restored the counters: `run.global_step`)."""

    def on_step(self, run: Run) -> bool | None:
        """After each loop iteration; False stops training."""

    def on_eval(self, run: Run, report: dict[str, Any]) -> bool | None:
        """After each evaluation (`report`: what `rlbase eval` reports); False stops training."""

    def on_end(self, run: Run) -> None:
        """After the final checkpoint."""

    def close(self) -> None:
        """Release what the callback holds (envs, files): called once the run is over, also when it failed."""


class _StepFunction(Callback):
    """A plain function `fn(run) -> bool | None`, called as `on_step`."""

    def __init__(self, fn: Callable[[Run], bool | None]):
        self.fn = fn

    @property
    def name(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)

    def on_step(self, run: Run) -> bool | None:
        return self.fn(run)


CallbackLike = Union[Callback, Callable[["Run"], Any], Iterable[Any], None]


def as_callbacks(callback: CallbackLike) -> list[Callback]:
    """A Callback, a function (used as `on_step`), a list of either, or None -> a list of callbacks."""
    if callback is None:
        return []
    if isinstance(callback, Callback):
        return [callback]
    if callable(callback):
        return [_StepFunction(callback)]
    try:
        items = list(callback)
    except TypeError:
        raise TypeError(f"callback must be a rlbase.callbacks.Callback, a function or a list of them, "
                        f"got {type(callback).__name__}") from None
    return [c for item in items for c in as_callbacks(item)]


class EveryNSteps(Callback):
    """Calls `self.trigger(run)` once every `every` env steps (at the first iteration that reaches
    each multiple); subclasses implement `trigger`."""

    def __init__(self, every: int):
        if not isinstance(every, int) or every <= 0:
            raise ValueError(f"every must be a positive number of steps, got {every!r}")
        self.every = every
        self.next_step = every

    def on_start(self, run: Run) -> None:
        self.next_step = (run.global_step // self.every + 1) * self.every

    def on_step(self, run: Run) -> bool | None:
        if run.global_step < self.next_step:
            return None
        self.next_step = (run.global_step // self.every + 1) * self.every
        return self.trigger(run)

    def trigger(self, run: Run) -> bool | None:
        raise NotImplementedError


class CheckpointEvery(EveryNSteps):
    """Save a checkpoint every `every` steps (on top of --checkpoint-interval; the newest three are kept)."""

    def trigger(self, run: Run) -> None:
        if run.last_saved_step != run.global_step and not run.done:  # the final one is saved by the run
            run.save()


class StopOnReturn(Callback):
    """Stop training once the mean return reaches `threshold`: the evaluation mean (`source="eval"`,
    needs an EvalCallback or --eval-freq) or the mean of the last 100 training episodes at a
    logged point (`source="train"`)."""

    def __init__(self, threshold: float, source: str = "eval"):
        if source not in ("eval", "train"):
            raise ValueError(f"source must be 'eval' or 'train', got {source!r}")
        self.threshold = threshold
        self.source = source

    def on_step(self, run: Run) -> bool | None:
        if self.source == "train":
            value = run.last_scalars.get("rollout/ep_rew_mean")
            return not (value is not None and value >= self.threshold)
        return None

    def on_eval(self, run: Run, report: dict[str, Any]) -> bool | None:
        return not (self.source == "eval" and report["mean_return"] >= self.threshold)


def saved_best(run_dir: Path) -> tuple[int | None, float]:
    """(step, evaluation mean) of the best checkpoint kept in `run_dir` (None, -inf when there is
    none, or when its state.json does not say; a run file is input, not trusted)."""
    from rlbase.checkpoint import BEST, STATE_FILE, find_checkpoint

    try:
        state = json.loads((find_checkpoint(run_dir, BEST) / STATE_FILE).read_text())
        step, mean = state["step"], state["evaluation"]["mean_return"]
    except (RlbaseError, OSError, ValueError, KeyError, TypeError):
        return None, -math.inf
    if not isinstance(step, int) or isinstance(mean, bool) or not isinstance(mean, (int, float)) \
            or not math.isfinite(mean):
        return None, -math.inf
    return step, float(mean)


def check_same_spaces(eval_env: TensorVecEnv, env: TensorVecEnv) -> None:
    """A UsageError when evaluation envs do not take the training envs' observations and actions."""
    if (eval_env.single_observation_space != env.single_observation_space
            or eval_env.single_action_space != env.single_action_space):
        raise UsageError(f"the evaluation envs ({eval_env.env_id}: {eval_env.single_observation_space}) do not match "
                         f"the training envs ({env.env_id}: {env.single_observation_space}); pass the env's keyword "
                         "arguments (env_kwargs) or the evaluation envs themselves")


class EvalCallback(EveryNSteps):
    """Evaluate the policy every `every` steps and at the end of training, on its own envs.

    Plays `episodes` episodes of the eval split (held-out levels of procedural envs, full games
    with the real score for Atari) with the evaluation policy, always from evaluation seed `seed`
    so evaluations compare like with like; logs SB3's `eval/mean_reward` and `eval/mean_ep_length`
    plus the env's outcomes (`eval/success`, ...) to TensorBoard and metrics.jsonl; and with
    `keep_best` saves the checkpoint with the best mean so far into `best/` (`rlbase eval RUN --best`).
    Because `best/` is chosen on these episodes, its score on them is optimistic: report a
    different `rlbase eval --seed`.

    Evaluating does not change training: it uses separate envs and its own generator, and leaves
    torch's RNG as it was (a run with and without evaluation has the same training curve).
    `env` overrides the eval envs (by default: the run's env id, `min(episodes, 8)` copies).
    """

    def __init__(self, every: int, episodes: int = 10, seed: int = 0, keep_best: bool = True,
                 env: TensorVecEnv | None = None):
        super().__init__(every)
        if not isinstance(episodes, int) or episodes <= 0:
            raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
        self.episodes, self.seed, self.keep_best = episodes, seed, keep_best
        self.env, self._owns_env = env, env is None
        self.best_mean = -math.inf
        self.best_step: int | None = None
        self.history: list[dict[str, Any]] = []  # one row per evaluation: step, mean, std, length, outcomes, seconds

    def on_start(self, run: Run) -> None:
        super().on_start(run)
        if run.resuming and self.keep_best and run.run_dir is not None:
            self.best_step, self.best_mean = saved_best(run.run_dir)
        if self.env is None:
            if run.make_eval_env is None:
                raise ValueError("EvalCallback needs eval envs: pass env=... (this run cannot build them from an id)")
            self.env = run.make_eval_env(min(self.episodes, 8))
        check_same_spaces(self.env, run.env)

    def trigger(self, run: Run) -> bool | None:
        return self.evaluate(run)

    def evaluate(self, run: Run) -> bool | None:
        began = time.perf_counter()
        report = run.evaluate(self.env, self.episodes, self.seed)
        seconds = time.perf_counter() - began
        scalars = {"eval/mean_reward": report["mean_return"], "eval/mean_ep_length": report["mean_length"],
                   **{f"eval/{key}": value for key, value in report["outcomes"].items()}}
        if run.logger is not None:
            run.logger.log(run.global_step, scalars, fps=False)
        self.history.append({"step": run.global_step, "mean_return": report["mean_return"],
                             "std_return": report["std_return"], "mean_length": report["mean_length"],
                             "outcomes": report["outcomes"], "seconds": seconds})
        if report["mean_return"] > self.best_mean:
            self.best_mean, self.best_step = report["mean_return"], run.global_step
            if self.keep_best:  # the mean goes with it, so a resumed run knows what to beat
                from rlbase.checkpoint import BEST

                run.save(BEST, extra={"evaluation": {"mean_return": report["mean_return"], "seed": self.seed,
                                                     "episodes": self.episodes}})
        keep_going = True
        for callback in run.callbacks:
            if callback.on_eval(run, report) is False:
                keep_going = False
                if run.stop_reason is None:
                    run.stop_reason = f"stopped by {callback.name} at step {run.global_step}"
        return keep_going

    def on_end(self, run: Run) -> None:
        if not self.history or self.history[-1]["step"] != run.global_step:
            self.evaluate(run)

    def close(self) -> None:
        if self._owns_env and self.env is not None:
            self.env.close()
            self.env = None
