"""Run logging: TensorBoard event files, `metrics.jsonl`, and a terminal progress bar.

Agents hand over plain Python numbers at log intervals only: metrics live on the device
between intervals, so the training loop never waits for the host.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from tqdm import tqdm


class RunLogger:
    def __init__(self, run_dir: str | Path, total_timesteps: int, start_step: int = 0,
                 hparams: dict[str, Any] | None = None, progress: bool | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        self.metrics_file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # line-buffered
        self.start_step = start_step
        self.start_time = time.perf_counter()
        if hparams:
            self._write_hparams(hparams)
        if progress is None:
            progress = sys.stderr.isatty()
        self.bar = tqdm(total=total_timesteps, initial=start_step, unit="step", unit_scale=True,
                        dynamic_ncols=True, disable=not progress, file=sys.stderr)

    def _write_hparams(self, hparams: dict[str, Any]) -> None:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        rows = "\n".join(f"|{k}|{v}|" for k, v in sorted(flat.items()))
        self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{rows}")
        # The HParams dashboard entry, written into this run's own event file.
        for summary in hparams_summary(flat, {"rollout/ep_rew_mean": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def fps(self, global_step: int) -> float:
        elapsed = time.perf_counter() - self.start_time
        return (global_step - self.start_step) / elapsed if elapsed > 0 else 0.0

    def progress(self, global_step: int) -> None:
        """Move the progress bar (a host-side counter: cheap, no device sync)."""
        self.bar.update(global_step - self.bar.n)

    def log(self, global_step: int, scalars: dict[str, float]) -> None:
        scalars = dict(scalars)
        scalars["time/fps"] = self.fps(global_step)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step)
        record = {"global_step": global_step, "time": round(time.time(), 3), **scalars}
        self.metrics_file.write(json.dumps(record) + "\n")
        postfix = {"sps": f"{scalars['time/fps']:.0f}"}
        if "rollout/ep_rew_mean" in scalars:
            postfix["return"] = f"{scalars['rollout/ep_rew_mean']:.1f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.progress(global_step)

    def flush(self) -> None:
        self.writer.flush()
        self.metrics_file.flush()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        self.metrics_file.close()
