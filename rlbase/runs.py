"""Finished and running runs, read back from their directories: what `rlbase plot` and `rlbase report`
work on. Every file read here is input, not trust: a record that is not what it should be is skipped
(a line of metrics.jsonl) or refused with one line (a config.json).

    runs = find_runs(["runs/", "sweeps/lr/*"])    # run dirs, sweep dirs, or folders of them; globs
    groups = group_runs(runs)                     # {("algo=ppo", "learning_rate=0.001"): [RunRecord, ...]}
    curve = runs[0].curve("rollout/ep_rew_mean")   # [(global_step, seconds since start, value), ...]

A sweep directory (`rlbase sweep`) holds its trials' ordinary run directories under `runs/`, and in
its trials.json the name of the case (arm) of the search space each trial plays: runs of a sweep with
cases are grouped by case name, not by the values the cases set.
"""

from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from rlbase.errors import UsageError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SWEEP_FILE = "sweep.json"
TRIALS_FILE = "trials.json"
CASE = "case"
"""The pseudo-field of a sweep's runs: the name of the space's case that the run played (--group-by case)."""
PRETRAIN = "pretrain"
"""The `algo` of an `rlbase pretrain` run (its curves: val/accuracy or val/mse, train/loss, against samples seen)."""
IGNORED_FIELDS = ("seed", "run_name", "log_dir", "device", "torch_threads", "total_timesteps", "log_interval",
                  "checkpoint_interval", "eval_freq", "eval_episodes", "save_buffer",
                  "out", "task")
"""Config fields that do not make two runs different experiments (grouping ignores them; a pretraining
run's `out` is its folder, and its `task` stands as its env id)."""


@dataclass
class RunRecord:
    """One run directory: its algo and config, and its logged metrics (read on first use)."""

    path: Path
    algo: str
    config: dict[str, Any]
    case: str | None = None
    """The case (arm) of the sweep's space this run played, where it is a sweep's trial with one."""
    _records: list[dict[str, Any]] | None = field(default=None, repr=False)

    @property
    def records(self) -> list[dict[str, Any]]:
        """metrics.jsonl as dicts with an int `global_step`, in file order (malformed lines skipped)."""
        if self._records is None:
            self._records = read_metrics(self.path / METRICS_FILE)
        return self._records

    def tags(self) -> set[str]:
        return {key for record in self.records for key in record if key not in ("global_step", "time")}

    def curve(self, tag: str) -> list[tuple[int, float, float]]:
        """(global_step, seconds since the first record, value) of every finite logged value of `tag`."""
        start = next((r["time"] for r in self.records if isinstance(r.get("time"), (int, float))), None)
        points = []
        for record in self.records:
            value = record.get(tag)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            seconds = record["time"] - start if start is not None and isinstance(record.get("time"), (int, float)) \
                else math.nan
            points.append((record["global_step"], float(seconds), float(value)))
        return points

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def env_id(self) -> str:
        return str(self.config.get("env_id", "?"))


def read_metrics(file: Path) -> list[dict[str, Any]]:
    """The valid records of a metrics.jsonl (a missing file is an empty run)."""
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a crash, or not JSON at all
            continue
        if isinstance(record, dict) and isinstance(record.get("global_step"), int) \
                and not isinstance(record["global_step"], bool):
            records.append(record)
    return records


def read_run(path: Path) -> RunRecord:
    """The run in `path` (a directory with config.json); a one-line UsageError when it is not one."""
    file = path / CONFIG_FILE
    try:
        payload = json.loads(file.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path} is not an rlbase run directory (no {CONFIG_FILE})") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise UsageError(f"{file} is not readable JSON") from None
    if isinstance(payload, dict) and "algo" not in payload and isinstance(payload.get("task"), str) \
            and isinstance(payload.get("backbone"), str):
        # an `rlbase pretrain` run: its config is flat; the task stands where an env id would
        return RunRecord(path, PRETRAIN, {**payload, "env_id": payload["task"]})
    if not isinstance(payload, dict) or not isinstance(payload.get("algo"), str) \
            or not isinstance(payload.get("config"), dict):
        raise UsageError(f"{file} is not an rlbase run config (needs 'algo' and 'config', or a pretraining "
                         "run's 'task' and 'backbone')")
    return RunRecord(path, payload["algo"], payload["config"])


def find_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """The runs named by `paths`: run directories, sweep directories (their `runs/`), folders that
    hold run directories (searched recursively), and shell-style globs of any of these. A path
    that names nothing is a UsageError; the result is sorted by path, without duplicates."""
    found: dict[Path, RunRecord] = {}
    for raw in paths:
        text = str(raw)
        matches = [Path(p) for p in sorted(glob.glob(text))] if glob.has_magic(text) else [Path(text)]
        if not matches or not any(m.exists() for m in matches):
            raise UsageError(f"{text}: no such run directory, sweep directory or folder")
        before = len(found)
        for match in matches:
            if not match.is_dir():
                continue
            if (match / CONFIG_FILE).is_file():
                found.setdefault(match.resolve(), read_run(match))
                continue
            for config in sorted(match.rglob(CONFIG_FILE)):
                if config.parent.name not in ("checkpoints", "best") and config.is_file():
                    try:
                        found.setdefault(config.parent.resolve(), read_run(config.parent))
                    except UsageError:
                        continue  # a stray config.json inside a folder of runs is not a run
        if len(found) == before:
            raise UsageError(f"{text}: holds no rlbase run directory (no {CONFIG_FILE} below it)")
    cases: dict[Path, dict[str, str]] = {}
    for run in found.values():
        if run.path.parent.name == "runs":  # perhaps a sweep's trial: SWEEP/runs/TRIAL
            sweep_dir = run.path.resolve().parent.parent
            if sweep_dir not in cases:
                cases[sweep_dir] = sweep_cases(sweep_dir)
            run.case = cases[sweep_dir].get(run.path.name)
    return [found[key] for key in sorted(found)]


def sweep_cases(sweep_dir: Path) -> dict[str, str]:
    """Trial name -> case name, from a sweep's trials.json (empty where there is none, or where it
    is not a sweep's: a hand-edited or foreign file is skipped entry by entry, never trusted)."""
    try:
        entries = json.loads((sweep_dir / TRIALS_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(entries, dict) or not (sweep_dir / SWEEP_FILE).is_file():
        return {}
    return {name: entry[CASE] for name, entry in entries.items()
            if isinstance(entry, dict) and isinstance(entry.get(CASE), str) and entry[CASE]}


def parse_group_by(text: str | None) -> list[str] | None:
    """`--group-by "algo,learning_rate"` -> `["algo", "learning_rate"]`; None stays None (automatic grouping)."""
    if text is None:
        return None
    fields = [part.strip() for part in text.split(",") if part.strip()]
    if not fields:
        raise UsageError(f"invalid --group-by {text!r}: give config field names separated by commas "
                         "(e.g. --group-by algo,learning_rate)")
    return fields


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def varying_fields(runs: list[RunRecord]) -> list[str]:
    """Config fields (of every run: fields of one algorithm only are told apart by `algo`) whose
    values differ between `runs`, leaving out seeds and run bookkeeping."""
    common = set.intersection(*(set(run.config) for run in runs)) if runs else set()
    keys = sorted(common - set(IGNORED_FIELDS))
    return [key for key in keys if len({_hashable(run.config.get(key)) for run in runs}) > 1]


def group_runs(runs: list[RunRecord], by: list[str] | None = None) -> dict[tuple[str, ...], list[RunRecord]]:
    """Runs grouped into experiments: by the fields `by` (`algo`, `case` and config field names), or
    by default by algo, env id and every other config field that differs between the runs (seeds
    aside), so runs that differ only in their seed form one group. A sweep's runs with cases are
    grouped by case name instead of the fields their cases set (a field that also varies within a
    case still splits it). Keys are `field=value` strings."""
    if by is None:
        varying = [key for key in varying_fields(runs) if key != "env_id"]
        if any(run.case for run in runs):
            by_case: dict[str | None, list[RunRecord]] = {}
            for run in runs:
                by_case.setdefault(run.case, []).append(run)
            varying = [CASE] + [key for key in varying
                                if any(len({_hashable(run.config.get(key)) for run in members}) > 1
                                       for members in by_case.values())]
        by = ["algo", "env_id"] + varying
    known = {"algo", *(CASE for run in runs if run.case)} | {key for run in runs for key in run.config}
    unknown = [key for key in by if key not in known]
    if unknown:
        raise UsageError(f"cannot group by {', '.join(unknown)}: not a config field of these runs")
    groups: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        key = tuple(f"{name}={_show(_field(run, name))}" for name in by)
        groups.setdefault(key, []).append(run)
    return groups


def _field(run: RunRecord, name: str) -> Any:
    if name == "algo":
        return run.algo
    if name == CASE:
        return run.case or "-"
    return run.config.get(name)


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "{}"
    return str(value)


def default_metric(runs: list[RunRecord]) -> str:
    """`eval/mean_reward` when every run logged evaluations; for pretraining runs their held-out
    `val/accuracy` (classification) or `val/mse` (regression); else `rollout/ep_rew_mean`."""
    if runs and all("eval/mean_reward" in run.tags() for run in runs):
        return "eval/mean_reward"
    for tag in ("val/accuracy", "val/mse"):
        if runs and all(run.algo == PRETRAIN and tag in run.tags() for run in runs):
            return tag
    return "rollout/ep_rew_mean"
