"""`rlbase plot RUN_DIR|SWEEP_DIR|GLOB ... --out FILE.png|.svg`: learning curves of runs, one line per
experiment (runs that differ only in their seed), with a 95% bootstrap confidence band across seeds.

    rlbase plot runs/ --out curves.png                          # default tag, automatic groups
    rlbase plot sweeps/lr --out lr.svg --group-by learning_rate --seeds
    rlbase plot runs/ --out both.png --tag rollout/ep_rew_mean --tag eval/mean_reward --x time

How a group becomes one line (`aggregate`):
- each run's curve of the tag is read against the x axis (`--x steps`: `global_step`; `--x time`:
  seconds since the run's first record); a step logged twice keeps its last value;
- the group's common grid is the union of its runs' logged x values, limited to the range where
  *every* run of the group has data (from the latest first point to the earliest last point), so the
  mean never jumps where a seed ends early; beyond MAX_POINTS points the grid is thinned evenly;
- each run is linearly interpolated onto the grid; the line is the mean across runs; the band is
  the 2.5 to 97.5 percentile of BOOTSTRAP_SAMPLES resampled means (runs drawn with replacement, a
  fixed seed, so the same runs give the same picture). One run: the line alone, no band.
Runs that never logged the tag are left out of that tag's panel.

Nothing here needs a display: the figure is a bare `matplotlib.figure.Figure` (no pyplot, no global
state), saved through the Agg / SVG canvases. matplotlib and numpy are imported on first use, so
`import rlbase.plot` (which the CLI does to build its parser) stays cheap.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rlbase.errors import UsageError
from rlbase.runs import PRETRAIN, RunRecord, default_metric, find_runs, group_runs, parse_group_by

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

SUFFIXES = (".png", ".svg")
X_LABELS = {"steps": "environment steps", "time": "wall-clock (s)"}
DPI = 120
PANEL_SIZE = (6.4, 4.8)
"""Default inches of one panel; the default figure is one panel wide per tag."""
MAX_POINTS = 1000
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass
class Series:
    """One group in one panel: its runs put on a common grid. Arrays are (num_points,) unless said."""

    label: str
    runs: list[RunRecord]
    grid: np.ndarray
    mean: np.ndarray
    low: np.ndarray | None  # None with a single run
    high: np.ndarray | None
    curves: list[tuple[np.ndarray, np.ndarray]]  # each run's own (x, value), sorted by x


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `rlbase plot`."""
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR|SWEEP_DIR|GLOB",
                        help="run directories, sweep directories, folders holding runs, or globs of these")
    parser.add_argument("--out", required=True, metavar="FILE", help="the image to write: a .png or .svg file")
    parser.add_argument("--tag", action="append", default=None, metavar="TAG",
                        help="metric to plot; give it several times for one panel per tag (default: "
                             "eval/mean_reward when every run has evaluations, else rollout/ep_rew_mean)")
    parser.add_argument("--x", choices=tuple(X_LABELS), default="steps",
                        help="x axis: environment steps or wall-clock seconds since the run's start (default: steps)")
    parser.add_argument("--group-by", default=None, metavar="FIELD,FIELD",
                        help="config fields (or algo, or case for a sweep's arms) that make an experiment; runs "
                             "alike in them share a line (default: algo, env id, a sweep's case and every field "
                             "that differs between the runs, seeds aside)")
    parser.add_argument("--seeds", action="store_true", help="also draw each run's own curve, thin")
    parser.add_argument("--title", default=None, help="figure title (default: the env id(s) and the tag)")
    parser.add_argument("--width", type=float, default=None,
                        help=f"figure width in inches (default: {PANEL_SIZE[0]} per tag)")
    parser.add_argument("--height", type=float, default=None,
                        help=f"figure height in inches (default: {PANEL_SIZE[1]})")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"pixels per inch of a .png (default: {DPI})")


def run(args: argparse.Namespace) -> int:
    """`rlbase plot`: check the flags, find the runs, draw, write the image atomically, say what was drawn."""
    out = Path(args.out)
    if out.suffix.lower() not in SUFFIXES:
        raise UsageError(f"invalid --out {args.out!r}: the file name must end in .png or .svg")
    for name in ("width", "height", "dpi"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"invalid --{name}: must be positive, got {value}")
    group_by = parse_group_by(args.group_by)
    runs = find_runs(args.paths)
    fig = draw(runs, args.tag, x=args.x, group_by=group_by, seeds=args.seeds, title=args.title,
               width=args.width, height=args.height)
    save(fig, out, dpi=args.dpi)
    tags = args.tag or [default_metric(runs)]
    groups = len(group_runs(runs, group_by))
    print(f"rlbase: wrote {out}: {', '.join(tags)} against {X_LABELS[args.x]}, "
          f"{_count(groups, 'group')} of {_count(len(runs), 'run')}")
    return 0


def draw(runs: list[RunRecord], tags: list[str] | None = None, *, x: str = "steps",
         group_by: list[str] | None = None, seeds: bool = False, title: str | None = None,
         width: float | None = None, height: float | None = None) -> Figure:
    """The figure: one panel per tag (side by side), one line and band per group of `runs`.

    `tags` defaults to `default_metric(runs)`; a tag no run logged, a `group_by` field no run has, or
    no runs at all is a UsageError. Colors follow the group order, so a group keeps its color
    across panels; `seeds` adds each run's own curve as a thin line of its group's color (not in the
    legend)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    if not runs:
        raise UsageError("no runs to plot")
    if x not in X_LABELS:
        raise UsageError(f"invalid --x {x!r}: use steps or time")
    tags = list(dict.fromkeys(tags or [default_metric(runs)]))
    _check_tags(runs, tags)
    groups = group_runs(runs, group_by)
    labels = group_labels(groups)
    envs = sorted({run.env_id for run in runs})
    where = ", ".join(envs) if len(envs) <= 3 else f"{len(envs)} envs"

    size = (width or PANEL_SIZE[0] * len(tags), height or PANEL_SIZE[1])
    fig = Figure(figsize=size, dpi=DPI)
    axes = fig.subplots(1, len(tags), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for ax, tag in zip(axes, tags):
        drawn = 0
        for color, (key, members) in zip(colors, groups.items()):
            series = aggregate(members, tag, x, labels[key])
            if series is None:
                continue
            drawn += 1
            if seeds:
                for run_x, run_y in series.curves:
                    ax.plot(run_x, run_y, color=color, linewidth=0.7, alpha=0.35, label="_nolegend_")
            if series.low is not None:
                ax.fill_between(series.grid, series.low, series.high, color=color, alpha=0.2, linewidth=0,
                                label="_nolegend_")
            ax.plot(series.grid, series.mean, color=color, linewidth=2.0, label=series.label,
                    marker="o" if len(series.grid) == 1 else None)
        if drawn == 0:  # the tag exists, but no run has it against this x axis
            raise UsageError(f"nothing to plot for {tag} against {X_LABELS[x]}"
                             + (" (no run logged 'time' with it)" if x == "time" else ""))
        pretraining = x == "steps" and all(run.algo == PRETRAIN for run in runs)
        ax.set_xlabel("training samples seen" if pretraining else X_LABELS[x])
        ax.set_ylabel(tag)
        if x == "steps":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1M rather than an offset 1e6
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
        if len(tags) == 1:
            ax.set_title(title if title is not None else f"{where}: {tag}")
        else:
            ax.set_title(tag)
    if len(tags) > 1:
        fig.suptitle(title if title is not None else where)
    fig.tight_layout()
    return fig


def aggregate(runs: list[RunRecord], tag: str, x: str, label: str) -> Series | None:
    """The runs' curves of `tag` on their common grid (see the module docstring), their mean and 95%
    bootstrap band; None when no run has a point of `tag` on this x axis or their x ranges do not
    overlap."""
    import numpy as np

    curves = [c for c in (_xy(run, tag, x) for run in runs) if c is not None]
    if not curves:
        return None
    start = max(cx[0] for cx, _ in curves)
    stop = min(cx[-1] for cx, _ in curves)
    if start > stop:
        print(f"rlbase: note: {label}: the runs' {tag} curves do not overlap; group left out", file=sys.stderr)
        return None
    grid = np.unique(np.concatenate([cx for cx, _ in curves]))
    grid = grid[(grid >= start) & (grid <= stop)]
    if len(grid) > MAX_POINTS:
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, MAX_POINTS).round().astype(int))]
    values = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])  # (num_runs, num_points)
    mean = values.mean(axis=0)
    low = high = None
    n = len(curves)
    if n > 1:
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_SAMPLES)  # (samples, num_runs)
        means = counts @ values / n  # (samples, num_points): the mean of each resample
        low, high = np.percentile(means, [2.5, 97.5], axis=0)
    label = f"{label} ({_count(n, 'seed')})"
    kept = [run for run in runs if _xy(run, tag, x) is not None]
    return Series(label, kept, grid, mean, low, high, curves)


def group_labels(groups: dict[tuple[str, ...], list[RunRecord]]) -> dict[tuple[str, ...], str]:
    """Legend labels: only the `field=value` parts that differ between groups (all parts for one group)."""
    keys = list(groups)
    if not keys:
        return {}
    differ = [i for i in range(len(keys[0])) if len({key[i] for key in keys}) > 1] or list(range(len(keys[0])))
    return {key: ", ".join(key[i] for i in differ) for key in keys}


def save(fig: Figure, out: Path, dpi: int = DPI) -> None:
    """Write `fig` to `out` (.png or .svg) through a temporary file in the same folder, so a reader
    never sees half an image and a failed write leaves an existing file as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            fig.savefig(file, format=out.suffix.lower().lstrip("."), dpi=dpi)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _xy(run: RunRecord, tag: str, x: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The run's (x, value) of `tag`, sorted by x, one value per x (the last logged); None if empty."""
    import numpy as np

    latest: dict[float, float] = {}
    for step, seconds, value in run.curve(tag):
        at = float(step) if x == "steps" else seconds
        if not math.isnan(at):  # a record without a time has no place on the time axis
            latest[at] = value
    if not latest:
        return None
    keys = sorted(latest)
    return np.array(keys), np.array([latest[k] for k in keys])


def _check_tags(runs: list[RunRecord], tags: list[str]) -> None:
    known: set[str] = set().union(*(run.tags() for run in runs))
    missing = [tag for tag in tags if tag not in known]
    if not missing:
        return
    if not known:
        raise UsageError(f"no metrics logged yet in {_count(len(runs), 'run')} (no {missing[0]} to plot)")
    shown = sorted(known)
    listing = ", ".join(shown[:20]) + (f", ... ({len(shown) - 20} more)" if len(shown) > 20 else "")
    raise UsageError(f"no run logged {', '.join(missing)}; tags logged: {listing}")


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


__all__ = ["Series", "add_arguments", "aggregate", "draw", "group_labels", "run", "save"]
