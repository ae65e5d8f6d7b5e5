"""Run logging (TensorBoard event files, `metrics.jsonl`) and progress display.

Agents hand over plain Python numbers at log intervals only: metrics live on the device
between intervals, so the training loop never waits for the host.

Start-up cost: TensorBoard (which imports all of torch's summary machinery) is imported when
the first event is written, not when this module is imported or a `RunLogger` is built.

Progress is shown by `Progress`, one implementation of these rules for training and eval:
- on a terminal (stderr is a tty, or `enabled=True`): one tqdm bar, with one rate, the
  postfix (e.g. `return 123.4`) and the ETA; print other lines through `message()` so the
  bar is redrawn under them instead of being cut in half;
- not a terminal (CI, `nohup`; `enabled=None`): no bar, a plain status line at most every
  `status_interval` seconds, e.g.
  `rlbase: 20,480/45,056 steps (45%), 8,912 steps/s, return 123.4, ETA 3s`;
- `enabled=False`: nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from rlbase.safefiles import disk_error

RETURN_TAG = "rollout/ep_rew_mean"  # the scalar shown as "return" next to the progress


# ---------------------------------------------------------------- formatting


def _format_rate(rate: float | None) -> str:
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return "?"
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"


def _format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.1f}" if abs(value) >= 1 or value == 0 else f"{value:.3g}"


def _eta(remaining: float, rate: float | None) -> float | None:
    return remaining / rate if rate and rate > 0 else None


def _isatty(file: TextIO) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class _Bar(tqdm):
    """tqdm with two more fields for `bar_format`: `rate_str` and `eta_str`, formatted as the plain
    status lines format them (tqdm's own `rate_fmt` switches to s/it below 1 it/s)."""

    @property
    def format_dict(self):
        d = super().format_dict
        rate = d["rate"]  # tqdm's smoothed rate; None until it has two samples
        if rate is None and d["elapsed"] > 0 and d["n"] > d["initial"]:
            rate = (d["n"] - d["initial"]) / d["elapsed"]
        d["rate_str"] = _format_rate(rate)
        d["eta_str"] = _format_duration(_eta(d["total"] - d["n"], rate)) if d["total"] else "?"
        return d


# ---------------------------------------------------------------- progress


class Progress:
    """Progress through `total` units of work (episodes, steps), shown by the rules in the module
    docstring.

    `update(n, **postfix)` adds `n` done units; keyword arguments set the postfix shown after the
    rate (`update(1, return_=200.0)` shows `return 200.0`: one trailing underscore is dropped from a
    name so Python keywords can be used). It is cheap enough to call every environment step: on a
    terminal tqdm throttles its redraws; otherwise the clock is read only every few updates, as many
    as make roughly a tenth of `status_interval` (at most 1 s) at the recent rate.

    Usable as a context manager, which closes it.
    """

    def __init__(self, total: int, unit: str = "episode", desc: str = "", enabled: bool | None = None,
                 status_interval: float = 30.0, initial: int = 0, file: TextIO | None = None):
        self.total = int(total)
        self.n = int(initial)
        self.unit = unit
        self.units = unit + "s"
        self.desc = desc
        self.status_interval = status_interval
        self.file = sys.stderr if file is None else file
        self.postfix: dict[str, Any] = {}
        if enabled is False:
            self.mode = "off"
        elif enabled or _isatty(self.file):
            self.mode = "bar"
        else:
            self.mode = "lines"
        self._bar: _Bar | None = None
        if self.mode == "bar":
            label = f"{desc}: ".replace("{", "{{").replace("}", "}}") if desc else ""
            bar_format = (label + "{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + self.units
                          + " [{rate_str} " + self.units + "/s{postfix}, ETA {eta_str}]")
            self._bar = _Bar(total=self.total, initial=min(self.n, self.total), unit=unit,
                             unit_scale=self.total >= 10_000, dynamic_ncols=True,
                             bar_format=bar_format, file=self.file, leave=True)
        # Plain status lines: the last line's time and count, and when to read the clock next.
        self._line_time = self._check_time = time.monotonic()
        self._line_n = self._check_n = self.n
        self._stride = 1
        self._check_at = self.n + 1 if self.mode == "lines" else math.inf

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count `n` more units done; set postfix fields (see the class docstring)."""
        self.n += n
        if postfix:
            self.postfix.update({k[:-1] if k.endswith("_") else k: v for k, v in postfix.items()})
            if self._bar is not None:
                self._bar.set_postfix_str(self._postfix_text(), refresh=False)
        if self._bar is not None:
            # An overshoot (a vector step past the total) stays at 100%; tqdm would drop the total.
            shown = min(self.n, self.total)
            if shown != self._bar.n:
                self._bar.update(shown - self._bar.n)
        elif self.n >= self._check_at:
            self._check_clock()

    def message(self, text: str) -> None:
        """Print a line for the user: above the bar on a terminal (the bar is redrawn below it)."""
        if self._bar is not None:
            self._bar.write(text, file=self.file)
        else:
            print(text, file=self.file, flush=True)

    def close(self) -> None:
        """Leave the bar's final state on its own line. Further updates show nothing."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._check_at = math.inf

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _postfix_text(self) -> str:
        return ", ".join(f"{k} {_format_value(v)}" for k, v in self.postfix.items())

    def _check_clock(self) -> None:
        now = time.monotonic()
        dt, dn = now - self._check_time, self.n - self._check_n
        # Read the clock about every `period` seconds at the recent rate; the stride may at most
        # double per check, so one fast burst (or the first tiny interval) cannot make it skip minutes.
        period = min(1.0, self.status_interval / 10)
        wanted = int(dn * period / dt) if dt > 0 else 2 * self._stride
        self._stride = max(1, min(2 * self._stride, wanted))
        self._check_time, self._check_n = now, self.n
        self._check_at = self.n + self._stride
        if now - self._line_time >= self.status_interval:
            self._status_line(now)

    def _status_line(self, now: float) -> None:
        dt = now - self._line_time
        rate = (self.n - self._line_n) / dt if dt > 0 else None  # over the last interval: recent speed
        percent = min(100, 100 * self.n // self.total) if self.total > 0 else 100
        label = f"{self.desc}: " if self.desc else ""
        postfix = f", {self._postfix_text()}" if self.postfix else ""
        eta = _format_duration(_eta(self.total - self.n, rate))
        print(f"rlbase: {label}{self.n:,}/{self.total:,} {self.units} ({percent}%), {_format_rate(rate)} "
              f"{self.units}/s{postfix}, ETA {eta}", file=self.file, flush=True)
        self._line_time, self._line_n = now, self.n


# ---------------------------------------------------------------- run logger


def _json_number(value: Any) -> Any:
    """A scalar as JSON can hold it: ints stay ints, floats (and numpy / 0-d tensor scalars) become
    floats, and NaN / ±inf become null (JSON has no NaN; Python's json would write a bare `NaN`)."""
    if isinstance(value, (bool, int)):
        return value
    value = float(value)
    return value if math.isfinite(value) else None


class RunLogger:
    """A run's logs: TensorBoard events and `metrics.jsonl` in `run_dir`, plus its progress display.

    `metrics.jsonl` holds one JSON object per `log()`: `{"global_step", "time", <tag>: value, ...}`,
    line-buffered so a crashed run keeps every line it logged; non-finite values are null there
    (TensorBoard gets the real value).

    `hparams` (flat or not: non-scalar values are written as strings) go to the event file as a
    markdown table (text tag `hyperparameters`) and as an HParams dashboard entry.

    The event writer (and with it TensorBoard) is created by the first `log()`, or by `flush()` /
    `close()` when there are hparams to write, so a run that never logged still records them.

    Nothing is displayed until `start_progress()`: the caller prints its start line first.
    `progress=None` chooses by the terminal (see `Progress`), True forces the bar, False shows nothing.
    """

    def __init__(self, run_dir: str | Path, total_timesteps: int, start_step: int = 0,
                 hparams: dict[str, Any] | None = None, progress: bool | None = None,
                 status_interval: float = 30.0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_timesteps = total_timesteps
        self.start_step = start_step
        self.hparams = dict(hparams) if hparams else None
        self.progress_enabled = progress
        self.status_interval = status_interval
        try:
            self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered
        except OSError as exc:
            raise disk_error(exc, "the run's logs", self.run_dir / "metrics.jsonl") from None
        self.start_time = time.perf_counter()
        self._writer = None  # torch.utils.tensorboard.SummaryWriter, created on first use
        self._display: Progress | None = None
        self._closed = False

    # -------------------------------------------------------- display

    def start_progress(self) -> None:
        """Show progress from now on (a second call does nothing)."""
        if self._display is None and not self._closed:
            self._display = Progress(self.total_timesteps, unit="step", enabled=self.progress_enabled,
                                     status_interval=self.status_interval, initial=self.start_step)

    def progress(self, global_step: int) -> None:
        """Move the progress display to `global_step` (a host-side counter: cheap, no device sync)."""
        display = self._display
        if display is not None and global_step != display.n:
            display.update(global_step - display.n)

    def message(self, text: str) -> None:
        """Print a line on stderr without breaking the progress bar (use it for messages during training)."""
        if self._display is not None:
            self._display.message(text)
        else:
            print(text, file=sys.stderr, flush=True)

    # -------------------------------------------------------- metrics

    def fps(self, global_step: int) -> float:
        """Steps per second since the logger was created (counting from `start_step`)."""
        elapsed = time.perf_counter() - self.start_time
        return (global_step - self.start_step) / elapsed if elapsed > 0 else 0.0

    def log(self, global_step: int, scalars: dict[str, float], fps: bool = True) -> None:
        """Write `scalars` at `global_step` to TensorBoard and `metrics.jsonl`, adding `time/fps`
        unless `fps=False` (evaluation results are not a training speed)."""
        scalars = dict(scalars)
        if fps:
            scalars["time/fps"] = self.fps(global_step)
        record = {"global_step": global_step, "time": round(time.time(), 3),
                  **{tag: _json_number(value) for tag, value in scalars.items()}}
        try:
            writer = self._get_writer()
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, global_step)
            self.metrics_file.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as exc:  # a full or read-only disk; the event writer's thread reports it here
            raise disk_error(exc, "the run's logs", self.run_dir) from None
        if self._display is not None:
            if RETURN_TAG in scalars:
                self._display.update(0, return_=float(scalars[RETURN_TAG]))
            self.progress(global_step)

    def flush(self) -> None:
        if self._closed:
            return
        try:
            if self._writer is not None or self.hparams:
                self._get_writer().flush()
            self.metrics_file.flush()
        except OSError as exc:
            raise disk_error(exc, "the run's logs", self.run_dir) from None

    def close(self) -> None:
        """Close the bar (left on its own line), the event file and `metrics.jsonl`. Idempotent.
        A disk fault is raised as a DiskError after everything is closed, unless one is already
        being handled (the run stopped for it)."""
        if self._closed:
            return
        self._closed = True
        if self._display is not None:
            self._display.close()
        failure = None
        for close in (self._close_writer, self.metrics_file.close):
            try:
                close()
            except OSError as exc:
                failure = failure or exc
        if failure is not None and sys.exc_info()[0] is None:
            raise disk_error(failure, "the run's logs", self.run_dir) from None

    def _close_writer(self) -> None:
        if self._writer is not None or self.hparams:
            self._get_writer().close()

    def _get_writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imports TensorBoard: seconds, hence here

            self._writer = SummaryWriter(log_dir=str(self.run_dir))
            if self.hparams:
                self._write_hparams(self._writer, self.hparams)
        return self._writer

    @staticmethod
    def _write_hparams(writer, hparams: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        rows = "\n".join(f"|{k}|{v}|" for k, v in sorted(flat.items()))
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
        # The HParams dashboard entry, written into this run's own event file.
        for summary in hparams_summary(flat, {RETURN_TAG: 0.0}):
            writer.file_writer.add_summary(summary)
