"""`rlbase report`: one row per experiment (runs that differ only in their seed), with the
aggregate statistics that Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the
Statistical Precipice", recommend for a handful of seeds: the mean and the interquartile mean
(IQM, the mean of the middle 50% of runs) with percentile-bootstrap confidence intervals.

    rlbase report runs/ sweeps/lr              # a markdown table on stdout
    rlbase report 'runs/ppo-*' --json          # one JSON object: {"metric": ..., "groups": [...]}

Per run, `final` is the metric's last finite logged value and `best` its maximum. A run that
logged no value of the metric is counted in its group and listed as missing, not an error.
Every number in the JSON output is finite or null (strict JSON, no NaN).
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from rlbase.errors import UsageError
from rlbase.runs import RunRecord, default_metric, find_runs, group_runs, parse_group_by

SUCCESS_TAG = "eval/success"
"""The outcome an env reports per evaluation (the maze's `success`); its success rate is reported."""
IQM_CUT = 0.25
"""Fraction trimmed from each end for the interquartile mean."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `rlbase report`."""
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR|SWEEP_DIR|GLOB",
                        help="run directories, sweep directories, folders of runs, or globs of these")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--metric", default=None, metavar="TAG",
                        help="the metric to summarize (default: eval/mean_reward when every run "
                             "evaluated, else rollout/ep_rew_mean)")
    parser.add_argument("--group-by", default=None, metavar="FIELD,FIELD",
                        help="group by these fields (`algo`, `case` for a sweep's arms, and config field "
                             "names); default: algo, env id, a sweep's case and every config field that "
                             "differs between runs, seeds aside")
    parser.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples per interval")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    parser.add_argument("--threshold", type=float, default=None,
                        help="also report how many runs reached the metric >= THRESHOLD, and the median steps and "
                             "wall-clock to the first logged point that did (e.g. 475 for CartPole)")


def run(args: argparse.Namespace) -> int:
    """Print the report for `args` (see `add_arguments`); user mistakes raise a one-line UsageError."""
    group_by = parse_group_by(args.group_by)
    runs = find_runs(args.paths)
    if not runs:
        raise UsageError("no rlbase runs found in " + " ".join(map(str, args.paths)))
    metric = args.metric if args.metric is not None else default_metric(runs)
    groups = summarize_groups(runs, metric, group_by, args.confidence, args.resamples, args.bootstrap_seed,
                              threshold=args.threshold)
    if args.json:
        print(json.dumps({"metric": metric, "confidence": args.confidence, "groups": groups},
                         allow_nan=False))
    else:
        print(format_table(groups, metric, args.confidence))
    return 0


def summarize_groups(runs: list[RunRecord], metric: str, group_by: list[str] | None = None,
                     confidence: float = 0.95, resamples: int = 10000, seed: int = 0,
                     threshold: float | None = None) -> list[dict[str, Any]]:
    """One summary dict per group of `runs` (grouped as `rlbase.runs.group_runs(runs, group_by)`),
    in group order. Numbers that cannot be computed (no run logged the metric) are None.

    Keys: label, key ({field: value}), n_runs, seeds, runs (paths), missing (paths of runs without
    a value of `metric`), final and best ({values, mean, iqm, mean_ci, iqm_ci}), success (mean of
    each run's last `eval/success`, None when no run logged it) with n_success, steps ({mean, min}
    of each run's last global_step), wall_clock ({mean} seconds from first to last record); with
    `threshold`: reached ({runs, fraction, final_fraction, median_steps, median_seconds}: runs whose
    metric ever reached it, those still at or above it at the end, and the median steps and seconds
    to the first point that reached it, over the runs that did)."""
    if not runs:
        raise UsageError("no rlbase runs to report on")
    if not 0 < confidence < 1:
        raise UsageError(f"--confidence must lie strictly between 0 and 1, not {confidence}")
    if resamples < 1:
        raise UsageError(f"--resamples must be at least 1, not {resamples}")
    if not any(run.curve(metric) for run in runs):
        tags = sorted(set().union(*(run.tags() for run in runs)))
        available = ", ".join(tags) if tags else "none (no run logged any metric)"
        raise UsageError(f"no run logged the metric {metric!r}; available tags: {available}")
    groups = group_runs(runs, group_by)
    labels = _labels(groups)
    summaries = [_summarize(key, labels[key], members, metric, confidence, resamples, seed)
                 for key, members in groups.items()]
    if threshold is not None:
        for summary, members in zip(summaries, groups.values()):
            summary["reached"] = _reached(members, metric, threshold)
    return summaries


def _reached(members: list[RunRecord], metric: str, threshold: float) -> dict[str, Any]:
    firsts = []
    at_end = 0
    for run in members:
        curve = run.curve(metric)
        first = next(((step, seconds) for step, seconds, value in curve if value >= threshold), None)
        if first is not None:
            firsts.append(first)
        at_end += bool(curve) and curve[-1][2] >= threshold
    steps = sorted(step for step, _ in firsts)
    seconds = sorted(sec for _, sec in firsts if math.isfinite(sec))
    return {"threshold": threshold, "runs": len(firsts), "fraction": len(firsts) / len(members),
            "final_fraction": at_end / len(members),
            "median_steps": float(np.median(steps)) if steps else None,
            "median_seconds": float(np.median(seconds)) if seconds else None}


def _labels(groups: dict[tuple[str, ...], list[RunRecord]]) -> dict[tuple[str, ...], str]:
    """Only the `field=value` parts that differ between groups; with nothing differing, algo and env."""
    keys = list(groups)
    width = len(keys[0]) if keys else 0
    differing = [i for i in range(width) if len({key[i] for key in keys}) > 1]
    labels = {}
    for key, members in groups.items():
        if differing:
            labels[key] = ", ".join(key[i] for i in differing)
        else:
            algos = "/".join(sorted({run.algo for run in members}))
            envs = "/".join(sorted({run.env_id for run in members}))
            labels[key] = f"{algos} {envs}"
    return labels


def _summarize(key: tuple[str, ...], label: str, members: list[RunRecord], metric: str,
               confidence: float, resamples: int, seed: int) -> dict[str, Any]:
    finals, bests, missing = [], [], []
    successes, steps, walls = [], [], []
    for run in members:
        values = [value for _, _, value in run.curve(metric)]
        if values:
            finals.append(values[-1])
            bests.append(max(values))
        else:
            missing.append(str(run.path))
        outcome = run.curve(SUCCESS_TAG)
        if outcome:
            successes.append(outcome[-1][2])
        if run.records:
            steps.append(run.records[-1]["global_step"])
        times = [r["time"] for r in run.records
                 if isinstance(r.get("time"), (int, float)) and not isinstance(r["time"], bool)
                 and math.isfinite(r["time"])]
        if times:
            walls.append(times[-1] - times[0])
    return {
        "label": label,
        "key": dict(part.split("=", 1) for part in key),
        "n_runs": len(members),
        "seeds": [run.seed for run in members],
        "runs": [str(run.path) for run in members],
        "missing": missing,
        "final": _aggregate(finals, confidence, resamples, seed),
        "best": _aggregate(bests, confidence, resamples, seed),
        "success": _mean(successes),
        "n_success": len(successes),
        "steps": {"mean": _mean(steps), "min": min(steps) if steps else None},
        "wall_clock": {"mean": _mean(walls)},
    }


def iqm(values: Any, axis: int = -1) -> Any:
    """Interquartile mean: the mean after trimming 25% from each end (scipy's fractional rule)."""
    return stats.trim_mean(values, IQM_CUT, axis=axis)


def _aggregate(values: list[float], confidence: float, resamples: int, seed: int) -> dict[str, Any]:
    if not values:
        return {"values": [], "mean": None, "iqm": None, "mean_ci": [None, None], "iqm_ci": [None, None]}
    data = np.asarray(values, dtype=float)
    return {
        "values": [float(v) for v in data],
        "mean": float(np.mean(data)),
        "iqm": float(iqm(data)),
        "mean_ci": bootstrap_ci(data, np.mean, confidence, resamples, seed),
        "iqm_ci": bootstrap_ci(data, iqm, confidence, resamples, seed),
    }


def bootstrap_ci(values: Any, statistic: Callable[..., Any], confidence: float = 0.95,
                 resamples: int = 10000, seed: int = 0) -> list[float]:
    """[low, high] percentile-bootstrap interval of `statistic(values, axis=-1)`, reproducible
    for a given `seed`. With one value, or all values equal, the interval is that value."""
    data = np.asarray(values, dtype=float)
    estimate = float(statistic(data, axis=-1))
    if data.size < 2 or np.ptp(data) == 0:
        return [estimate, estimate]  # resampling cannot vary anything (scipy would warn and give NaN)
    with warnings.catch_warnings():
        # Two or three runs give few distinct resamples; scipy warns, the interval is still the honest one.
        warnings.simplefilter("ignore")
        result = stats.bootstrap((data,), statistic, vectorized=True, axis=-1, n_resamples=resamples,
                                 confidence_level=confidence, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return [estimate, estimate]
    return [low, high]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def format_table(groups: list[dict[str, Any]], metric: str, confidence: float = 0.95) -> str:
    """The groups as a markdown table, one row per group."""
    level = f"{confidence * 100:g}% CI"
    header = ["group", "runs", "final mean", f"final IQM [{level}]", "best mean", f"best IQM [{level}]",
              "success", "steps", "wall-clock"]
    lines = [f"metric: {metric}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    if any("reached" in group for group in groups):
        threshold = next(group["reached"]["threshold"] for group in groups if "reached" in group)
        header += [f"reached >= {threshold:g}", "still at end", "median steps to it", "median time to it"]
        lines[2] = "| " + " | ".join(header) + " |"
        lines[3] = "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"
    for group in groups:
        runs = str(group["n_runs"]) + (f" ({len(group['missing'])} missing)" if group["missing"] else "")
        success = "-" if group["success"] is None else f"{group['success'] * 100:.0f}%"
        row = [group["label"].replace("|", "\\|"), runs,
               _number(group["final"]["mean"]), _with_ci(group["final"]["iqm"], group["final"]["iqm_ci"]),
               _number(group["best"]["mean"]), _with_ci(group["best"]["iqm"], group["best"]["iqm_ci"]),
               success, _steps(group["steps"]["mean"]), _duration(group["wall_clock"]["mean"])]
        if "reached" in group:
            reached = group["reached"]
            row += [f"{reached['runs']}/{group['n_runs']}",
                    f"{round(reached['final_fraction'] * group['n_runs'])}/{group['n_runs']}",
                    _steps(reached["median_steps"]), _duration(reached["median_seconds"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _with_ci(value: float | None, ci: list[float | None]) -> str:
    if value is None:
        return "-"
    return f"{_number(value)} [{_number(ci[0])}, {_number(ci[1])}]"


def _steps(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
