"""`rlbase sweep`: many seeds and hyperparameter searches, each trial an ordinary rlbase run, on Ray Tune.

    rlbase sweep ppo --env rlbase/CartPole-v1 --seeds 0-9                  # 10 seeds of the preset
    rlbase sweep ppo --env CartPole-v1 --space space.yaml --num-samples 8 --seeds 0-2 --scheduler asha

A sweep directory (`<log_dir>/<name>/`):

    sweep.json        what was asked: algo, train values, search space, seeds, search, resources
    trials.json       one entry per trial: its values, seed, run dir, status, last and best metric
    runs/<trial>/     each trial's run directory (TensorBoard, metrics.jsonl, checkpoints; `rlbase eval`-able)
    results.csv/.json one row per trial, written when the sweep ends
    best_config.yaml  the best trial's values, for `rlbase train ALGO --config best_config.yaml`
    ray/              Ray Tune's own files (pickles: rlbase never reads them back)

Trials report to Tune through a callback of the run (rlbase.callbacks), at every logged point and
every evaluation. Grid and random search are drawn up front (random values from --search-seed), so a
sweep interrupted by Ctrl-C or a killed driver resumes with `--resume SWEEP_DIR` from sweep.json and
trials.json: finished trials are kept, the others continue from their own rlbase checkpoints. On
Ctrl-C, Tune stops the trials and saves its state; the command then prints how many trials finished
and the resume command, and exits 130 (a second Ctrl-C stops at once).
Optuna (`--search optuna`, Tune's OptunaSearch, each suggestion played on every seed) samples as it
goes; on resume, the finished trials are told to it and the unfinished ones are sampled again.
Ray's own restore is not used: it unpickles files from the sweep directory.

Search space file (YAML or JSON), one entry per config field:

    learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
    num_steps: {choice: [16, 32, 64]}        # random search samples it; grid search takes them all
    gae_lambda: {uniform: [0.9, 0.99]}
    update_epochs: {randint: [2, 11]}        # integers from 2 to 10
    ent_coef: {grid: [0.0, 0.01]}            # every value, crossed with everything else
    clip_coef: 0.2                           # a fixed value
    cases:                                   # named sets of values (arms), crossed with the rest
      scratch: {}
      frozen: {backbone_weights: pretrained/maze, freeze_backbone: true}
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from rlbase.callbacks import Callback
from rlbase.safefiles import atomic_write_text
from rlbase.errors import INTERRUPT, RlbaseError, UsageError
from rlbase.space import CASES, draw_trials, parse_space
from rlbase.sweep_ray import start_ray, stop_ray, trials_in_prestarted_workers
from rlbase.sweep_runs import FINISHED, check_run_dirs, write_results

SWEEP_FILE, TRIALS_FILE = "sweep.json", "trials.json"
SEARCHES = ("random", "optuna")
SCHEDULERS = ("fifo", "asha")


# --------------------------------------------------------------------------------------------
# The trial: one ordinary rlbase run, reporting to Tune
# --------------------------------------------------------------------------------------------
class _TuneReport(Callback):
    """Run callback: every logged point and every evaluation goes to Tune (`global_step` with it)."""

    def __init__(self, report: Callable[[dict[str, Any]], None]):
        self.report = report
        self.reported_step: int | None = None
        self.evaluation: dict[str, float] = {}  # the newest evaluation, carried in every report after it

    def on_step(self, run: Any) -> None:
        if run.last_log_step == run.global_step and self.reported_step != run.global_step:
            self.reported_step = run.global_step
            self.report({"global_step": run.global_step, **run.last_scalars, **self.evaluation})

    def on_eval(self, run: Any, report: dict[str, Any]) -> None:
        self.evaluation = {"eval/mean_reward": report["mean_return"],
                           **{f"eval/{k}": v for k, v in report["outcomes"].items()}}
        self.report({"global_step": run.global_step, **run.last_scalars, **self.evaluation})


def run_trial(spec: dict[str, Any]) -> None:
    """Tune's function trainable: train (or resume) the trial's rlbase run, reporting as it goes."""
    from ray import tune

    from rlbase.lifecycle import RunFinished, execute, plan, plan_resume

    trial = dict(spec["trial"]) if "trial" in spec else {}
    if "__trial_index__" in spec:  # optuna + Repeater: the seed of this repeat
        trial = {"values": {k: v for k, v in spec.items() if not k.startswith("__")},
                 "seed": spec["__seeds"][spec["__trial_index__"]]}
    run_dir = Path(trial.get("run_dir") or Path(spec["__sweep_dir"]) / "runs" / tune.get_context().get_trial_id())
    values = {**spec["__base"], **trial["values"], "seed": trial["seed"], "torch_threads": spec["__threads"]}
    algo = spec["__algo"]
    resuming = (run_dir / "checkpoints" / "latest.json").is_file()
    if not resuming and run_dir.exists():  # an attempt killed before its first checkpoint: start it over
        import shutil

        shutil.rmtree(run_dir)
    try:
        p = plan_resume(run_dir, algo, {"total_timesteps": values["total_timesteps"]} if "total_timesteps" in values
                        else {}) if resuming else plan(algo, values)
    except RunFinished as finished:  # it ended, but the driver died before Tune recorded that: report it
        tune.report(_final_from_files(run_dir, finished.step))
        return
    callback = _TuneReport(tune.report)
    try:
        metrics = execute(p, run_dir=run_dir, callbacks=[callback], progress=False)
    finally:
        p.close()
    final = {"global_step": metrics["global_step"], "done": True, "run_dir": str(run_dir)}
    if metrics.get("ep_rew_mean") is not None:
        final["rollout/ep_rew_mean"] = metrics["ep_rew_mean"]
    for row in metrics.get("evaluations") or []:
        if row["step"] == metrics["global_step"]:
            final["eval/mean_reward"] = row["mean_return"]
    tune.report(final)


def _final_from_files(run_dir: Path, step: int) -> dict[str, Any]:
    """The final report of a trial whose run already finished, from its metrics.jsonl: the newest
    rollout return and the newest evaluation, as `_TuneReport` would have carried them."""
    from rlbase.runs import METRICS_FILE, read_metrics

    final: dict[str, Any] = {"global_step": step, "done": True, "run_dir": str(run_dir)}
    for record in read_metrics(run_dir / METRICS_FILE):
        if record["global_step"] > step:  # logged after the checkpoint by an attempt that then died
            continue
        finite = {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v)}
        if "rollout/ep_rew_mean" in finite:
            final["rollout/ep_rew_mean"] = finite["rollout/ep_rew_mean"]
        if "eval/mean_reward" in finite:
            final = {k: v for k, v in final.items() if not k.startswith("eval/")}
            final.update({k: v for k, v in finite.items() if k.startswith("eval/")})
    return final


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepSpec:
    """What sweep.json holds."""

    algo: str
    base: dict[str, Any]
    """`rlbase train` values applied to every trial (env, steps, ...)."""
    space: dict[str, Any]
    seeds: list[int]
    num_samples: int = 1
    search: str = "random"
    search_seed: int = 0
    scheduler: str = "fifo"
    metric: str = "rollout/ep_rew_mean"
    mode: str = "max"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    name: str = ""

    @classmethod
    def from_file(cls, sweep_dir: Path) -> SweepSpec:
        file = sweep_dir / SWEEP_FILE
        try:
            data = json.loads(file.read_text())
            spec = cls(**data)
        except FileNotFoundError:
            raise UsageError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE})") from None
        except (OSError, ValueError, TypeError, UnicodeDecodeError):
            raise RlbaseError(f"{file} is corrupt") from None
        if spec.search not in SEARCHES or spec.scheduler not in SCHEDULERS or spec.mode not in ("max", "min") \
                or not isinstance(spec.base, dict) or not isinstance(spec.space, dict) \
                or not all(isinstance(s, int) for s in spec.seeds):
            raise RlbaseError(f"{file} is corrupt")
        return spec


class _TrialTable:
    """trials.json, kept up to date by the driver from Tune's trial events (atomic writes)."""

    def __init__(self, sweep_dir: Path, entries: dict[str, dict[str, Any]], metric: str, mode: str):
        self.file = sweep_dir / TRIALS_FILE
        self.entries, self.metric, self.mode = entries, metric, mode

    @classmethod
    def load(cls, sweep_dir: Path, metric: str, mode: str) -> _TrialTable:
        file = sweep_dir / TRIALS_FILE
        try:
            entries = json.loads(file.read_text())
        except FileNotFoundError:
            entries = {}
        except (OSError, ValueError, UnicodeDecodeError):
            raise RlbaseError(f"{file} is corrupt") from None
        if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
            raise RlbaseError(f"{file} is corrupt")
        return cls(sweep_dir, entries, metric, mode)

    def write(self) -> None:
        atomic_write_text(self.file, json.dumps(self.entries, indent=1, sort_keys=True))

    def key_of(self, trial: Any) -> str:
        spec = trial.config
        return Path(spec["trial"]["run_dir"]).name if "trial" in spec else trial.trial_id

    def update(self, trial: Any, status: str, result: dict[str, Any] | None = None) -> None:
        key = self.key_of(trial)
        entry = self.entries.setdefault(key, {})
        spec = trial.config
        if "trial" in spec:
            entry.update(values=spec["trial"]["values"], seed=spec["trial"]["seed"], run_dir=spec["trial"]["run_dir"],
                         **({"case": spec["trial"]["case"]} if spec["trial"].get("case") else {}))
        else:
            entry.update(values={k: v for k, v in spec.items() if not k.startswith("__")},
                         seed=spec["__seeds"][spec["__trial_index__"]],
                         run_dir=str(Path(spec["__sweep_dir"]) / "runs" / trial.trial_id))
        entry["status"] = status
        entry.setdefault("started", time.time())
        if result:
            entry["steps"] = result.get("global_step", entry.get("steps"))
            value = result.get(self.metric)
            if isinstance(value, (int, float)) and math.isfinite(value):
                entry["last"] = value
                best = entry.get("best")
                better = best is None or (value > best if self.mode == "max" else value < best)
                entry["best"] = value if better else best
            entry["seconds"] = round(time.time() - entry["started"], 1)
        self.write()


def _random_trials(spec: SweepSpec, parsed: dict[str, Any], sweep_dir: Path) -> list[dict[str, Any]]:
    """Grid and random search's trials, drawn up front, each with its run dir (`runs/tNNNN`, by position)."""
    trials = draw_trials(parsed, spec.seeds, spec.num_samples, spec.search_seed)
    for index, trial in enumerate(trials):
        trial["run_dir"] = str((sweep_dir / "runs" / f"t{index:04d}").resolve())
    return trials


def _left_to_run(spec: SweepSpec, parsed: dict[str, Any], sweep_dir: Path, table: _TrialTable) -> bool:
    """Whether a resumed sweep has trials left, checked before Ray starts (a bad sweep is one line)."""
    if spec.search != "random":
        return spec.num_samples * len(spec.seeds) > len(_told_to_optuna(table))
    trials = _random_trials(spec, parsed, sweep_dir)
    check_run_dirs(trials)
    return bool(_unfinished(trials, table))


def _unfinished(trials: list[dict[str, Any]], table: _TrialTable) -> list[dict[str, Any]]:
    return [t for t in trials if table.entries.get(Path(t["run_dir"]).name, {}).get("status") != FINISHED]


def _tune_callback(table: _TrialTable) -> Any:
    from ray.tune import Callback

    class TrialEvents(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            table.update(trial, "RUNNING")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            table.update(trial, "RUNNING", result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            table.update(trial, FINISHED, trial.last_result)

        def on_trial_error(self, iteration, trials, trial, **info):
            table.update(trial, "ERROR", trial.last_result)

    return TrialEvents()


def run_sweep(spec: SweepSpec, sweep_dir: Path, *, address: str | None = None, resume: bool = False,
              announce: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the sweep; returns the rows of results.json."""
    parsed = parse_space(spec.space, _config_cls(spec.algo))
    table = _TrialTable.load(sweep_dir, spec.metric, spec.mode) if resume else \
        _TrialTable(sweep_dir, {}, spec.metric, spec.mode)
    threads = max(1, int(spec.cpus_per_trial))
    common = {"__algo": spec.algo, "__base": spec.base, "__sweep_dir": str(sweep_dir.resolve()), "__threads": threads}
    if resume and not _left_to_run(spec, parsed, sweep_dir, table):
        return write_results(sweep_dir, spec, table)  # a finished sweep: no Ray to start (3-6 s)
    started = start_ray(address)
    try:
        return _run_tune(spec, sweep_dir, parsed, table, common, resume, announce)
    finally:
        if started:
            # Stop the Ray processes this sweep started (joined to a cluster: only disconnect). Without
            # it the console script's fast exit leaves Ray's agents running for about a minute.
            stop_ray()


def _run_tune(spec: SweepSpec, sweep_dir: Path, parsed: dict[str, Any], table: _TrialTable, common: dict[str, Any],
              resume: bool, announce: Callable[[str], None] | None) -> list[dict[str, Any]]:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback  # Tune's result.json only: the runs log for themselves

    searcher, param_space, num_samples = None, dict(common), 1
    if spec.search == "random":
        trials = _random_trials(spec, parsed, sweep_dir)
        todo = _unfinished(trials, table)
        if not todo:
            return write_results(sweep_dir, spec, table)
        param_space["trial"] = tune.grid_search(todo)
    else:
        searcher, num_samples = _optuna(spec, parsed, table)
        param_space.update(__seeds=spec.seeds)
        if num_samples <= 0:
            return write_results(sweep_dir, spec, table)
    scheduler = None
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        total = int(spec.base.get("total_timesteps") or 0) or None
        scheduler = ASHAScheduler(time_attr="global_step", max_t=total or 10**12,
                                  grace_period=max(1, (total or 8) // 8), reduction_factor=2)
    if announce is not None:
        announce(f"rlbase: sweep {spec.algo} on {spec.base.get('env_id')}: "
                 f"{len(param_space['trial']['grid_search']) if 'trial' in param_space else num_samples} trials "
                 f"({spec.search} search, {spec.scheduler}), {spec.cpus_per_trial:g} CPU"
                 f"{f', {spec.gpus_per_trial:g} GPU' if spec.gpus_per_trial else ''} per trial; sweep dir {sweep_dir}")
    resources = {"cpu": spec.cpus_per_trial, **({"gpu": spec.gpus_per_trial} if spec.gpus_per_trial else {})}
    tuner = tune.Tuner(
        tune.with_resources(run_trial, resources), param_space=param_space,
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_samples, trial_dirname_creator=lambda trial: trial.trial_id,
                                    reuse_actors=True),  # a new actor per trial would import torch again
        run_config=tune.RunConfig(name="ray", storage_path=str(sweep_dir.resolve()), verbose=0,
                                  callbacks=[_tune_callback(table), JsonLoggerCallback()]))
    with _tune_messages(announce), trials_in_prestarted_workers():
        tuner.fit()
    return write_results(sweep_dir, spec, table)


class _TuneMessages(logging.Filter):
    """Tune's console messages about a Ctrl-C, in rlbase's words: Tune points to `Tuner.restore`, and
    warns about trials that never reported. The first Ctrl-C still stops the sweep Tune's way (the
    trials are stopped, the experiment state saved one last time); rlbase notes it (`INTERRUPT`), and
    the command line then says how far the sweep got and how to resume it."""

    def __init__(self, say: Callable[[str], None]):
        super().__init__()
        self.say = say

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith("Stop signal received"):
            INTERRUPT.requested = True
            self.say("rlbase: interrupted: stopping the trials and saving the sweep (Ctrl-C again to stop at once)")
            return False
        return not text.startswith(("Experiment has been interrupted", "Trials did not complete",
                                    "Failed to fetch metrics"))


@contextlib.contextmanager
def _tune_messages(say: Callable[[str], None] | None) -> Iterator[None]:
    """`_TuneMessages` on Tune's two loggers while the sweep runs."""
    loggers = [logging.getLogger(name) for name in ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")]
    messages = _TuneMessages(say or (lambda line: print(line, file=sys.stderr)))
    for logger in loggers:
        logger.addFilter(messages)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(messages)


def planned_trials(spec: SweepSpec) -> int:
    """How many trials the whole sweep has (a resumed one included)."""
    if spec.search == "random":
        return len(draw_trials(parse_space(spec.space, _config_cls(spec.algo)), spec.seeds, spec.num_samples,
                               spec.search_seed))
    return spec.num_samples * len(spec.seeds)


def _config_cls(algo: str) -> type:
    from rlbase.agents import get_spec

    return get_spec(algo).Config


def _told_to_optuna(table: _TrialTable) -> list[dict[str, Any]]:
    """The finished trials with a result: on resume, Optuna is told them and they are not run again."""
    return [e for e in table.entries.values() if e.get("status") == FINISHED and e.get("last") is not None]


def _optuna(spec: SweepSpec, parsed: dict[str, tuple[str, list[Any]]], table: _TrialTable) -> tuple[Any, int]:
    """Tune's OptunaSearch over the space, each suggestion repeated on every seed; on resume the
    finished trials are told to it. Returns (searcher, Tune trials still to run)."""
    from ray import tune
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    if CASES in parsed:
        raise UsageError("search space 'cases' works with random or grid search, not --search optuna")
    space = {}
    for name, (kind, args) in parsed.items():
        if kind in ("grid", "choice"):
            space[name] = tune.choice(args)
        elif kind == "uniform":
            space[name] = tune.uniform(*args)
        elif kind == "loguniform":
            space[name] = tune.loguniform(*args)
        else:
            space[name] = tune.randint(*args)
    finished = _told_to_optuna(table)
    points = [e["values"] for e in finished]
    searcher = OptunaSearch(space=space, metric=spec.metric, mode=spec.mode, seed=spec.search_seed,
                            points_to_evaluate=points or None, evaluated_rewards=[e["last"] for e in finished] or None)
    total = spec.num_samples * len(spec.seeds)
    return Repeater(searcher, repeat=len(spec.seeds)), total - len(finished)
